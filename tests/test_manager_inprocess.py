"""The keep manager app run in this process (uvicorn in a thread) with a
stand-in Keep process, for states a real Keep leaves too fast to observe:
a Keep that ignores SIGTERM stays "being killed" for the whole kill grace,
and the relay must refuse it then; a package upload that a delete
overtakes between its first and its last byte."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from manager_support import _free_port, problem_of
from stockade.client.remote import ManagerClient, ManagerError
from stockade.host.loader import KeepHandle
from stockade.host.manager import create_app
from stockade.host.tokens import add_token, load_tokens
from stockade.wire.messages import PD_DETAIL, PD_TYPE
from stockade.wire.staging import PACKAGE_MEDIA_TYPE, STAGED_NAME

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


def plain_keep(backend: str, state_dir: Path, **kw: Any) -> KeepHandle:
    """A stand-in Keep that ends on SIGTERM, with a scratch directory (the
    staging area, removed by the manager once the Keep ended)."""
    mine, theirs = socket.socketpair()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    theirs.close()
    scratch = Path(tempfile.mkdtemp(prefix="keep-", dir=state_dir))
    log = state_dir / "logs" / f"keep-{kw['keep_id']}.log"
    return KeepHandle(kw["keep_id"], backend, mine, proc, None, bytes(48), log, scratch)


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[str, str]]:
    yield from _serve(tmp_path, stubborn_keep)


@pytest.fixture
def plain_manager(tmp_path: Path) -> Iterator[tuple[str, str]]:
    yield from _serve(tmp_path, plain_keep)


def _serve(tmp_path: Path, starter: Callable[..., KeepHandle]) -> Iterator[tuple[str, str]]:
    token, _ = add_token(tmp_path, 4)
    app = create_app(tmp_path, load_tokens(tmp_path), kill_grace=GRACE_S)
    app.state.manager._start = starter
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


def _parts(scratch: Path) -> list[Path]:
    return sorted(scratch.glob(f"{STAGED_NAME}*.part"))


def _until(condition: Callable[[], bool], what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _put(url: str, token: str, keep_id: str, body: Iterator[bytes]) -> httpx.Response:
    """PUT a package streamed from ``body`` (chunked: each yield is sent as it comes)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": PACKAGE_MEDIA_TYPE}
    return httpx.put(f"{url}/v1/keeps/{keep_id}/package", content=body, headers=headers, timeout=30)


def test_upload_overtaken_by_a_delete_is_a_409_problem(
    plain_manager: tuple[str, str], tmp_path: Path
) -> None:
    """The Keep is deleted (its scratch dir removed) after the upload began
    and before it ended: the answer is a 409 problem, not a 500, and no
    temporary file is left behind."""
    url, token = plain_manager
    with ManagerClient(url, token) as client:
        keep_id = client.create("sim")["id"]
        (scratch,) = tmp_path.glob("keep-*")

        def body() -> Iterator[bytes]:
            yield b"first half "
            _until(lambda: bool(_parts(scratch)), "the manager did not start the upload")
            assert client.kill(keep_id)["state"] == "killed"  # returns once the Keep was reaped
            assert not scratch.exists()
            yield b"second half"

        resp = _put(url, token, keep_id, body())
    assert resp.status_code == 409
    problem = problem_of(resp)
    assert problem[PD_TYPE] == "conflict"
    assert problem[PD_DETAIL] == f"Keep {keep_id} ended during the upload"


def test_upload_whose_staging_area_vanished_is_a_problem(
    plain_manager: tuple[str, str], tmp_path: Path
) -> None:
    """The staging area disappears under a live Keep (a hostile or broken
    host): the answer is still a problem document, never text/plain."""
    url, token = plain_manager
    with ManagerClient(url, token) as client:
        keep_id = client.create("sim")["id"]
        (scratch,) = tmp_path.glob("keep-*")

        def body() -> Iterator[bytes]:
            yield b"first half "
            _until(lambda: bool(_parts(scratch)), "the manager did not start the upload")
            for part in _parts(scratch):
                part.unlink()
            scratch.rmdir()
            yield b"second half"

        resp = _put(url, token, keep_id, body())
        assert resp.status_code == 500
        problem = problem_of(resp)
        assert problem[PD_TYPE] == "staging-failed"
        assert "No such file or directory" in str(problem[PD_DETAIL])
        assert client.get(keep_id)["state"] == "running"
        client.kill(keep_id)


def test_concurrent_uploads_use_their_own_temporary_files(
    plain_manager: tuple[str, str], tmp_path: Path
) -> None:
    """Two uploads in flight at once write two different .part files; each
    is renamed into place whole (the last one wins) and none is left."""
    url, token = plain_manager
    with ManagerClient(url, token) as client:
        keep_id = client.create("sim")["id"]
        (scratch,) = tmp_path.glob("keep-*")
        both_seen = threading.Barrier(2, timeout=10)
        first_done = threading.Event()
        seen: list[list[Path]] = []

        def body(tag: bytes, wait_for: threading.Event | None) -> Iterator[bytes]:
            yield tag * 1000
            _until(lambda: len(_parts(scratch)) == 2, "two uploads did not run at once")
            seen.append(_parts(scratch))
            # Neither upload ends before both have seen the two files (else the
            # first could finish before the second looked, and the second would
            # wait for two files forever).
            both_seen.wait()
            if wait_for is not None:
                assert wait_for.wait(10)
            yield tag * 1000

        results: dict[bytes, int] = {}

        def upload(tag: bytes, wait_for: threading.Event | None) -> None:
            results[tag] = _put(url, token, keep_id, body(tag, wait_for)).status_code
            if wait_for is None:
                first_done.set()

        threads = [
            threading.Thread(target=upload, args=(b"A", None)),
            threading.Thread(target=upload, args=(b"B", first_done)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == {b"A": 204, b"B": 204}
        assert len(seen) == 2 and len(set(seen[0])) == 2  # two distinct temporary files
        assert (scratch / STAGED_NAME).read_bytes() == b"B" * 2000  # whole, and the last one
        assert _parts(scratch) == []
        client.kill(keep_id)
