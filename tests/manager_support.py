"""A live keep manager (``stockade host serve``) for tests.

Shared by tests/test_manager.py and tests/test_host_api_spec.py: each test
module starts its own server (module-scoped fixture built on
:func:`running_server`) on a free loopback port, with its own state
directory (the session's sim chip copied in) and two tokens: ``main``
(quota 16) and ``small`` (quota 1). ``extra_args`` go to ``host serve``
(--idle-timeout, --tls-cert ...); ``scheme="https"`` with ``cacert`` for a
TLS server.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from stockade.wire.messages import PD_DETAIL, PD_TITLE, PD_TYPE, loads_strict

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"
WORDCOUNT = ROOT / "examples" / "wordcount" / "wordcount.wasm"
PROBLEM = "application/concise-problem-details+cbor"
STOCKADE = (sys.executable, "-m", "stockade")
SLOW_ARGS = ("--allow-sim", "-q", "--timeout", "20")


@dataclass
class Server:
    url: str
    state: Path
    log: Path
    token: str
    token_file: Path
    small_token: str
    proc: subprocess.Popen[bytes]
    cacert: Path | None = None

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "stockade", *args], capture_output=True, timeout=timeout, check=False, **kw
    )


def wait_healthy(
    url: str, proc: subprocess.Popen[bytes], log: Path, seconds: float = 20, cacert: Path | None = None
) -> None:
    """Wait until the manager at ``url`` answers /v1/health."""
    deadline = time.monotonic() + seconds
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=cacert) if cacert else True
    while True:
        try:
            if httpx.get(f"{url}/v1/health", timeout=1, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the manager did not come up"
        time.sleep(0.05)


@contextlib.contextmanager
def running_server(
    state_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    extra_args: tuple[str, ...] = (),
    scheme: str = "http",
    cacert: Path | None = None,
    *,
    quota: int = 16,
    serve_args: tuple[str, ...] = (),
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[Server]:
    """A live manager; the ``main`` token has ``quota``; ``extra_args`` and
    ``serve_args`` go to ``stockade host serve``; ``preexec_fn`` runs in the
    server process before exec (e.g. to lower its rlimits)."""
    base = tmp_path_factory.mktemp("manager")
    state = base / "state"
    state.mkdir(mode=0o700)
    shutil.copytree(state_dir / "sim", state / "sim")
    tokens = []
    for token_quota in (str(quota), "1"):
        proc = _cli("host", "init", "--state-dir", str(state), "--quota", token_quota)
        assert proc.returncode == 0, proc.stderr
        tokens.append(proc.stdout.decode().strip())
    token_file = base / "token"
    token_file.write_text(tokens[0] + "\n")
    port = _free_port()
    log = base / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                *STOCKADE,
                "host",
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--state-dir",
                str(state),
                *extra_args,
                *serve_args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,  # noqa: PLW1509 - tests only: setrlimit, before any thread
        )
    url = f"{scheme}://127.0.0.1:{port}"
    wait_healthy(url, proc, log, cacert=cacert)
    try:
        yield Server(url, state, log, tokens[0], token_file, tokens[1], proc, cacert)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def problem_of(resp: httpx.Response) -> dict[object, object]:
    assert resp.headers["content-type"].startswith(PROBLEM)
    pd = loads_strict(resp.content)
    assert isinstance(pd, dict) and set(pd) == {PD_TITLE, PD_DETAIL, PD_TYPE}
    return pd


def deploy(server: Server, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """``stockade deploy --host URL --token-file FILE ARGS``; with
    --allow-sim and no --sim-root, --sim-root is the server's sim root (as
    its operator would hand it over: `stockade host sim-root`)."""
    if "--allow-sim" in args and "--sim-root" not in args:
        args = ("--sim-root", str(server.state / "sim" / "chip" / "ark.der"), *args)
    return _cli(
        "deploy", "--host", server.url, "--token-file", str(server.token_file), *args, timeout=timeout
    )


def keeps_cli(
    server: Server, *args: str, timeout: float = 60, **kw: object
) -> subprocess.CompletedProcess[bytes]:
    """``stockade keeps ARGS --host URL --token-file FILE``."""
    return _cli(
        "keeps", *args, "--host", server.url, "--token-file", str(server.token_file), timeout=timeout, **kw
    )
