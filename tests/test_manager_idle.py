"""Idle Keeps: a Keep created through the API that no client connects to
within ``stockade host serve --idle-timeout`` is killed and recorded as
``killed`` with the reason; a Keep whose client came is left alone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from manager_support import Server, running_server
from stockade.client.remote import ManagerClient, ManagerError

pytestmark = pytest.mark.slow

IDLE_S = 2


@pytest.fixture(scope="module")
def server(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(state_dir, tmp_path_factory, ("--idle-timeout", str(IDLE_S))) as srv:
        yield srv


def test_a_keep_nobody_connects_to_is_killed(server: Server) -> None:
    with ManagerClient(server.url, server.small_token) as client:  # quota 1
        t0 = time.monotonic()
        keep = client.create("sim")
        done = client.wait(keep["id"], 60)
        took = time.monotonic() - t0
        assert done["timed_out"] is False
        assert done["state"] == "killed"
        assert done["detail"] == f"killed: no client connected within {IDLE_S} s"
        assert took >= IDLE_S
        # The relay refuses the dead Keep, and its quota slot is free again.
        with pytest.raises(ManagerError) as info:
            client.connect(keep["id"])
        assert info.value.status == 409
        again = client.create("sim")
        client.kill(again["id"])
    log = server.log.read_text()
    assert f"Keep {keep['id']}: killed: no client connected within {IDLE_S} s" in log


def test_a_keep_whose_client_came_is_not_killed(server: Server) -> None:
    with ManagerClient(server.url, server.token) as client:
        keep = client.create("sim")
        sock = client.connect(keep["id"])
        try:
            still = client.wait(keep["id"], IDLE_S + 1.5)
            assert still["timed_out"] is True and still["state"] == "running"
        finally:
            sock.close()
        done = client.wait(keep["id"], 30)
    assert done["state"] in ("exited", "failed"), done  # its session ended with the stream
    assert "no client connected" not in done.get("detail", "")
