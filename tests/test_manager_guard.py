"""The connection-flood guard of the keep manager (stockade.host.guard):
connection cap with eviction, request-head timeout, the file-descriptor
budget, and the rate limit of peer-driven log lines.

The protocol tests run a toy ASGI app under uvicorn in this process (a
thread), with a small cap and a short timeout; the manager itself under a
flood is tests/adversarial/test_manager_flood.py.
"""

from __future__ import annotations

import asyncio
import errno
import io
import logging
import resource
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
from stockade.errors import UsageError
from stockade.host import guard

CAP = 20
HEAD_TIMEOUT = 0.6


class _App:
    """/slow waits until released; everything else answers at once."""

    def __init__(self) -> None:
        self.release = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            while not self.release.is_set():
                await asyncio.sleep(0.02)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def served(request: pytest.FixtureRequest) -> Iterator[tuple[int, _App, list[str]]]:
    """A guarded server; the head timeout is HEAD_TIMEOUT unless the test is
    parametrized indirectly with another."""
    head_timeout = getattr(request, "param", HEAD_TIMEOUT)
    app = _App()
    shed: list[str] = []
    port = _free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        http=guard.guarded_protocol(guard.ConnectionLimits(CAP, 16, head_timeout), shed.append),
        limit_concurrency=CAP + 1,
        timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not come up"
        time.sleep(0.02)
    try:
        yield port, app, shed
    finally:
        app.release.set()
        server.should_exit = True
        thread.join(20)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock


def _get(sock: socket.socket, path: str = "/") -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return _response(sock)


def _response(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"ok"):
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return data


def _closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing, or None if still open after ``seconds``."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return data


def test_half_sent_head_is_closed_with_408(served: tuple[int, _App, list[str]]) -> None:
    port, _, shed = served
    with _connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")  # no blank line: the head never ends
        started = time.monotonic()
        got = _closed_within(sock, 10)
        elapsed = time.monotonic() - started
    assert got is not None and got.startswith(b"HTTP/1.1 408 ")
    assert HEAD_TIMEOUT * 0.8 <= elapsed < HEAD_TIMEOUT + 3
    assert shed == ["header-timeout"]


def test_trickled_head_is_closed_at_the_deadline(served: tuple[int, _App, list[str]]) -> None:
    """Bytes arriving do not restart the clock (slowloris)."""
    port, _, shed = served
    with _connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        started = time.monotonic()
        closed = False
        for _ in range(int(HEAD_TIMEOUT * 4 / 0.1)):
            time.sleep(0.1)
            try:
                sock.sendall(b"X-A: b\r\n")
            except OSError:
                closed = True
                break
        assert closed or _closed_within(sock, 1) is not None
        assert time.monotonic() - started < HEAD_TIMEOUT * 4
    assert shed == ["header-timeout"]


def test_idle_new_connection_is_closed_silently(served: tuple[int, _App, list[str]]) -> None:
    port, _, shed = served
    with _connect(port) as sock:
        assert _closed_within(sock, 10) == b""
    assert shed == ["header-timeout"]


def test_keep_alive_idle_is_not_a_head_timeout(served: tuple[int, _App, list[str]]) -> None:
    """Between requests uvicorn's keep-alive timeout (30 s here) governs;
    a partial next head is cut after the head timeout."""
    port, _, shed = served
    with _connect(port) as sock:
        _get(sock)
        assert _closed_within(sock, HEAD_TIMEOUT * 3) is None  # still open
        assert _get(sock).endswith(b"ok")
        sock.sendall(b"GET / HTTP/1.1\r\n")
        got = _closed_within(sock, 10)
    assert got is not None and got.startswith(b"HTTP/1.1 408 ")
    assert shed == ["header-timeout"]


@pytest.mark.parametrize("served", [30.0], indirect=True)
def test_cap_evicts_the_oldest_waiting_connection(served: tuple[int, _App, list[str]]) -> None:
    port, _, shed = served
    socks = [_connect(port) for _ in range(CAP + 10)]
    try:
        time.sleep(0.3)
        # The ten oldest were closed to make room, the newest are open.
        for sock in socks[:10]:
            assert _closed_within(sock, 2) == b""
        for sock in socks[10:]:
            assert _closed_within(sock, 0.05) is None
        assert shed.count("evicted") == 10
        with _connect(port) as fresh:  # a new client is served (it evicts one more)
            assert _get(fresh).endswith(b"ok")
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("served", [30.0], indirect=True)
def test_kept_alive_connections_go_after_fresh_ones(served: tuple[int, _App, list[str]]) -> None:
    """A client that was served and idles between requests is closed for
    room only when no never-served connection is left to close."""
    port, _, shed = served
    kept = _connect(port)
    fresh: list[socket.socket] = []
    try:
        _get(kept)
        fresh = [_connect(port) for _ in range(CAP - 1)]  # the cap is full
        newer = [_connect(port) for _ in range(CAP - 1)]  # each evicts one fresh one
        time.sleep(0.3)
        assert all(_closed_within(sock, 2) == b"" for sock in fresh)
        assert _closed_within(kept, 0.05) is None
        assert _get(kept).endswith(b"ok")  # still served
        fresh += newer
        with _connect(port) as last:  # evicts the oldest of the newer ones, not kept
            assert _closed_within(kept, 0.2) is None
            assert _get(last).endswith(b"ok")
        assert shed.count("evicted") == CAP
    finally:
        kept.close()
        for sock in fresh:
            sock.close()


