"""The Keep's output pump (keep/session.py OutputPump): the workload's
output leaves in order, consecutive writes to one stream are joined into
larger frames, the queue is bounded, and a failed send stops the workload's
writes."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from stockade.client.attest import TrustConfig
from stockade.client.deploy import DeployPlan, deploy
from stockade.evidence.sim import chip
from stockade.evidence.sim.local import serve_in_thread
from stockade.host.loader import start_keep
from stockade.keep import session
from stockade.keep.session import OUTPUT_FRAME_DATA, OutputPump
from stockade.policy import development_policy
from stockade.wire.messages import Config, Limits

COMPUTE = Path(__file__).resolve().parent.parent / "examples" / "compute" / "compute.wasm"


class Recorder:
    """A send function that can be held back, recording every call."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, fd: int, data: bytes) -> None:
        self.entered.set()
        assert self.gate.wait(10)
        self.sent.append((fd, data))


def test_a_lone_write_leaves_at_once() -> None:
    rec = Recorder()
    pump = OutputPump(rec)
    pump.put(1, b"hello")
    deadline = time.monotonic() + 5
    while not rec.sent and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rec.sent == [(1, b"hello")]  # sent before close: nothing waited for more
    assert pump.close() is None


def test_writes_queued_behind_a_send_are_joined_per_stream_in_order() -> None:
    rec = Recorder()
    rec.gate.clear()
    pump = OutputPump(rec)
    pump.put(1, b"first")  # taken at once; its send is held
    assert rec.entered.wait(5)
    writes = [(1, b"a" * 4096), (1, b"b" * 4096), (2, b"err"), (2, b"or"), (1, b"c"), (1, b"d")]
    for fd, data in writes:
        pump.put(fd, data)
    rec.gate.set()
    assert pump.close() is None
    assert rec.sent == [(1, b"first"), (1, b"a" * 4096 + b"b" * 4096), (2, b"error"), (1, b"cd")]


def test_frames_hold_at_most_output_frame_data() -> None:
    rec = Recorder()
    rec.gate.clear()
    pump = OutputPump(rec)
    pump.put(1, b"x")
    assert rec.entered.wait(5)
    chunk = b"y" * 4096
    count = 3 * OUTPUT_FRAME_DATA // len(chunk) + 1
    for _ in range(count):
        pump.put(1, chunk)
    rec.gate.set()
    assert pump.close() is None
    assert b"".join(d for _, d in rec.sent) == b"x" + chunk * count
    assert all(len(d) <= OUTPUT_FRAME_DATA for _, d in rec.sent)
    assert len(rec.sent) == 1 + -(-count * len(chunk) // OUTPUT_FRAME_DATA)


def test_a_full_queue_makes_the_writer_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session, "OUTPUT_QUEUE_BYTES", 10)
    rec = Recorder()
    rec.gate.clear()
    pump = OutputPump(rec)
    pump.put(1, b"0")
    assert rec.entered.wait(5)
    pump.put(1, b"0123456789")  # fills the queue
    done = threading.Event()

    def writer() -> None:
        pump.put(1, b"more")
        done.set()

    threading.Thread(target=writer, daemon=True).start()
    assert not done.wait(0.3), "a write past the queue limit did not wait"
    rec.gate.set()
    assert done.wait(5)
    assert pump.close() is None
    assert b"".join(d for _, d in rec.sent) == b"00123456789more"


def test_a_failed_send_is_reported_and_stops_later_writes() -> None:
    def broken(fd: int, data: bytes) -> None:
        raise ConnectionResetError("client gone")

    pump = OutputPump(broken)
    pump.put(1, b"lost")
    deadline = time.monotonic() + 5
    with pytest.raises(OSError, match="sending the output failed"):
        while time.monotonic() < deadline:
            pump.put(1, b"more")
            time.sleep(0.01)
    err = pump.close()
    assert isinstance(err, ConnectionResetError)


@pytest.mark.slow
def test_a_client_that_stops_reading_cannot_hold_the_keep(state_dir: Path) -> None:
    """The workload writes more than fits in the Keep's queues and the
    sockets' buffers; the client reads nothing after the first Output
    message. The Keep's watchdog (time limit + grace) still ends it."""
    handle = start_keep("sim", state_dir, psp=lambda m: serve_in_thread(state_dir, m))
    blocked = threading.Event()
    release = threading.Event()
    errors: list[BaseException] = []

    def on_output(fd: int, data: bytes) -> None:
        blocked.set()
        release.wait(60)  # the client stops reading

    def client() -> None:
        trust = TrustConfig(sim_root=chip.sim_root(state_dir), policy=development_policy(handle.measurement))
        limits = Limits(timeout_ms=2000, output_bytes=64 << 20)
        plan = DeployPlan.for_module(
            # 16 MiB: more than the Keep's queues and the sockets' buffers
            # (4 MiB each way since issue 18) hold: the Keep cannot finish
            # sending, and the workload waits in a write (or, its stdin
            # streamed, in a read: the client sends nothing while it does
            # not read either).
            COMPUTE.read_bytes(),
            Config(args=("copy",), limits=limits),
            stdin=os.urandom(16 << 20),
        )
        try:
            deploy(handle.conn, plan, trust, on_output)
        except BaseException as exc:  # the Keep ends mid-stream
            errors.append(exc)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        assert blocked.wait(60), "no output arrived"
        # 2 s limit + 1 s grace + up to 1 s for the send lock, and slack.
        status = handle.wait(20)
        assert status == session.EXIT_WATCHDOG, f"the Keep did not end by itself (status {status})"
        assert b"watchdog ends the Keep" in handle.log_path.read_bytes()
    finally:
        release.set()
        thread.join(30)
        handle.close()
