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
