"""Work a Keep and its sim PSP do while they wait (issue 18, ADR 0032):
the PSP's warm-up with a throwaway key, the Keep's TLS context and
certificate-path warm-up before the hello, the sealing key before the load.
None of it may change what is attested: the report is the VCEK's over this
session's report data, the certificate the Keep presents is its session
key's and binds this session's nonce. No timing is asserted."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from stockade.binding.reportdata import report_data_for
from stockade.client.attest import TrustConfig, appraise
from stockade.client.hello import send_hello
from stockade.evidence.sim import chip as simchip
from stockade.evidence.sim.attester import SimAttester
from stockade.evidence.sim.channel import ReportRequest, ReportResponse
from stockade.evidence.sim.psp import SimPsp, serve_reports
from stockade.keep import identity
from stockade.keep.session import KeepServer
from stockade.policy.builtin import development_policy
from stockade.wire.framing import FrameDecoder, encode_frame

MEASUREMENT = bytes(range(48))
#: Bounds a wait for the other thread (never a pass/fail timing).
WAIT_S = 30.0


@pytest.fixture(scope="module")
def chip(state_dir: Path) -> simchip.SimChip:
    return simchip.load_chip(state_dir)


class CountingPsp(SimPsp):
    """A sim PSP that counts its warm-ups and says when one began."""

    def __init__(self, chip: simchip.SimChip) -> None:
        super().__init__(chip, MEASUREMENT)
        self.warm_ups = 0
        self.warming = threading.Event()

    def warm_up(self) -> None:
        self.warm_ups += 1
        self.warming.set()
        super().warm_up()


def _ask(sock: socket.socket, report_data: bytes) -> ReportResponse:
    sock.sendall(encode_frame(ReportRequest(report_data=report_data).to_cbor()))
    decoder = FrameDecoder(max_frame=1 << 20)
    while True:
        data = sock.recv(65536)
        assert data, "the PSP closed its end without answering"
        frames = decoder.feed(data)
        if frames:
            return ReportResponse.from_cbor(frames[0])


def _serve(psp: SimPsp, warm: bool) -> tuple[socket.socket, threading.Thread]:
    host_end, keep_end = socket.socketpair()
    thread = threading.Thread(target=serve_reports, args=(host_end, psp, warm), daemon=True)
    return keep_end, thread


def _verify(report: ReportResponse, chip: simchip.SimChip, report_data: bytes) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    from stockade.evidence.snp.abi import AttestationReport

    parsed = AttestationReport.from_bytes(report.report)
    assert parsed.report_data == report_data
    chip.vcek_key.public_key().verify(
        encode_dss_signature(parsed.sig_r, parsed.sig_s), parsed.signed_bytes, ec.ECDSA(hashes.SHA384())
    )


def test_psp_warms_up_while_idle_and_then_signs_this_request(chip: simchip.SimChip) -> None:
    psp = CountingPsp(chip)
    report_id = psp.report_id
    keep_end, thread = _serve(psp, warm=True)
    thread.start()
    assert psp.warming.wait(WAIT_S)  # nothing was asked: it warms up first
    report_data = bytes(range(64))
    report = _ask(keep_end, report_data)
    _verify(report, chip, report_data)
    keep_end.close()
    thread.join(WAIT_S)
    assert psp.warm_ups == 1
    assert psp.served == 1  # the warm-up signed no report
    assert psp.report_id == report_id


def test_psp_skips_the_warm_up_when_a_request_waits(chip: simchip.SimChip) -> None:
    psp = CountingPsp(chip)
    keep_end, thread = _serve(psp, warm=True)
    report_data = bytes(64)
    keep_end.sendall(encode_frame(ReportRequest(report_data=report_data).to_cbor()))
    thread.start()
    decoder = FrameDecoder(max_frame=1 << 20)
    frames: list[bytes] = []
    while not frames:
        frames = decoder.feed(keep_end.recv(65536))
    _verify(ReportResponse.from_cbor(frames[0]), chip, report_data)
    keep_end.close()
    thread.join(WAIT_S)
    assert psp.warm_ups == 0


def test_psp_in_a_busy_process_does_not_warm_up(chip: simchip.SimChip) -> None:
    psp = CountingPsp(chip)
    keep_end, thread = _serve(psp, warm=False)
    thread.start()
    _verify(_ask(keep_end, bytes(64)), chip, bytes(64))
    keep_end.close()
    thread.join(WAIT_S)
    assert psp.warm_ups == 0


class Spied(KeepServer):
    """A KeepServer that says when it prepares (then prepares)."""

    preparing: threading.Event

    def _prepare(self) -> None:
        self.preparing.set()
        super()._prepare()


def _keep(chip: simchip.SimChip) -> tuple[Spied, socket.socket]:
    psp_keep_end, psp_thread = _serve(SimPsp(chip, MEASUREMENT), warm=True)
    psp_thread.start()
    client, keep_sock = socket.socketpair()
    server = Spied(keep_sock, SimAttester(psp_keep_end), engine=None, scratch=None, sandbox=None)  # type: ignore[arg-type]
    server.preparing = threading.Event()
    return server, client


def _client_handshake(client: socket.socket) -> tuple[ssl.SSLSocket, bytes]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    client.settimeout(WAIT_S)
    tls = ctx.wrap_socket(client, server_hostname=None)
    cert = tls.getpeercert(binary_form=True)
    assert cert
    return tls, cert


def _attest(server: KeepServer) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.attest()
        except BaseException as exc:  # reported to the test
            errors.append(exc)

    return threading.Thread(target=run, daemon=True), errors


@pytest.mark.parametrize("hello_first", [False, True], ids=["keep-waits", "hello-waits"])
def test_keep_prepares_only_while_waiting_and_presents_its_own_fresh_certificate(
    chip: simchip.SimChip, hello_first: bool
) -> None:
    server, client = _keep(chip)
    thread, errors = _attest(server)
    if hello_first:
        hello = send_hello(client)
        thread.start()
    else:
        thread.start()
        assert server.preparing.wait(WAIT_S)  # no hello yet: the Keep prepares
        hello = send_hello(client)
    tls, cert = _client_handshake(client)
    thread.join(WAIT_S)
    assert not errors
    assert server.preparing.is_set() is not hello_first  # a waiting hello is served at once
    # What the client verifies: the evidence binds this session's nonce and
    # the key of the certificate presented, which is the Keep's session key
    # (not the throwaway key of the warm-up).
    trust = TrustConfig(sim_root=chip.ark_der, policy=development_policy(MEASUREMENT))
    appraisal = appraise(cert, hello.nonce, trust)
    assert appraisal.tls_spki == identity.spki_der(server._key)
    assert appraisal.claims.report_data == report_data_for(hello.nonce, appraisal.tls_spki)
    tls.close()
    server.sock.close()


def test_two_keeps_present_different_keys_and_reports(chip: simchip.SimChip) -> None:
    seen: list[Any] = []
    for _ in range(2):
        server, client = _keep(chip)
        thread, errors = _attest(server)
        thread.start()
        assert server.preparing.wait(WAIT_S)
        hello = send_hello(client)
        tls, cert = _client_handshake(client)
        thread.join(WAIT_S)
        assert not errors
        trust = TrustConfig(sim_root=chip.ark_der, policy=development_policy(MEASUREMENT))
        appraisal = appraise(cert, hello.nonce, trust)
        seen.append((appraisal.tls_spki, appraisal.claims.report_data, cert))
        tls.close()
        server.sock.close()
    assert len({s[0] for s in seen}) == 2  # no key reused across sessions
    assert len({s[1] for s in seen}) == 2
    assert len({s[2] for s in seen}) == 2


# -- the client's ClientHello right after its nonce (send_hello(start_tls=True)) ----------------


def test_client_hello_with_the_nonce_then_the_same_checks(chip: simchip.SimChip) -> None:
    server, client = _keep(chip)
    thread, errors = _attest(server)
    thread.start()
    hello = send_hello(client, start_tls=True)
    assert hello.tls is not None and hello.tls_error is None
    assert client.fileno() == -1  # the TLS connection owns the stream now
    hello.tls.settimeout(WAIT_S)
    hello.tls.do_handshake()  # what deploy() finishes
    thread.join(WAIT_S)
    assert not errors
    cert = hello.tls.getpeercert(binary_form=True)
    assert cert
    trust = TrustConfig(sim_root=chip.ark_der, policy=development_policy(MEASUREMENT))
    appraisal = appraise(cert, hello.nonce, trust)
    assert appraisal.tls_spki == identity.spki_der(server._key)
    hello.tls.close()
    server.sock.close()


def _peer_then(answer: bytes) -> tuple[socket.socket, threading.Thread]:
    """A fake Keep that reads the hello and the ClientHello, then sends
    ``answer`` and reads until the client closes (empty: closes at once)."""
    client, keep = socket.socketpair()

    def run() -> None:
        with keep, contextlib.suppress(OSError):  # the client may reset it
            keep.settimeout(WAIT_S)
            keep.recv(1 << 16)
            if answer:
                keep.sendall(answer)
                while keep.recv(1 << 16):  # until the client closes
                    pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return client, thread


@pytest.mark.parametrize(
    ("answer", "error"),
    [(b"", "KeepDied"), (b"HTTP/1.1 400 Bad Request\r\n\r\n" * 4, "ChannelTampered")],
    ids=["keep-closes", "clear-text-injected"],
)
def test_early_client_hello_failures_are_classified_as_before(
    chip: simchip.SimChip, answer: bytes, error: str
) -> None:
    from stockade.client.deploy import DeployPlan, deploy
    from stockade.errors import StockadeError

    wasm = (Path(__file__).resolve().parent.parent / "examples" / "hello" / "hello.wasm").read_bytes()
    client, thread = _peer_then(answer)
    hello = send_hello(client, start_tls=True)
    trust = TrustConfig(sim_root=chip.ark_der, policy=development_policy(MEASUREMENT))
    with pytest.raises(StockadeError) as info:
        deploy(client, DeployPlan.for_module(wasm), trust, lambda fd, data: None, hello=hello)
    assert type(info.value).__name__ == error
    assert "TLS handshake" in str(info.value.detail)
    thread.join(WAIT_S)
    assert hello.tls is not None and hello.tls.fileno() == -1  # closed


def test_a_refused_plan_closes_the_started_tls(chip: simchip.SimChip) -> None:
    from stockade.client.deploy import DeployPlan, deploy
    from stockade.errors import WorkloadRejected

    wasm = (Path(__file__).resolve().parent.parent / "examples" / "hello" / "hello.wasm").read_bytes()
    client, thread = _peer_then(b"")
    hello = send_hello(client, start_tls=True)
    plan = DeployPlan(**{**DeployPlan.for_module(wasm).__dict__, "required_secrets": ("token",)})
    trust = TrustConfig(sim_root=chip.ark_der, policy=development_policy(MEASUREMENT))
    with pytest.raises(WorkloadRejected):
        deploy(client, plan, trust, lambda fd, data: None, hello=hello)
    assert hello.tls is not None and hello.tls.fileno() == -1
    thread.join(WAIT_S)


# -- the fork servers' warm-up before they fork (stockade.keep.zygote.WARM_UP) ------------------


@pytest.mark.parametrize("role", ["keep", "sim-psp"])
def test_fork_warm_up_of_each_role_runs_and_starts_no_thread(role: str) -> None:
    import importlib

    from stockade.keep import zygote

    module, _, function = zygote.WARM_UP[role].partition(":")
    warm_up = getattr(importlib.import_module(module), function)
    threads = threading.active_count()
    assert warm_up() is None  # nothing kept
    assert threading.active_count() == threads  # a zygote refuses to fork with a thread


def test_fork_warm_up_uses_the_curves_generator_points() -> None:
    # The constant public points are the curves' generators (SEC 2): the
    # same point a key of private value 1 has (computed here, in the test).
    from cryptography.hazmat.primitives.asymmetric import ec

    from stockade.evidence.sim.psp import P384_G
    from stockade.keep.session import P256_G

    for curve, point in ((ec.SECP256R1(), P256_G), (ec.SECP384R1(), P384_G)):
        numbers = ec.derive_private_key(1, curve).public_key().public_numbers()
        assert (numbers.x, numbers.y) == point
