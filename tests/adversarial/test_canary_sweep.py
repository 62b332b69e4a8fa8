"""The canary sweep of conftest.py finds what it must find (each place and
form), and skips what it must skip. Each test plants canaries of a separate
:class:`Canaries` object (not the test's own, whose sweep must stay clean)
and removes what it planted."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adversarial.canary import Canaries

SHM = Path("/dev/shm")


@pytest.fixture
def planted() -> Iterator[list[Path]]:
    paths: list[Path] = []
    yield paths
    for path in paths:
        path.unlink(missing_ok=True)


def _where(c: Canaries) -> list[tuple[str, str]]:
    return [(f.where, f.form) for f in c.findings]


@pytest.mark.parametrize("form", ["raw", "hex", "base64-0", "base64-1", "base64-2", "base64url"])
def test_sweep_finds_a_canary_in_a_shm_file(planted: list[Path], form: str) -> None:
    c = Canaries()
    value = c.new()
    encoded = {
        "raw": value,
        "hex": value.hex().encode(),
        "base64-0": base64.b64encode(value),
        "base64-1": base64.b64encode(b"x" + value),
        "base64-2": base64.b64encode(b"xy" + value),
        "base64url": base64.urlsafe_b64encode(b"\xff" + value),
    }[form]
    target = SHM / f"stockade-sweep-test-{os.getpid()}-{form}"
    planted.append(target)
    target.write_bytes(b"junk " + encoded + b" junk")
    kind = "raw" if form == "raw" else "hex" if form == "hex" else "base64"
    c.sweep([])
    assert (str(target), kind) in _where(c)


def test_sweep_finds_a_canary_in_a_registered_dir_and_tmp_path(tmp_path: Path) -> None:
    c = Canaries()
    value = c.new()
    extra = tmp_path / "registered"
    (extra / "logs").mkdir(parents=True)
    (extra / "logs" / "keep.log").write_bytes(b"...." + value)
    c.sweep_dir(extra)
    found = c.sweep([])
    assert any(f.where.endswith("logs/keep.log") for f in found)
    (extra / "logs" / "keep.log").unlink()


def test_sweep_finds_a_canary_in_process_arguments_and_environment() -> None:
    c = Canaries()
    in_argv, in_env = c.new("argv"), c.new("env")
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; time.sleep(30)", in_argv.decode()],
        env={**os.environ, "LEAK": in_env.decode()},
    )
    try:
        time.sleep(0.3)
        found = c.sweep([])
    finally:
        proc.kill()
        proc.wait()
    assert (f"/proc/{proc.pid}/cmdline", "raw") in _where(c)
    assert (f"/proc/{proc.pid}/environ", "raw") in _where(c)
    assert {f.label for f in found} == {"argv", "env"}


def test_sweep_catches_a_process_that_came_and_went_mid_test() -> None:
    """The background /proc watcher sees a short-lived process."""
    c = Canaries()
    value = c.new("short")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)", value.decode()])
    proc.wait()
    assert c.sweep([])
    assert c.findings[0].where == f"/proc/{proc.pid}/cmdline"


def test_sweep_skips_allowed_pids_client_files_and_old_files(tmp_path: Path, planted: list[Path]) -> None:
    c = Canaries()
    old = SHM / f"stockade-sweep-test-{os.getpid()}-old"
    planted.append(old)
    value = c.new()
    old.write_bytes(value)
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    # mtime is old but ctime (which utime cannot set back) is new: still found.
    assert c.sweep([]) and c.findings[0].where == str(old)

    c = Canaries()
    path, _ = c.client_file(tmp_path / "secret")
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", path.read_text()],
    )
    c.allow_pid(proc.pid)
    try:
        assert c.sweep([tmp_path]) == []
    finally:
        proc.kill()
        proc.wait()


def test_sweep_without_canaries_is_free() -> None:
    c = Canaries()
    t = time.perf_counter()
    assert c.sweep([Path("/")]) == []
    assert time.perf_counter() - t < 0.1


def test_suite_is_marked_adversarial(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("adversarial") is not None


def test_fixture_values_name_the_places_to_sweep(tmp_path: Path) -> None:
    """The autouse sweep reads the test's fixture values: Paths, and the
    Path attributes of objects such as a keep manager ``Server``."""
    from dataclasses import dataclass

    from adversarial.conftest import paths_of

    @dataclass
    class Server:
        url: str
        state: Path
        log: Path

    server = Server("http://127.0.0.1:1", tmp_path / "state", tmp_path / "server.log")
    assert paths_of(server) == [server.state, server.log]
    assert paths_of(tmp_path) == [tmp_path]
    assert paths_of("text") == [] and paths_of(Server) == []
    # A single file is swept too (a manager's log).
    c = Canaries()
    server.log.write_bytes(b"log line " + c.new())
    c.sweep([server.log])
    assert [f.where for f in c.findings] == [str(server.log)]
    server.log.unlink()


LEAKY_TESTS = """
import os
from pathlib import Path

def test_leaks_to_shm(canaries):
    secret = canaries.new("secret")
    path = Path("/dev/shm") / f"stockade-leak-{os.getpid()}"
    path.write_bytes(b"host log: " + secret)
    canaries.sweep_dir(Path("/nonexistent"))

def test_clean(canaries):
    canaries.new("secret")
"""


def test_the_autouse_sweep_fails_a_leaking_test(tmp_path: Path) -> None:
    """End to end: a test that writes its canary to /dev/shm fails in
    teardown with the place named; a clean one passes."""
    (tmp_path / "conftest.py").write_text(
        "from adversarial.conftest import _canary_sweep, canaries  # noqa: F401\n"
    )
    (tmp_path / "test_leaky.py").write_text(LEAKY_TESTS)
    tests_dir = Path(__file__).resolve().parents[1]
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rE", str(tmp_path)],
            capture_output=True,
            timeout=120,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(tests_dir)},
            check=False,
        )
    finally:
        for leaked in SHM.glob("stockade-leak-*"):
            leaked.unlink(missing_ok=True)
    out = proc.stdout.decode()
    assert proc.returncode == 1, out
    assert "2 passed, 1 error" in out, out  # the leaky test passes its call, errors in teardown
    assert "ERROR at teardown of test_leaks_to_shm" in out
    assert "secret left the client: canary 'secret' (raw) found in /dev/shm/stockade-leak-" in out