@pytest.mark.parametrize("served", [30.0], indirect=True)
def test_busy_connections_are_not_evicted_and_a_new_one_is_refused(
    served: tuple[int, _App, list[str]],
) -> None:
    port, app, shed = served
    busy = [_connect(port) for _ in range(CAP)]
    try:
        for sock in busy:
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.3)
        with _connect(port) as extra:
            got = _closed_within(extra, 5)
        assert got is not None and got.startswith(b"HTTP/1.1 503 ")
        assert "refused" in shed and "evicted" not in shed
        app.release.set()
        for sock in busy:  # every request in progress was answered
            assert _response(sock).startswith(b"HTTP/1.1 200 ")
    finally:
        app.release.set()
        for sock in busy:
            sock.close()


# -- file descriptors -------------------------------------------------------------


def test_plan_fits_connections_burst_and_keeps() -> None:
    plan = guard.plan_descriptors(20_000, 16, 128, None)
    assert plan.max_connections == guard.DEFAULT_MAX_CONNECTIONS
    assert plan.keep_reserve == guard.BASE_RESERVE + 16 * guard.PER_KEEP_RESERVE
    small = guard.plan_descriptors(1024, 16, 128, None)
    assert small.max_connections + guard.ACCEPT_PIPELINE * small.backlog + small.keep_reserve <= 1024
    assert guard.plan_descriptors(1024, 16, 128, 200).max_connections == 200


def test_plan_refuses_what_does_not_fit() -> None:
    with pytest.raises(UsageError, match=r"--max-connections 300 does not fit .* limit 1024"):
        guard.plan_descriptors(1024, 16, 128, 300)
    with pytest.raises(UsageError, match="raise LimitNOFILE"):
        guard.plan_descriptors(1024, 60, 128, None)  # 60 Keeps' reserve leaves too little


def test_serve_refuses_a_cap_over_the_fd_limit(tmp_path: Path) -> None:
    state = tmp_path / "state"
    init = subprocess.run(
        [sys.executable, "-m", "stockade", "host", "init", "--state-dir", str(state)],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr

    def low_nofile() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))

    args = ["host", "serve", "--listen", f"127.0.0.1:{_free_port()}", "--state-dir", str(state)]
    proc = subprocess.run(
        [sys.executable, "-m", "stockade", *args, "--max-connections", "1000"],
        capture_output=True,
        check=False,
        timeout=60,
        preexec_fn=low_nofile,  # only setrlimit, before exec
    )
    assert proc.returncode == UsageError.exit_code
    err = proc.stderr.decode()
    assert "--max-connections 1000 does not fit in the file-descriptor limit 512" in err
    assert "Traceback" not in err


# -- logs -------------------------------------------------------------------------


def _accept_errors(limiter: guard.LogRateLimit, count: int) -> str:
    """Have a real event loop report ``count`` EMFILE accept errors the way
    asyncio's selector loop does, through ``limiter``; return the log."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    asyncio_log = logging.getLogger("asyncio")
    guard_log = logging.getLogger("stockade.host.guard")
    for lg in (asyncio_log, guard_log):
        lg.addHandler(handler)
    guard.attach_log_limit(limiter)
    loop = asyncio.new_event_loop()
    try:
        with socket.socket() as sock:
            for _ in range(count):
                exc = OSError(errno.EMFILE, "Too many open files")
                loop.call_exception_handler(
                    {"message": "socket.accept() out of system resource", "exception": exc, "socket": sock}
                )
        limiter.flush(limiter.interval)
    finally:
        loop.close()
        guard.detach_log_limit(limiter)
        for lg in (asyncio_log, guard_log):
            lg.removeHandler(handler)
    return out.getvalue()


def test_accept_errors_are_one_line_then_a_summary() -> None:
    text = _accept_errors(guard.LogRateLimit(10.0, clock=lambda: 0.0), 5000)
    lines = text.splitlines()
    assert lines[0].startswith("asyncio: accept() failed: EMFILE (Too many open files)")
    assert lines[1] == "stockade.host.guard: 5000 accept errors (EMFILE) in the last 10 s"
    assert len(lines) == 2 and "Traceback" not in text


def test_a_lone_accept_error_needs_no_summary() -> None:
    lines = _accept_errors(guard.LogRateLimit(10.0, clock=lambda: 0.0), 1).splitlines()
    assert len(lines) == 1 and "EMFILE" in lines[0]


def test_summaries_per_interval() -> None:
    now = [0.0]
    limiter = guard.LogRateLimit(10.0, clock=lambda: now[0])
    record = logging.LogRecord(
        "uvicorn.error", logging.WARNING, "x", 1, "Invalid HTTP request received.", (), None
    )
    assert limiter.filter(record)  # the first passes
    assert not any(limiter.filter(record) for _ in range(99))
    limiter.note(guard.shed_kind("evicted"))
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logging.getLogger("stockade.host.guard").addHandler(handler)
    try:
        now[0] = 5.0
        limiter.flush()
        assert out.getvalue() == ""  # the interval has not ended
        now[0] = 10.0
        limiter.flush()
        assert out.getvalue().splitlines() == [
            "100 invalid HTTP requests in the last 10 s",
            "1 waiting connections closed to make room (connection limit) in the last 10 s",
        ]
        assert limiter.filter(record)  # a new interval: the first passes again
        other = logging.LogRecord("uvicorn.error", logging.INFO, "x", 1, "Started server process", (), None)
        assert all(limiter.filter(other) for _ in range(3))  # other lines are untouched
    finally:
        logging.getLogger("stockade.host.guard").removeHandler(handler)
