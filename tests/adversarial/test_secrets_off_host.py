"""Secrets and stdin never rest on host storage (issue 13, item 4).

A ``stockade run`` with a secret canary and a stdin canary starts a
workload that sleeps in the host (poll_oneoff); while it sleeps, nothing in
the host's view of /dev/shm or /tmp holds a canary (they live in the Keep's
private tmpfs and a memfd). Then the client is killed with SIGKILL: its
Keep dies with it (PR_SET_PDEATHSIG), and after every process is gone no
canary is anywhere on the host: /dev/shm, /tmp, the state directory, and
the command lines and environments of the remaining processes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adversarial.canary import Canaries
from stockade.procfs import read_stat


def _held_on_the_host(canaries: Canaries, roots: list[Path]) -> list[str]:
    """Where on the host the test's canaries are now: files under ``roots``
    (the client's own copies excepted) and every process's command line and
    environment, through the suite's one canary scanner (raw, hex, base64)."""
    for root in roots:
        canaries.scan_tree(root)
    canaries.scan_proc()
    return [str(f) for f in canaries.findings]


def _alive(pid: int) -> bool:
    fields = read_stat(pid)
    return fields is not None and fields[0] != "Z"


def test_killed_client_leaves_no_secret_or_stdin_on_the_host(
    state_dir: Path, wasm, tmp_path: Path, canaries: Canaries
) -> None:
    inputs = tmp_path / "inputs"  # the client's own copies: excluded from the search
    inputs.mkdir()
    canaries.client_file(inputs / "token", "secret")
    canaries.client_file(inputs / "stdin", "stdin")
    root = tmp_path / "root"
    root.mkdir()
    logs = state_dir / "logs"
    logs.mkdir(exist_ok=True)
    before = set(logs.glob("keep-*.log"))
    client = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stockade",
            "run",
            "--allow-sim",
            "-q",
            "--timeout",
            "60",
            "--secret",
            f"token=@{inputs / 'token'}",
            "--stdin",
            str(inputs / "stdin"),
            "--file",
            f"{root}:/",
            str(wasm("sleep")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "STOCKADE_STATE_DIR": str(state_dir)},
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == b"sleeping\n"  # the workload runs, holding both canaries
        (log,) = set(logs.glob("keep-*.log")) - before
        match = re.search(r"keep\[(\d+)\]: workload disk: private tmpfs", log.read_text())
        assert match, log.read_text()
        keep_pid = int(match.group(1))
        # While it runs, the host's view of its storage holds neither.
        assert _held_on_the_host(canaries, [Path("/dev/shm"), Path("/tmp")]) == []
        client.send_signal(signal.SIGKILL)
        client.wait(10)
        deadline = time.monotonic() + 10
        while _alive(keep_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(keep_pid), "the Keep outlived its killed client"
        assert _held_on_the_host(canaries, [Path("/dev/shm"), Path("/tmp"), state_dir]) == []
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()


def test_sweep_removes_only_stale_unlocked_scratch(tmp_path: Path) -> None:
    import fcntl

    from stockade.host.loader import sweep_stale_scratch

    old = time.time() - 3600
    stale = tmp_path / "stockade-keep-abc123-x1y2z3w4"
    locked = tmp_path / "stockade-keep-def456-a1b2c3d4"
    young = tmp_path / "stockade-keep-0a1b2c-q1w2e3r4"
    other = tmp_path / "stockade-keepload-a1b2c3d4"
    for d in (stale, locked, young, other):
        (d / "private").mkdir(parents=True)
        (d / "private" / "f").write_bytes(b"x")
    for d in (stale, locked, other):
        os.utime(d, (old, old))
    fd = os.open(locked, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # as a live Keep holds it
        assert sweep_stale_scratch([tmp_path]) == [stale]
    finally:
        os.close(fd)
    assert not stale.exists()
    assert locked.exists() and young.exists() and other.exists()


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_keep_scratch_is_locked_while_the_keep_lives(state_dir: Path, wasm, tmp_path: Path) -> None:
    """A sweep started while a Keep runs leaves its scratch alone."""
    import fcntl

    root = tmp_path / "root"
    root.mkdir()
    client = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stockade",
            "run",
            "--allow-sim",
            "-q",
            "--timeout",
            "60",
            "--file",
            f"{root}:/",
            str(wasm("sleep")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "STOCKADE_STATE_DIR": str(state_dir)},
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == b"sleeping\n"
        mine = [
            p
            for p in Path("/dev/shm").glob("stockade-keep-*")
            if p.stat().st_uid == os.getuid() and (p / "private").is_dir()
        ]
        assert mine
        locked = 0
        for path in mine:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                locked += 1
            finally:
                os.close(fd)
        assert locked >= 1
    finally:
        client.kill()
        client.wait()


def test_keep_manager_keep_ended_by_its_watchdog_leaves_no_canary(
    state_dir: Path, tmp_path_factory: pytest.TempPathFactory, wasm, tmp_path: Path, canaries: Canaries
) -> None:
    """The finding's own scenario: a deploy through the keep manager, the
    client killed mid-run, the Keep (forked by the fork server) ending
    through its watchdog (os._exit): no canary anywhere afterwards."""
    from manager_support import STOCKADE, running_server
    from stockade.client.remote import ManagerClient

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    canaries.client_file(inputs / "token", "secret")
    canaries.client_file(inputs / "stdin", "stdin")
    with (
        running_server(state_dir, tmp_path_factory) as server,
        ManagerClient(server.url, server.token) as api,
    ):
        client = subprocess.Popen(
            [
                *STOCKADE,
                "deploy",
                "--host",
                server.url,
                "--token-file",
                str(server.token_file),
                "--allow-sim",
                "--sim-root",
                str(server.state / "sim" / "chip" / "ark.der"),
                "-q",
                "--timeout",
                "2",
                "--secret",
                f"token=@{inputs / 'token'}",
                "--stdin",
                str(inputs / "stdin"),
                str(wasm("sleep")),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert client.stdout is not None
            assert client.stdout.readline() == b"sleeping\n"
            (keep,) = api.list()
            assert _held_on_the_host(canaries, [Path("/dev/shm"), Path("/tmp")]) == []
            client.send_signal(signal.SIGKILL)
            client.wait(10)
            deadline = time.monotonic() + 20
            while (rec := api.get(keep["id"]))["state"] == "running" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert rec["state"] != "running"
            assert not _alive(keep["pid"])
            log, _ = api.logs(keep["id"])
            assert b"watchdog ends the Keep" in log  # the path that left the secret file before
            assert b"workload disk: private tmpfs" in log
            assert _held_on_the_host(canaries, [Path("/dev/shm"), Path("/tmp"), server.state]) == []
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
