"""Streamed stdin and piped output through real Keeps (issue 18): an input
larger than any frame, one the workload never reads or stops reading, an
empty one, one through the keep manager's relay; the order of each output
stream; the output and time limits while stdin streams; and a client that
breaks the stream (a wrong message, the connection closed before the end):
the workload never reads a cut input as complete.

Sizes are a few MiB (a GiB is bench/bench_throughput.py's)."""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade.client import deploy as client_deploy
from stockade.client.attest import TrustConfig
from stockade.client.deploy import INLINE_STDIN, DeployPlan, DeployResult, StdinFile, deploy
from stockade.errors import KeepDied, LimitExceeded, ProtocolError
from stockade.evidence.sim import chip
from stockade.evidence.sim.local import serve_in_thread
from stockade.host.loader import KeepHandle, start_keep
from stockade.keep import session
from stockade.policy import development_policy
from stockade.wire.framing import encode_frame
from stockade.wire.messages import MAX_STDIN_DATA, Config, Limits, Output
from stockade.wire.protocol import ClientSession

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
COMPUTE = ROOT / "examples" / "compute" / "compute.wasm"
HELLO = ROOT / "examples" / "hello" / "hello.wasm"
MIB = 1 << 20


def _data(n: int) -> bytes:
    """``n`` incompressible, position-dependent bytes."""
    block = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(4096))
    return (block * (n // len(block) + 1))[:n]


@pytest.fixture
def keep(state_dir: Path) -> Iterator[KeepHandle]:
    handle = start_keep("sim", state_dir, psp=lambda m: serve_in_thread(state_dir, m))
    try:
        yield handle
    finally:
        handle.close()


def _run(
    handle: KeepHandle,
    state_dir: Path,
    wasm: bytes,
    stdin: bytes | StdinFile,
    args: tuple[str, ...] = (),
    limits: Limits | None = None,
) -> tuple[DeployResult, dict[int, bytearray]]:
    trust = TrustConfig(sim_root=chip.sim_root(state_dir), policy=development_policy(handle.measurement))
    out: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
    plan = DeployPlan.for_module(
        wasm, Config(args=args, limits=limits or Limits(timeout_ms=60_000)), stdin=stdin
    )
    result = deploy(handle.conn, plan, trust, lambda fd, data: out[fd].extend(data))
    return result, out


def test_stdin_larger_than_any_frame_comes_back_whole(keep: KeepHandle, state_dir: Path) -> None:
    data = _data(5 * MAX_STDIN_DATA + 12_345)
    result, out = _run(keep, state_dir, COMPUTE.read_bytes(), data, ("copy",))
    assert result.exit_code == 0
    assert bytes(out[1]) == data
    assert bytes(out[2]) == f"copied {len(data)} bytes\n".encode()


def test_stdin_from_a_pipe_is_streamed(keep: KeepHandle, state_dir: Path) -> None:
    """``--stdin -`` from a pipe: read as it comes (here, in small writes)."""
    data = _data(3 * MIB + 7)
    read_end, write_end = os.pipe()

    def writer() -> None:
        with os.fdopen(write_end, "wb") as f:
            for at in range(0, len(data), 100_000):
                f.write(data[at : at + 100_000])
                f.flush()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        result, out = _run(keep, state_dir, COMPUTE.read_bytes(), StdinFile(read_end), ("copy",))
    finally:
        thread.join(30)
        os.close(read_end)
    assert result.exit_code == 0 and bytes(out[1]) == data


def test_empty_streamed_stdin(keep: KeepHandle, state_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    fd = os.open(empty, os.O_RDONLY)
    try:
        result, out = _run(keep, state_dir, COMPUTE.read_bytes(), StdinFile(fd), ("copy",))
    finally:
        os.close(fd)
    assert result.exit_code == 0
    assert bytes(out[1]) == b"" and bytes(out[2]) == b"copied 0 bytes\n"


def test_workload_that_never_reads_its_stdin(keep: KeepHandle, state_dir: Path) -> None:
    """8 MiB the workload never reads: more than the Keep holds and the
    sockets buffer. The exit status still arrives; nothing waits for the
    rest of the input."""
    result, out = _run(keep, state_dir, HELLO.read_bytes(), _data(8 * MIB), ("S",))
    assert result.exit_code == 0 and bytes(out[1]).startswith(b"Hello, S!")
    assert keep.wait(30) == 0


def test_workload_that_exits_while_stdin_is_still_sent(keep: KeepHandle, state_dir: Path, wasm) -> None:  # type: ignore[no-untyped-def]
    result, _ = _run(keep, state_dir, wasm("readsome").read_bytes(), _data(8 * MIB))
    assert result.exit_code == 0
    assert keep.wait(30) == 0


def test_stdin_through_the_managers_relay(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Both directions at once through the WebSocket relay (client relay
    thread, manager, Keep): 6 MiB in and back, and a workload that stops
    reading early."""
    from manager_support import running_server
    from stockade.client.remote import ManagerClient
    from stockade.measure.launch import keep_measurement

    data = _data(6 * MIB + 5)
    with (
        running_server(state_dir, tmp_path_factory, quota=4) as server,
        ManagerClient(server.url, server.token) as client,
    ):
        trust = TrustConfig(sim_root=client.sim_root(), policy=development_policy(keep_measurement()))
        for args, wasm in ((("copy",), COMPUTE.read_bytes()), (("R",), HELLO.read_bytes())):
            out: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
            plan = DeployPlan.for_module(
                wasm, Config(args=args, limits=Limits(timeout_ms=60_000)), stdin=data
            )
            keep_doc = client.create("sim")
            sock = client.connect(str(keep_doc["id"]))
            try:
                result = deploy(sock, plan, trust, lambda fd, chunk, out=out: out[fd].extend(chunk))
            finally:
                sock.close()
            assert result.exit_code == 0
            if args == ("copy",):
                assert bytes(out[1]) == data
            else:
                assert bytes(out[1]).startswith(b"Hello, R!")
            assert client.wait(str(keep_doc["id"]), 30)["state"] == "exited"


def test_small_stdin_still_travels_in_the_release(
    keep: KeepHandle, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[bool] = []
    release = ClientSession.release

    def spy(self: ClientSession, message):  # type: ignore[no-untyped-def]
        sent.append(message.stdin_stream)
        return release(self, message)

    monkeypatch.setattr(ClientSession, "release", spy)
    data = _data(INLINE_STDIN)
    result, out = _run(keep, state_dir, COMPUTE.read_bytes(), data, ("copy",))
    assert result.exit_code == 0 and bytes(out[1]) == data
    assert sent == [False]


def test_each_output_stream_keeps_its_order(keep: KeepHandle, state_dir: Path, wasm) -> None:  # type: ignore[no-untyped-def]
    result, out = _run(keep, state_dir, wasm("interleave").read_bytes(), _data(2 * MIB))
    expected = b"".join(struct.pack("<I", i) for i in range(5000))
    assert result.exit_code == 0
    assert bytes(out[1]) == expected and bytes(out[2]) == expected


def test_output_limit_while_stdin_streams(keep: KeepHandle, state_dir: Path) -> None:
    limits = Limits(timeout_ms=60_000, output_bytes=MIB)
    with pytest.raises(LimitExceeded, match="workload exceeded its output limit and was stopped"):
        _run(keep, state_dir, COMPUTE.read_bytes(), _data(4 * MIB), ("copy",), limits)
    assert keep.wait(30) == 0


def test_output_limit_is_exact_while_stdin_streams(state_dir: Path) -> None:
    """The bytes delivered before the limit report are exactly the limit."""
    handle = start_keep("sim", state_dir, psp=lambda m: serve_in_thread(state_dir, m))
    got = bytearray()
    try:
        trust = TrustConfig(sim_root=chip.sim_root(state_dir), policy=development_policy(handle.measurement))
        limits = Limits(timeout_ms=60_000, output_bytes=MIB + 3)
        data = _data(4 * MIB)
        plan = DeployPlan.for_module(COMPUTE.read_bytes(), Config(args=("copy",), limits=limits), stdin=data)
        with pytest.raises(LimitExceeded):
            deploy(handle.conn, plan, trust, lambda fd, chunk: got.extend(chunk) if fd == 1 else None)
    finally:
        handle.close()
    assert len(got) == MIB + 3, len(got)
    assert bytes(got) == data[: MIB + 3]


def test_time_limit_while_the_workload_waits_for_stdin(keep: KeepHandle, state_dir: Path) -> None:
    """The client's stdin never ends (a pipe kept open): the workload waits
    in a read; the time limit still stops it and is reported."""
    read_end, write_end = os.pipe()
    os.write(write_end, b"partial input\n")
    try:
        with pytest.raises(LimitExceeded, match="exceeded its wall-clock time limit"):
            _run(
                keep, state_dir, COMPUTE.read_bytes(), StdinFile(read_end), ("copy",), Limits(timeout_ms=1500)
            )
    finally:
        os.close(write_end)
        os.close(read_end)
    # The limit's own stop ends the Keep (ADR 0029), before the watchdog.
    assert keep.wait(30) == session.EXIT_LIMIT


def test_a_wrong_message_in_the_stdin_stream_is_refused(
    keep: KeepHandle, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An output message where stdin is expected: the Keep answers with a
    protocol problem and ends (the workload never reads end of file)."""
    calls = []
    head = ClientSession.stdin_head

    def wrong(self: ClientSession, length: int) -> bytes:
        calls.append(length)
        head(self, length)  # the client's own state moves on as usual
        frame = encode_frame(Output(fd=1, data=bytes(length)).to_cbor())
        return frame[: len(frame) - length]  # what comes before the data

    monkeypatch.setattr(ClientSession, "stdin_head", wrong)
    with pytest.raises(ProtocolError, match="expected stdin, got 'output'"):
        _run(keep, state_dir, COMPUTE.read_bytes(), _data(2 * MIB), ("copy",))
    assert calls
    assert keep.wait(30) == session.EXIT_CHANNEL
    assert b"stdin stream refused" in keep.log_path.read_bytes()


def test_a_stdin_cut_short_never_reaches_the_workload_as_its_end(
    keep: KeepHandle, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client stops after one chunk and closes the connection (as a host
    cutting it would): the Keep ends instead of giving the workload an end
    of file, so ``compute copy`` never reports a byte count."""
    seen: list[int] = []
    real = client_deploy._StdinSource.read

    def cut(self: client_deploy._StdinSource) -> bytes | None:
        if seen:
            raise KeepDied("test: the connection is cut here")
        chunk = real(self)
        seen.append(len(chunk or b""))
        return chunk

    monkeypatch.setattr(client_deploy._StdinSource, "read", cut)
    out: dict[int, bytearray] = {}
    with pytest.raises(KeepDied, match="cut here"):
        _, out = _run(keep, state_dir, COMPUTE.read_bytes(), _data(3 * MIB), ("copy",))
    assert seen == [MAX_STDIN_DATA]
    assert keep.wait(30) == session.EXIT_CHANNEL
    log = keep.log_path.read_bytes()
    assert b"stdin stream refused" in log
    assert b"copied" not in b"".join(out.values())
