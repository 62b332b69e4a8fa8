"""A real ``stockade steward serve`` on loopback, for tests and for the
Keep's import recording (stockade.testing.keepload): ``stockade steward
init`` in a new directory, then ``serve --allow-sim`` (or ``--policy``)
trusting the sim chip of a state directory, on a free 127.0.0.1 port;
stopped and reaped on exit. Development tooling: never part of a Keep.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Steward:
    """A running steward: its URL, its CA certificate file (``ca.pem``),
    its state directory (CA, log) and its output."""

    url: str
    ca: Path
    state: Path
    log: Path


def _wait_ready(url_port: int, ca: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"steward serve exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with (
                socket.create_connection(("127.0.0.1", url_port), timeout=2) as raw,
                ctx.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"steward serve not ready after 60 s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def steward_server(tmp: Path, run_state: Path, policy: Path | None = None) -> Iterator[Steward]:
    """``stockade steward init`` in ``tmp/steward``, then ``serve`` on
    127.0.0.1 (a free port) with ``--policy policy`` or ``--allow-sim``,
    trusting the sim chip (root and CRL) of the state directory
    ``run_state``; stopped and reaped on exit."""
    from stockade.evidence.sim.chip import sim_crl, sim_root

    state = tmp / "steward"
    env = {**os.environ, "STOCKADE_STATE_DIR": str(run_state)}
    init = subprocess.run(
        [
            sys.executable,
            "-m",
            "stockade",
            "steward",
            "init",
            "--state-dir",
            str(state),
            "--name",
            "test steward",
        ],
        capture_output=True,
        timeout=60,
        env=env,
        check=False,
    )
    if init.returncode != 0:
        raise RuntimeError(f"stockade steward init failed: {init.stderr.decode(errors='replace')}")
    root, crl = tmp / "sim-root.der", tmp / "sim.crl"
    root.write_bytes(sim_root(run_state))
    crl.write_bytes(sim_crl(run_state))
    port = free_port()
    log = tmp / "steward.log"
    trust = ["--policy", str(policy)] if policy is not None else ["--allow-sim"]
    argv = [
        sys.executable,
        "-m",
        "stockade",
        "steward",
        "serve",
        "--state-dir",
        str(state),
        "--listen",
        f"127.0.0.1:{port}",
        *trust,
        "--sim-root",
        str(root),
        "--crl",
        str(crl),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_ready(port, state / "ca.pem", proc, log)
        yield Steward(f"https://127.0.0.1:{port}", state / "ca.pem", state, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
