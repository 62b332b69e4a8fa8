"""A tampering host between the client and the Keep (issue 13, "An
adversarial suite that stays"; item 7: tampering is not "Keep died").

The host owns the byte stream between a deploy client and its Keep. Here a
:class:`relay.TamperRelay` on that stream (a local sim Keep, and once a Keep
behind a real keep manager) flips, drops, duplicates, reorders and truncates
TLS records in both directions, injects clear-text frames, replays a
recorded Keep session; fake Keeps present forged evidence; the host swaps
the staged package. Each case asserts the error class (hence the exit code),
its one-line message, and that no byte of the release left the client.

"Left the client" is tested at the point where it can happen: the release
(secrets and stdin) exists in the client only as the argument of
``ClientSession.release``, which frames it for TLS; a spy records every call.
A session that fails before the workload identity is verified must make no
such call, and the relay must have carried nothing from the client after the
handshake except the load request (no ``run``-phase bytes). When tampering
hits the output of a session whose release was sent (after a verified
identity, as the protocol allows), the client must still refuse the
tampered stream. The canary sweep of conftest.py then searches the host for
the canaries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adversarial.relay import (
    APPLICATION_DATA,
    DOWN,
    UP,
    Drop,
    Duplicate,
    Flip,
    Inject,
    Reorder,
    Replay,
    Tamper,
    TamperRelay,
    Target,
    Truncate,
    Unit,
)
from stockade.client.attest import TrustConfig
from stockade.client.deploy import (
    TAMPER_REASONS,
    DeployPlan,
    DeployResult,
    channel_failure,
    deploy,
    send_hello,
)
from stockade.errors import (
    ChannelTampered,
    KeepDied,
    StockadeError,
    VerificationFailed,
    WorkloadRejected,
)
from stockade.evidence.sim import chip, tdx_chip
from stockade.evidence.sim.attester import SimAttester
from stockade.evidence.sim.local import serve_in_thread
from stockade.host.loader import start_keep
from stockade.keep.loading import STAGED_NAME
from stockade.package import Manifest
from stockade.package.format import Package, encode
from stockade.policy import development_policy
from stockade.wire.evidence import EvidenceBundle
from stockade.wire.framing import encode_frame
from stockade.wire.messages import Config, Exit, Expect, FileEntry, Limits, Output
from stockade.wire.protocol import ClientSession

ROOT = Path(__file__).resolve().parents[2]
WORDCOUNT = ROOT / "examples" / "wordcount" / "wordcount.wasm"
HELLO = ROOT / "examples" / "hello" / "hello.wasm"
TAMPERED = "a TLS record failed its integrity check"
SWAPPED = "bytes between this client and the Keep were changed, dropped, replayed or injected"

pytestmark = pytest.mark.slow
#: Examples of the hypothesis tests (as in test_fuzz_parsers.py).
FUZZ_EXAMPLES = int(os.environ.get("STOCKADE_FUZZ_EXAMPLES") or (100 if os.environ.get("CI") else 200))


@dataclass
class Outcome:
    result: DeployResult | None
    error: StockadeError | None
    stdout: bytes
    relay: TamperRelay
    released: list[Any]
    keep_log: bytes
    #: Sizes of the load frames the client framed for TLS in this session.
    loads: list[int]

    def sent_after_handshake(self, phase: str) -> bytes:
        return b"".join(u.data for u in self.relay.units(UP, phase))


@dataclass
class Harness:
    state_dir: Path
    canaries: Any
    released: list[Any]
    relays: list[TamperRelay]
    loads: list[int]

    def plan(self, package: bytes | None = None, digest: bytes | None = None, **kw: Any) -> DeployPlan:
        """wordcount over /secrets/token, stdin and a 40 KiB file (so that
        the load request spans several TLS records), with fresh canaries."""
        if package is None and digest is None:
            package = _package(WORDCOUNT, "wc")
        if digest is None:
            assert package is not None
            digest = Package.from_bytes(package).digest
        return DeployPlan(
            package=package,
            digest=digest,
            config=Config(
                args=("/secrets/token",),
                files=(FileEntry("/big", os.urandom(40_000)),),
                limits=Limits(timeout_ms=20_000),
            ),
            secrets=(("token", self.canaries.new("secret")),),
            stdin=self.canaries.new("stdin"),
            **kw,
        )

    def run(
        self,
        policy: Tamper | None = None,
        plan: DeployPlan | None = None,
        staged: bytes | None = None,
        keep: Callable[[], tuple[socket.socket, Callable[[], None], Path | None]] | None = None,
        idle_close: float = 5.0,
        backend: str = "sim",
    ) -> Outcome:
        """One deploy session against a real sim Keep (or ``keep()``: a fake
        one) through a relay running ``policy``; ``backend`` sim-tdx: a sim
        TDX Keep, verified under the sim TDX root."""
        plan = plan or self.plan()
        flavour = "tdx" if backend == "sim-tdx" else "snp"
        if flavour == "tdx":
            tdx_chip.ensure_tdx_chip(self.state_dir)
        if keep is None:
            handle = start_keep(
                backend, self.state_dir, psp=lambda m: serve_in_thread(self.state_dir, m, flavour=flavour)
            )
            if staged is not None:
                assert handle.scratch is not None
                (handle.scratch / STAGED_NAME).write_bytes(staged)
            conn, close, log_path, measurement = (
                handle.conn,
                handle.close,
                handle.log_path,
                handle.measurement,
            )
        else:
            conn, close, log_path = keep()
            measurement = _runtime_measurement()
        before, loads_before = len(self.released), len(self.loads)
        relay = TamperRelay(conn, policy, idle_close=idle_close)
        self.relays.append(relay)
        out = bytearray()
        if flavour == "tdx":
            trust = TrustConfig(
                sim_tdx_root=tdx_chip.sim_tdx_root(self.state_dir), policy=development_policy(measurement)
            )
        else:
            trust = TrustConfig(
                sim_root=chip.sim_root(self.state_dir), policy=development_policy(measurement)
            )
        error: StockadeError | None = None
        result = None
        try:
            hello = send_hello(relay.client)
            result = deploy(relay.client, plan, trust, lambda fd, data: out.extend(data), hello=hello)
        except StockadeError as exc:
            error = exc
        finally:
            relay.client.close()
            relay.join()
            close()
        keep_log = log_path.read_bytes() if log_path is not None and log_path.exists() else b""
        return Outcome(
            result, error, bytes(out), relay, self.released[before:], keep_log, self.loads[loads_before:]
        )


def _package(wasm: Path, name: str) -> bytes:
    manifest = Manifest(name=name, version="1.0.0", entry="app.wasm", secrets=("token",))
    return encode(manifest, {"app.wasm": wasm.read_bytes()})


def _runtime_measurement() -> bytes:
    from stockade.host.loader import PopenSpawner

    return PopenSpawner().measurement()


@pytest.fixture
def harness(state_dir: Path, canaries: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    h = Harness(state_dir, canaries, [], [], [])
    original, original_load = ClientSession.release, ClientSession.load

    def load_spy(self: ClientSession, load: Any) -> bytes:
        frame = original_load(self, load)
        h.loads.append(len(frame))
        return frame

    def spy(self: ClientSession, release: Any) -> bytes:
        h.released.append(release)
        for relay in h.relays:
            relay.mark_released()
        return original(self, release)

    monkeypatch.setattr(ClientSession, "release", spy)
    monkeypatch.setattr(ClientSession, "load", load_spy)
    yield h


#: TLS 1.3 record overhead with AES-GCM or ChaCha20-Poly1305: 5-byte header,
#: 1 byte of inner content type, 16-byte tag (RFC 8446, section 5.2); records
#: carry at most 2^14 bytes of plaintext (OpenSSL fills them, adds no padding).
RECORD_OVERHEAD = 5 + 1 + 16
MAX_PLAINTEXT = 1 << 14
#: An encrypted alert the client's TLS may send when it gives up (2 bytes).
ALERT_RECORD = RECORD_OVERHEAD + 2


def record_sizes(plaintext: int) -> list[int]:
    """Sizes of the TLS records that carry ``plaintext`` bytes sent at once."""
    full, rest = divmod(plaintext, MAX_PLAINTEXT)
    return [MAX_PLAINTEXT + RECORD_OVERHEAD] * full + ([rest + RECORD_OVERHEAD] if rest else [])


def assert_nothing_released(o: Outcome) -> None:
    """The release never left the client: it was never framed for TLS
    (the spy on ClientSession.release), and after the handshake the client
    sent nothing but records of its load request (all of them, or the first
    ones when the Keep hung up mid-way) and at most a closing alert."""
    assert o.released == []
    assert o.result is None
    after = [len(u.data) for u in o.relay.received if u.direction == UP and u.phase in ("load", "run")]
    load = [size for n in o.loads for size in record_sizes(n)]
    if after and after[-1] == ALERT_RECORD and after != load[: len(after)]:
        after = after[:-1]
    assert after == load[: len(after)], (after, load)


def assert_refused_output(o: Outcome) -> None:
    assert o.result is None
    for value in (*[v for _, v in o.released[0].secrets], o.released[0].stdin):
        assert value not in o.relay.sent[UP] and value not in o.relay.sent[DOWN]


def test_clean_session_through_the_relay(harness: Harness) -> None:
    """Control: the pass-through relay changes nothing; the phases the
    tamper targets rely on are what a session looks like."""
    o = harness.run()
    assert o.error is None and o.result is not None and o.result.exit_code == 0
    assert len(o.released) == 1
    phases = [(u.direction, u.phase) for u in o.relay.received]
    assert phases[0] == (UP, "hello")
    assert len([u for u in o.relay.units(UP, "load") if u.content_type == APPLICATION_DATA]) >= 2
    assert any(len(u.data) > 1000 for u in o.relay.units(DOWN, "load"))  # the identity
    assert len(o.relay.units(DOWN, "run")) >= 2  # output, exit
    # The byte-level check of assert_nothing_released sees the release
    # records of a session that sent one, even without the spy.
    with pytest.raises(AssertionError):
        assert_nothing_released(dataclasses.replace(o, released=[], result=None))
    # The secrets and stdin crossed the host only as TLS ciphertext.
    for value in (*[v for _, v in o.released[0].secrets], o.released[0].stdin):
        assert value not in o.relay.sent[UP]


def _identity(phase: str = "load") -> Target:
    """The down record that carries the workload identity (the only large
    one after the handshake: session tickets are ~255 bytes)."""
    return Target(DOWN, phase, 0, min_size=1000)


# (name, policy factory, before identity?, error class, message part)
BEFORE_RELEASE: list[tuple[str, Callable[[], Tamper], type[StockadeError], str]] = [
    ("flip-down-server-hello", lambda: Flip(Target(DOWN, "handshake", 0, False), offset=20), ChannelTampered, "during the TLS handshake"),
    ("flip-down-certificate", lambda: Flip(Target(DOWN, "handshake", 1)), ChannelTampered, "during the TLS handshake"),
    ("flip-up-client-hello", lambda: Flip(Target(UP, "handshake", 0, False), offset=20), ChannelTampered, "during the TLS handshake"),
    ("flip-up-client-finished", lambda: Flip(Target(UP, "handshake", 0)), ChannelTampered, "the other end reported bad record mac"),
    ("flip-up-load", lambda: Flip(Target(UP, "load", 0)), ChannelTampered, "the other end reported bad record mac"),
    ("flip-up-load-record-header", lambda: Flip(Target(UP, "load", 1), offset=1), ChannelTampered, "the other end reported decode error"),
    ("flip-down-identity", lambda: Flip(_identity()), ChannelTampered, "decryption failed or bad record mac"),
    ("drop-up-load", lambda: Drop(Target(UP, "load", 0)), ChannelTampered, "the other end reported bad record mac"),
    ("drop-down-ticket", lambda: Drop(Target(DOWN, "load", 0)), ChannelTampered, "decryption failed or bad record mac"),
    ("duplicate-up-load", lambda: Duplicate(Target(UP, "load", 0)), ChannelTampered, "the other end reported bad record mac"),
    ("duplicate-down-ticket", lambda: Duplicate(Target(DOWN, "load", 0)), ChannelTampered, "decryption failed or bad record mac"),
    ("reorder-up-load", lambda: Reorder(Target(UP, "load", 0)), ChannelTampered, "the other end reported bad record mac"),
    ("reorder-down-handshake", lambda: Reorder(Target(DOWN, "handshake", 1)), ChannelTampered, "during the TLS handshake"),
    ("inject-down-clear-frame-handshake", lambda: Inject(Target(DOWN, "handshake", 0, False), _clear_frame()), ChannelTampered, "wrong version number"),
    ("inject-down-clear-frame-load", lambda: Inject(_identity(), _clear_frame()), ChannelTampered, "wrong version number"),
    ("inject-up-clear-frame-load", lambda: Inject(Target(UP, "load", 0), _clear_frame()), ChannelTampered, "the other end reported unexpected message"),
    # A stream that merely ends cannot be told from a Keep that died: 115.
    ("truncate-down-identity", lambda: Truncate(_identity()), KeepDied, "the Keep closed the connection while loading the package"),
    # Cut mid-upload: the client meets the EOF writing or reading, either way "closed".
    ("truncate-up-load", lambda: Truncate(Target(UP, "load", 2)), KeepDied, "the Keep closed the connection while"),
]  # fmt: skip


def _clear_frame() -> bytes:
    """A well-formed protocol frame sent in clear: a fake Exit 0."""
    return encode_frame(Exit(code=0, workload_sha256=bytes(32)).to_cbor())


@pytest.mark.parametrize(
    ("policy", "error", "message"),
    [pytest.param(p, e, m, id=name) for name, p, e, m in BEFORE_RELEASE],
)
def test_tamper_before_release(
    harness: Harness, policy: Callable[[], Tamper], error: type[StockadeError], message: str
) -> None:
    pol = policy()
    o = harness.run(pol)
    assert pol.acted, "the tamper target was not in the session"
    assert type(o.error) is error, o.error
    assert message in str(o.error)
    if error is ChannelTampered:
        assert str(o.error).startswith(TAMPERED) and SWAPPED in str(o.error)
        assert o.error.exit_code == 118 and o.error.problem_type == "channel-integrity"
    else:
        assert o.error is not None and o.error.exit_code == 115
    assert "\n" not in str(o.error)
    assert_nothing_released(o)


AFTER_RELEASE: list[tuple[str, Callable[[], Tamper]]] = [
    ("flip-down-output", lambda: Flip(Target(DOWN, "run", 0))),
    ("flip-up-release", lambda: Flip(Target(UP, "run", 0))),
    ("drop-down-output", lambda: Drop(Target(DOWN, "run", 0))),
    ("duplicate-down-output", lambda: Duplicate(Target(DOWN, "run", 0))),
    ("reorder-down-output", lambda: Reorder(Target(DOWN, "run", 0))),
    ("inject-down-fake-exit", lambda: Inject(Target(DOWN, "run", 0), _clear_frame())),
    (
        "inject-down-fake-output",
        lambda: Inject(Target(DOWN, "run", 0), encode_frame(Output(1, b"fake").to_cbor())),
    ),
]


@pytest.mark.parametrize("policy", [pytest.param(p, id=name) for name, p in AFTER_RELEASE])
def test_tamper_after_release(harness: Harness, policy: Callable[[], Tamper]) -> None:
    """After a verified identity the release goes out (as designed); the
    host tampering with the output or the release is refused, never
    reported as the workload's result, and the release crossed the host
    only encrypted."""
    pol = policy()
    o = harness.run(pol)
    assert pol.acted
    assert isinstance(o.error, ChannelTampered), o.error
    assert str(o.error).startswith(TAMPERED) and "while the workload ran" in str(o.error)
    assert len(o.released) == 1
    assert_refused_output(o)
    assert b"fake" not in o.stdout


def test_host_rewrites_the_clear_text_nonce(harness: Harness) -> None:
    """The hello travels in clear (the nonce is public): a host that changes
    it makes the genuine Keep attest another nonce, which the client refuses
    before it sends anything inside TLS."""
    pol = Flip(Target(UP, "hello", 0, app_data_only=False), offset=-1)
    o = harness.run(pol)
    assert pol.acted
    assert isinstance(o.error, VerificationFailed), o.error
    assert o.error.exit_code == 110
    assert str(o.error).startswith("report data does not bind this session's nonce")
    assert_nothing_released(o)
    assert o.relay.units(UP, "load") == []


# ------------------------------------------------- any single tampering


@st.composite
def tampers(draw: st.DrawFn) -> Tamper:
    """One tampering anywhere in a session: any direction and phase, any
    unit (TLS record or the clear-text hello, any content type), any of
    the operations, at any byte."""
    direction = draw(st.sampled_from([UP, DOWN]))
    phases = ["hello", "handshake", "load", "run"] if direction == UP else ["handshake", "load", "run"]
    phase = draw(st.sampled_from(phases))
    target = Target(direction, phase, draw(st.integers(0, 3)), app_data_only=False)
    op = draw(st.sampled_from(["flip", "drop", "duplicate", "reorder", "truncate", "inject"]))
    if op == "flip":
        return Flip(target, offset=draw(st.integers(-300, 300)), mask=1 << draw(st.integers(0, 7)))
    if op == "truncate":
        return Truncate(target, keep=draw(st.integers(0, 40)))
    if op == "inject":
        payload = draw(st.one_of(st.binary(min_size=1, max_size=40), st.just(_clear_frame())))
        return Inject(target, payload)
    return {"drop": Drop, "duplicate": Duplicate, "reorder": Reorder}[op](target)


def _genuine_stdout(o: Outcome) -> bytes:
    """How wordcount's report of the secret the session released begins
    (its hash: what only the genuine workload, given the secret, can print)."""
    ((_, secret),) = o.released[0].secrets
    words = len(secret.split())
    lines = secret.count(b"\n")
    digest = hashlib.sha256(secret).hexdigest()
    line = f"/secrets/token: lines={lines} words={words} bytes={len(secret)} sha256={digest}\n"
    return line.encode() + b"top words:\n"


class _Safe(Tamper):
    """Wraps a policy: an offset past the end of a short record wraps."""

    def __init__(self, inner: Tamper) -> None:
        self.inner = inner

    @property
    def acted(self) -> bool:  # type: ignore[override]
        return self.inner.acted

    def on_unit(self, unit: Unit) -> list[bytes]:
        inner = self.inner
        if isinstance(inner, Flip) and not -len(unit.data) <= inner.offset < len(unit.data):
            inner.offset %= len(unit.data)
        return inner.on_unit(unit)


@settings(
    max_examples=max(5, FUZZ_EXAMPLES // 10),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tampers())
def test_any_single_tampering_is_refused_or_harmless(harness: Harness, policy: Tamper) -> None:
    """Whatever one change the host makes, the client either gets the
    genuine result (some changes are harmless by design: TLS 1.3 ignores a
    duplicated change_cipher_spec and the ClientHello's record version) or
    a stockade error, never a traceback; secrets leave only after a
    verified identity, and tampered output is never accepted."""
    wrapped = _Safe(policy)
    o = harness.run(wrapped, idle_close=1.0)
    if o.error is None:
        assert o.result is not None and o.result.exit_code == 0
        assert o.stdout.startswith(_genuine_stdout(o)), o.stdout
        return
    assert wrapped.acted, f"failed without tampering: {o.error!r}"
    assert o.error.exit_code in (110, 111, 113, 115, 118), repr(o.error)
    assert "\n" not in str(o.error)
    if o.released:
        # Only after a verified identity; and the release crossed only encrypted.
        assert_refused_output(o)
    else:
        assert_nothing_released(o)


def test_replay_of_a_recorded_keep_session(harness: Harness) -> None:
    """Session A runs clean; in session B (another nonce, another client key
    share) the host answers with A's recorded Keep records from the
    handshake on: the client cannot even complete the handshake."""
    a = harness.run()
    assert a.error is None
    recorded = [u for u in a.relay.received if u.direction == DOWN]
    pol = Replay(recorded, "handshake")
    b = harness.run(pol)
    assert pol.acted
    assert isinstance(b.error, ChannelTampered), b.error
    assert "during the TLS handshake" in str(b.error)
    assert b.released == [] and b.relay.units(UP, "load") == []
    assert len(a.released) == 1


def test_replay_of_a_recorded_identity(harness: Harness) -> None:
    """The host lets B's handshake through but answers B's load request with
    A's recorded identity (and tickets): they were encrypted under A's keys."""
    a = harness.run()
    assert a.error is None
    pol = Replay([u for u in a.relay.received if u.direction == DOWN], "load")
    b = harness.run(pol)
    assert pol.acted
    assert isinstance(b.error, ChannelTampered), b.error
    assert "while loading the package" in str(b.error)
    assert_nothing_released(b)


# ------------------------------------------------------------------ fake Keeps


def _fake_keep(
    state_dir: Path, evidence: Callable[[bytes], EvidenceBundle]
) -> Callable[[], tuple[socket.socket, Callable[[], None], Path | None]]:
    """A Keep run by the host itself in a thread: the genuine Keep session
    code with its own fresh TLS key, but ``evidence`` decides what report it
    presents. It never gets a workload engine: the client must refuse it."""
    from stockade.keep.sandbox import enter as enter_sandbox
    from stockade.keep.session import serve

    class Forged:
        platform = "sim"

        def evidence(self, report_data: bytes) -> EvidenceBundle:
            return evidence(report_data)

    def start() -> tuple[socket.socket, Callable[[], None], Path | None]:
        client_end, keep_end = socket.socketpair()
        engine: Future[Any] = Future()
        # A thread cannot enter its own mount namespace: the fallback disk
        # (the fake Keep never gets as far as a workload anyway).
        disk = enter_sandbox(None, namespaces=False)
        thread = threading.Thread(target=serve, args=(keep_end, Forged(), engine, None, disk), daemon=True)
        thread.start()

        def close() -> None:
            client_end.close()
            thread.join(10)
            disk.cleanup()

        return client_end, close, None

    return start


@pytest.fixture(scope="module")
def other_chip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another sim chip (its own ARK): evidence the client must not trust."""
    path = tmp_path_factory.mktemp("other-chip")
    chip.ensure_chip(path)
    return path


def _attester(state_dir: Path) -> SimAttester:
    return SimAttester(serve_in_thread(state_dir, _runtime_measurement()))


def test_fake_keep_with_evidence_from_another_chip(harness: Harness, other_chip: Path) -> None:
    attester = _attester(other_chip)
    o = harness.run(keep=_fake_keep(harness.state_dir, attester.evidence))
    assert isinstance(o.error, VerificationFailed), o.error
    assert o.error.exit_code == 110
    # The other chip's ASK does not chain to the client's sim root.
    assert str(o.error).startswith("intermediate certificate (ASK/ASVK) signature does not verify under")
    assert "\n" not in str(o.error)
    assert_nothing_released(o)
    assert o.relay.units(UP, "load") == []  # not even the package left


# ------------------------------------------------------------------ sim-tdx


@pytest.fixture(scope="module")
def other_tdx_chip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another sim TDX chip (its own fake Intel PKI): quotes the client must not trust."""
    path = tmp_path_factory.mktemp("other-tdx-chip")
    tdx_chip.ensure_tdx_chip(path)
    return path


def test_sim_tdx_session_through_the_relay(harness: Harness) -> None:
    o = harness.run(backend="sim-tdx")
    assert o.error is None, o.error
    assert o.result is not None and o.result.exit_code == 0
    assert o.result.appraisal.claims.platform == "sim-tdx"


def test_sim_tdx_flipped_certificate_record_is_tampering(harness: Harness) -> None:
    pol = Flip(Target(DOWN, "handshake", 1))
    o = harness.run(pol, backend="sim-tdx")
    assert pol.acted
    assert isinstance(o.error, ChannelTampered), o.error
    assert_nothing_released(o)


def test_fake_keep_with_a_sim_tdx_quote_from_another_chip(harness: Harness, other_tdx_chip: Path) -> None:
    """A Keep presenting a genuine sim-tdx quote (bound to this session) from
    a sim TDX chip the client does not trust: 110, nothing leaves."""
    attester = SimAttester(
        serve_in_thread(other_tdx_chip, _runtime_measurement(), flavour="tdx"), backend="sim-tdx"
    )
    o = harness.run(keep=_fake_keep(harness.state_dir, attester.evidence), backend="sim-tdx")
    assert isinstance(o.error, VerificationFailed), o.error
    assert o.error.exit_code == 110
    assert "\n" not in str(o.error)
    assert_nothing_released(o)
    assert o.relay.units(UP, "load") == []


def test_fake_keep_reuses_an_old_report_with_a_fresh_key(harness: Harness) -> None:
    """A genuine report of the real chip, taken earlier for other report
    data, presented by a Keep with a fresh key: it binds neither this
    session's nonce nor this key."""
    old = _attester(harness.state_dir).evidence(os.urandom(64))
    o = harness.run(keep=_fake_keep(harness.state_dir, lambda report_data: old))
    assert isinstance(o.error, VerificationFailed), o.error
    assert o.error.exit_code == 110
    assert str(o.error).startswith("report data does not bind this session's nonce and the Keep's TLS key")
    assert_nothing_released(o)
    assert o.relay.units(UP, "load") == []


# ------------------------------------------------------------ staged package


def test_host_substitutes_the_staged_package(harness: Harness) -> None:
    """The host stages another package than the one the client pinned
    (trusted boot): the Keep refuses it before the identity, through the
    relay; no release."""
    wanted = _package(WORDCOUNT, "wc")
    digest = Package.from_bytes(wanted).digest
    plan = harness.plan(package=None, digest=digest, expect=Expect(digests=(digest,)))
    o = harness.run(plan=plan, staged=_package(HELLO, "evil"))
    assert isinstance(o.error, WorkloadRejected), o.error
    assert "staged by the host" in str(o.error)
    assert_nothing_released(o)


def test_host_substitutes_the_staged_package_measured_boot(harness: Harness) -> None:
    wanted = _package(WORDCOUNT, "wc")
    swapped = _package(HELLO, "evil")
    plan = harness.plan(package=None, digest=Package.from_bytes(wanted).digest)
    o = harness.run(plan=plan, staged=swapped)
    assert isinstance(o.error, VerificationFailed), o.error
    assert f"loaded package digest {Package.from_bytes(swapped).digest.hex()}" in str(o.error)
    assert_nothing_released(o)


# ------------------------------------------------------------- the real CLI

PATCHED_HOST = """
import sys
sys.path.insert(0, {here!r})
import relay
import stockade.host.loader as loader
from stockade.cli import main

real = loader.start_keep

def start_keep(*args, **kwargs):
    handle = real(*args, **kwargs)
    tap = relay.TamperRelay(handle.conn, {policy})
    handle.conn = tap.client
    return handle

loader.start_keep = start_keep
sys.argv = ["stockade", *sys.argv[1:]]
main()
"""


CLI_CASES = [
    pytest.param(
        'relay.Flip(relay.Target(relay.UP, "load", 0))',
        118,
        f"stockade: attested channel broken: {TAMPERED} while loading the package",
        id="flip-118",
    ),
    pytest.param(
        'relay.Truncate(relay.Target(relay.DOWN, "load", 0, min_size=1000))',
        115,
        "stockade: Keep died: the Keep closed the connection while loading the package",
        id="truncate-115",
    ),
]


@pytest.mark.parametrize(("policy", "code", "line"), CLI_CASES)
def test_cli_exit_code_and_one_line(
    state_dir: Path, tmp_path: Path, canaries: Any, policy: str, code: int, line: str
) -> None:
    """``stockade run`` on a host whose relay flips a bit: exit 118 and one
    line that says the channel was broken, not that the Keep died; a host
    that cuts the stream: 115, Keep died."""
    secret_file, _ = canaries.client_file(tmp_path / "token")
    stdin_file, _ = canaries.client_file(tmp_path / "stdin", "stdin")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            PATCHED_HOST.format(here=str(Path(__file__).parent), policy=policy),
            "run",
            "--allow-sim",
            "-q",
            "--timeout",
            "20",
            "--secret",
            f"token=@{secret_file}",
            "--stdin",
            str(stdin_file),
            str(WORDCOUNT),
            "/secrets/token",
        ],
        capture_output=True,
        timeout=120,
        env={**os.environ, "STOCKADE_STATE_DIR": str(state_dir)},
        check=False,
    )
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert "NO HARDWARE PROTECTION" in lines[0]  # -q keeps the sim label
    assert lines[-1].startswith(line), err
    assert sum(line.startswith("stockade: ") for line in lines[1:]) == 1, err
    assert proc.stdout == b""


