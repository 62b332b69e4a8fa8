"""The keep manager app run in this process (uvicorn in a thread) with a
stand-in Keep process, for states a real Keep leaves too fast to observe:
a Keep that ignores SIGTERM stays "being killed" for the whole kill grace,
and the relay must refuse it then."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from manager_support import _free_port
from stockade.client.remote import ManagerClient, ManagerError
from stockade.host.loader import KeepHandle
from stockade.host.manager import create_app
from stockade.host.tokens import add_token, load_tokens

pytestmark = pytest.mark.slow

GRACE_S = 3.0
STUBBORN = (
    "import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "os.write(int(sys.argv[1]), b'r'); time.sleep(60)"
)


def stubborn_keep(backend: str, state_dir: Path, **kw: Any) -> KeepHandle:
    """A stand-in Keep that ignores SIGTERM (only SIGKILL ends it)."""
    mine, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-c", STUBBORN, str(theirs.fileno())], pass_fds=(theirs.fileno(),)
    )
    theirs.close()
    assert mine.recv(1) == b"r"  # SIGTERM is ignored from now on
    log = state_dir / "logs" / f"keep-{kw['keep_id']}.log"
    return KeepHandle(kw["keep_id"], backend, mine, proc, None, bytes(48), log)


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[str, str]]:
    token, _ = add_token(tmp_path, 4)
    app = create_app(tmp_path, load_tokens(tmp_path), kill_grace=GRACE_S)
    app.state.manager._start = stubborn_keep
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="websockets-sansio")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the manager did not come up"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", token
    finally:
        server.should_exit = True
        thread.join(30)


def test_relay_refuses_a_keep_being_killed(manager: tuple[str, str]) -> None:
    url, token = manager
    with ManagerClient(url, token) as client:
        keep_id = client.create("sim")["id"]
        killed: list[dict[Any, Any]] = []
        killer = threading.Thread(target=lambda: killed.append(client.kill(keep_id)))
        killer.start()
        time.sleep(GRACE_S / 3)  # SIGTERM sent and ignored: the grace runs
        assert killer.is_alive()
        with ManagerClient(url, token) as other, pytest.raises(ManagerError) as info:
            other.connect(keep_id)
        assert info.value.status == 409 and "being killed" in str(info.value)
        killer.join(30)
    assert killed and killed[0]["state"] == "killed"
    assert killed[0]["exit_status"] == -9  # it took the SIGKILL after the grace
