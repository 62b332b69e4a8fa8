"""kill -9 of the keep manager: a restart recovers every record and leaves no
orphan (issue "Keep manager daemon", faults)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from manager_support import STOCKADE, _free_port, running_server, wait_healthy
from stockade.client.remote import ManagerClient
from stockade.procfs import read_stat


def _alive(pid: int) -> bool:
    fields = read_stat(pid)
    return fields is not None and fields[0] != "Z"


def _wait_dead(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def test_restart_after_kill_9_recovers_every_record(
    state_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with running_server(state_dir, tmp_path_factory) as server:
        client = ManagerClient(server.url, server.token)
        created = [client.create("sim") for _ in range(3)]
        ids = [k["id"] for k in created]
        pids = [int(client.get(i)["pid"]) for i in ids]
        assert all(_alive(p) for p in pids)
        server.proc.kill()  # kill -9 of the manager
        server.proc.wait()
        # The Keeps lose their only stream (it was held by the manager) and end:
        # no orphan keeps running on its own.
        assert _wait_dead(pids, 15) == [], "Keeps outlived their manager"

        port = _free_port()
        with open(server.log, "ab") as out:
            proc = subprocess.Popen(
                [
                    *STOCKADE,
                    "host",
                    "serve",
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--state-dir",
                    str(server.state),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, proc, server.log)
            after = {k["id"]: k for k in ManagerClient(url, server.token).list()}
            assert set(ids) <= set(after), "a record was lost"
            for keep_id in ids:
                assert after[keep_id]["state"] in ("lost", "exited", "failed"), after[keep_id]
            # The recovered records no longer count against the quota.
            again = ManagerClient(url, server.token).create("sim")
            assert again["state"] == "running"
        finally:
            proc.terminate()
            proc.wait(15)
        assert "Traceback" not in server.log.read_text()
        assert os.path.exists(server.state / "registry.sqlite3")


def test_shutdown_answers_open_waits(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """SIGTERM to the manager answers a pending wait at once (timed out,
    the Keep still active) instead of holding the shutdown up."""
    import threading

    with running_server(state_dir, tmp_path_factory) as server:
        client = ManagerClient(server.url, server.token)
        keep_id = client.create("sim")["id"]
        answers: list[dict[object, object]] = []
        waiter = threading.Thread(target=lambda: answers.append(client.wait(keep_id, 250)))
        waiter.start()
        time.sleep(1.0)  # the wait is open
        server.proc.terminate()
        server.proc.wait(30)
        waiter.join(30)
        # Without the early answer, uvicorn cancels the wait after its grace:
        # a 500 for the client and a CancelledError traceback in the log.
        assert answers and answers[0]["timed_out"] is True and answers[0]["state"] == "running"
        log = server.log.read_text()
        assert "Traceback" not in log and "killed: the manager stopped" in log