# ------------------------------------------------------- through a keep manager


@pytest.fixture(scope="module")
def manager(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from manager_support import running_server

    with running_server(state_dir, tmp_path_factory) as server:
        yield server


def test_tampering_through_the_keep_manager_relay(manager: Any, harness: Harness, canaries: Any) -> None:
    """The Keep behind a real keep manager; the relay sits on the client's
    end of the manager's WebSocket relay (what a patched manager could do)."""
    from stockade.client.remote import ManagerClient

    canaries.sweep_dir(manager.state)
    canaries.sweep_dir(manager.log.parent)
    with ManagerClient(manager.url, manager.token) as client:
        doc = client.create("sim")
        sock = client.connect(doc["id"])

        def keep() -> tuple[socket.socket, Callable[[], None], Path | None]:
            return sock, lambda: None, None

        o = harness.run(Flip(_identity()), keep=keep)
        client.wait(doc["id"], 20)
    assert isinstance(o.error, ChannelTampered), o.error
    assert "while loading the package" in str(o.error)
    assert_nothing_released(o)


def test_stream_cut_after_the_release_is_keep_died(harness: Harness) -> None:
    """A clean end of stream before the exit message stays *Keep died*
    (115): the host may stop a Keep, and this looks the same."""
    pol = Truncate(Target(DOWN, "run", 0), keep=0)
    o = harness.run(pol)
    assert pol.acted
    assert type(o.error) is KeepDied, o.error
    assert "before reporting the workload's exit status" in str(o.error)
    assert o.error.exit_code == 115
    assert_refused_output(o)


# --------------------------------------------- the classification, unit level


def _ssl_error(cls: type[ssl.SSLError], reason: str | None) -> ssl.SSLError:
    err = cls(1, f"[SSL: {reason}] test")
    err.reason = reason  # set by the ssl module from OpenSSL's error queue
    return err


@pytest.mark.parametrize("reason", sorted(TAMPER_REASONS))
def test_integrity_reasons_are_channel_tampered(reason: str) -> None:
    err = channel_failure(_ssl_error(ssl.SSLError, reason), "while loading the package", _died)
    assert type(err) is ChannelTampered and err.exit_code == 118
    assert str(err).startswith(f"{TAMPERED} while loading the package (")


@pytest.mark.parametrize(
    "exc",
    [
        _ssl_error(ssl.SSLEOFError, "UNEXPECTED_EOF_WHILE_READING"),
        _ssl_error(ssl.SSLError, "TLSV1_ALERT_PROTOCOL_VERSION"),
        _ssl_error(ssl.SSLError, None),
        ConnectionResetError(104, "Connection reset by peer"),
        BrokenPipeError(32, "Broken pipe"),
    ],
    ids=["eof", "version-alert", "no-reason", "reset", "broken-pipe"],
)
def test_other_failures_stay_keep_died(exc: OSError) -> None:
    err = channel_failure(exc, "while loading the package", _died)
    assert type(err) is KeepDied and err.exit_code == 115
    assert str(err) == f"died while loading the package ({type(exc).__name__})"


def _died(during: str) -> KeepDied:
    return KeepDied(f"died {during}")
