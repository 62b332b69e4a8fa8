"""The sim-tdx backend: a sim QE signing TDX v4 quotes under a fake Intel
PKI kept in the state directory, verified by the Intel DCAP verifier with
the sim root, labelled sim-tdx (NO HARDWARE PROTECTION), refused by the
default policy; and a real Keep started with ``--backend sim-tdx`` serves
evidence that verifies."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from stockade.binding.reportdata import report_data_for
from stockade.client.deploy import send_hello
from stockade.errors import MalformedEvidence, VerificationFailed
from stockade.evidence.intel.verify import intel_root_der, verify_quote
from stockade.evidence.sim import tdx_chip
from stockade.evidence.sim.attester import SimAttester
from stockade.evidence.sim.channel import ReportRequest
from stockade.evidence.sim.local import serve_in_thread
from stockade.evidence.sim.tdx_verify import collateral_of, verify_sim_tdx, verify_sim_tdx_quote
from stockade.host.loader import start_keep
from stockade.policy import appraise as policy_appraise
from stockade.policy.model import RefusedByPolicy
from stockade.wire.evidence import EVIDENCE_OID, EvidenceBundle, bundle_from_extension

MEASUREMENT = hashlib.sha384(b"a Keep").digest()
REPORT_DATA = hashlib.sha512(b"nonce and TLS key").digest()


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sim-tdx")
    assert tdx_chip.ensure_tdx_chip(path)
    assert not tdx_chip.ensure_tdx_chip(path)  # generated once per state dir
    return path


@pytest.fixture(scope="module")
def qe(state: Path) -> tdx_chip.SimQe:
    return tdx_chip.SimQe(tdx_chip.load_tdx_chip(state), MEASUREMENT)


@pytest.fixture(scope="module")
def bundle(qe: tdx_chip.SimQe) -> EvidenceBundle:
    rsp = qe.report(ReportRequest(report_data=REPORT_DATA))
    return EvidenceBundle(platform="sim-tdx", report=rsp.report, certs=rsp.certs)


def now() -> datetime:
    return datetime.now(UTC)


def test_quote_verifies_with_the_intel_verifier_and_sim_root(state: Path, bundle: EvidenceBundle) -> None:
    verified = verify_sim_tdx(bundle, tdx_chip.sim_tdx_root(state), now())
    c = verified.claims
    assert c.platform == "sim-tdx"
    assert not c.hardware_protected
    assert c.to_json()["hardware_protection"] is False
    assert c.measurement == MEASUREMENT
    assert dict(c.registers)["mrtd"] == MEASUREMENT
    assert dict(c.registers)["rtmr0"] == bytes(48)
    assert c.report_data == REPORT_DATA
    assert c.report_version == 4
    assert c.tcb_status == "UpToDate"
    assert not c.debug
    assert verified.revocation_checked
    assert verified.quote.version == 4
    assert c.root_fingerprint == hashlib.sha256(tdx_chip.sim_tdx_root(state)).hexdigest()


def test_chip_is_stable_across_loads(state: Path, qe: tdx_chip.SimQe) -> None:
    again = tdx_chip.load_tdx_chip(state)
    assert again.root_der == qe.chip.root_der == tdx_chip.sim_tdx_root(state)
    assert again.pck.der == qe.chip.pck.der
    root = x509.load_der_x509_certificate(again.root_der)
    assert "NO HARDWARE PROTECTION" in root.subject.rfc4514_string()


def test_the_same_quote_is_tdx_to_the_raw_verifier_only_with_the_sim_root(
    state: Path, bundle: EvidenceBundle
) -> None:
    """Against Intel's real root the sim quote fails; the sim wrapper is what
    labels it, so it can never come out as "tdx" through the sim path."""
    with pytest.raises(VerificationFailed):
        verify_quote(bundle.report, collateral_of(bundle), now())
    with pytest.raises(VerificationFailed, match="Intel's real root"):
        verify_sim_tdx(bundle, intel_root_der(), now())


def test_report_data_binding(state: Path, qe: tdx_chip.SimQe) -> None:
    other = hashlib.sha512(b"another session").digest()
    rsp = qe.report(ReportRequest(report_data=other))
    verified = verify_sim_tdx_quote(
        rsp.report,
        collateral_of(EvidenceBundle("sim-tdx", b"", rsp.certs)),
        tdx_chip.sim_tdx_root(state),
        now(),
    )
    assert verified.claims.report_data == other != REPORT_DATA


def test_default_policy_refuses(state: Path, bundle: EvidenceBundle) -> None:
    claims = verify_sim_tdx(bundle, tdx_chip.sim_tdx_root(state), now()).claims
    with pytest.raises(RefusedByPolicy) as err:
        policy_appraise(claims)
    decision = err.value.decision
    assert not decision.accepted
    assert decision.platform == "sim-tdx"
    assert not decision.hardware_protected
    assert any("sim-tdx" in n and "NO HARDWARE PROTECTION" in n for n in decision.notes)


def test_another_sim_root_is_refused(tmp_path: Path, bundle: EvidenceBundle) -> None:
    tdx_chip.ensure_tdx_chip(tmp_path)
    with pytest.raises(VerificationFailed):
        verify_sim_tdx(bundle, tdx_chip.sim_tdx_root(tmp_path), now())


def test_expired_collateral_is_refused(state: Path, bundle: EvidenceBundle) -> None:
    later = now() + tdx_chip.COLLATERAL_VALIDITY + timedelta(days=1)
    with pytest.raises(VerificationFailed):
        verify_sim_tdx(bundle, tdx_chip.sim_tdx_root(state), later)


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def _verify_parts(state: Path, qe: tdx_chip.SimQe, bundle: EvidenceBundle, quote: bytes) -> None:
    verify_sim_tdx_quote(quote, collateral_of(bundle), tdx_chip.sim_tdx_root(state), now())


@pytest.mark.parametrize(
    "part",
    [
        "signature",
        "attestation_key",
        "qe_report",
        "qe_report_signature",
        "qe_auth_data",
        "report_data",
        "mr_td",
    ],
)
def test_tampered_quote_part_fails(
    state: Path, qe: tdx_chip.SimQe, bundle: EvidenceBundle, part: str
) -> None:
    parts = qe.quote_parts(REPORT_DATA)
    _verify_parts(state, qe, bundle, parts.to_bytes())  # untouched: verifies
    if part == "report_data":
        tampered = parts.replace(body=_flip(parts.body, 520))
    elif part == "mr_td":
        tampered = parts.replace(body=_flip(parts.body, 136))
    else:
        tampered = parts.replace(**{part: _flip(getattr(parts, part), 5)})
    with pytest.raises((VerificationFailed, MalformedEvidence)):
        _verify_parts(state, qe, bundle, tampered.to_bytes())


def test_pck_chain_from_another_sim_chip_fails(
    tmp_path: Path, state: Path, qe: tdx_chip.SimQe, bundle: EvidenceBundle
) -> None:
    tdx_chip.ensure_tdx_chip(tmp_path)
    other = tdx_chip.load_tdx_chip(tmp_path)
    parts = qe.quote_parts(REPORT_DATA).replace(pck_chain_pem=other.pki.pck_chain_pem(other.pck))
    with pytest.raises(VerificationFailed):
        _verify_parts(state, qe, bundle, parts.to_bytes())


def test_tampered_pck_leaf_fails(state: Path, qe: tdx_chip.SimQe, bundle: EvidenceBundle) -> None:
    chip = qe.chip
    leaf = x509.load_der_x509_certificate(chip.pck.der)
    # flip one byte inside the leaf's signed part (its public key)
    spki = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    at = chip.pck.der.index(spki) + len(spki) - 3
    tampered_der = _flip(chip.pck.der, at)
    from stockade.evidence.intel.abi import pem_encode

    chain = b"".join(pem_encode(d) for d in (tampered_der, chip.pki.ca_ders["platform"], chip.root_der))
    parts = qe.quote_parts(REPORT_DATA).replace(pck_chain_pem=chain + b"\x00")
    with pytest.raises((VerificationFailed, MalformedEvidence)):
        _verify_parts(state, qe, bundle, parts.to_bytes())


@pytest.mark.parametrize("item", ["tcb_info", "qe_identity", "root_ca_crl", "pck_crl"])
def test_tampered_collateral_fails(state: Path, bundle: EvidenceBundle, item: str) -> None:
    certs = dict(bundle.certs)
    blob = certs[item]
    # TCB info / QE identity: a byte of the signed JSON body (a digit of the
    # issue date); CRLs: a byte near the end (the signature)
    at = blob.index(b"issueDate") + 14 if item in ("tcb_info", "qe_identity") else len(blob) - 4
    certs[item] = _flip(blob, at)
    tampered = EvidenceBundle("sim-tdx", bundle.report, tuple(sorted(certs.items())))
    with pytest.raises((VerificationFailed, MalformedEvidence)):
        verify_sim_tdx(tampered, tdx_chip.sim_tdx_root(state), now())


@pytest.mark.parametrize("item", ["tcb_info", "qe_identity", "tcb_signing_chain", "root_ca_crl", "pck_crl"])
def test_missing_collateral_is_named(state: Path, bundle: EvidenceBundle, item: str) -> None:
    certs = tuple((k, v) for k, v in bundle.certs if k != item)
    with pytest.raises(MalformedEvidence, match=item):
        verify_sim_tdx(EvidenceBundle("sim-tdx", bundle.report, certs), tdx_chip.sim_tdx_root(state), now())


def test_bundle_round_trips_with_platform_sim_tdx(bundle: EvidenceBundle) -> None:
    assert EvidenceBundle.from_cbor(bundle.to_cbor()) == bundle


def test_attester_labels_sim_tdx(state: Path) -> None:
    sock = serve_in_thread(state, MEASUREMENT, flavour="tdx")
    with sock:
        got = SimAttester(sock, "sim-tdx").evidence(REPORT_DATA)
    assert got.platform == "sim-tdx"
    claims = verify_sim_tdx(got, tdx_chip.sim_tdx_root(state), now()).claims
    assert claims.report_data == REPORT_DATA and claims.measurement == MEASUREMENT


@contextlib.contextmanager
def _keep(state: Path, in_thread: bool) -> Iterator[tuple[socket.socket, bytes]]:
    psp = (lambda m: serve_in_thread(state, m, flavour="tdx")) if in_thread else None
    handle = start_keep("sim-tdx", state, psp=psp)
    try:
        yield handle.conn, handle.measurement
    finally:
        handle.close()


def _keep_evidence(conn: socket.socket) -> tuple[EvidenceBundle, bytes, bytes]:
    """Say hello to a Keep, complete the TLS handshake and return the
    evidence bundle of its certificate, the nonce and its TLS key (SPKI)."""
    conn.settimeout(60)
    hello = send_hello(conn)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with ctx.wrap_socket(conn, server_hostname=None) as tls:
        cert_der = tls.getpeercert(binary_form=True)
    assert cert_der
    cert = x509.load_der_x509_certificate(cert_der)
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(EVIDENCE_OID)).value
    assert isinstance(ext, x509.UnrecognizedExtension)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return bundle_from_extension(ext.value), hello.nonce, spki


@pytest.mark.slow
@pytest.mark.parametrize("in_thread", [True, False], ids=["qe-thread", "qe-process"])
def test_keep_with_backend_sim_tdx_serves_verifying_evidence(state: Path, in_thread: bool) -> None:
    with _keep(state, in_thread) as (conn, measurement):
        got, nonce, spki = _keep_evidence(conn)
    assert got.platform == "sim-tdx"
    claims = verify_sim_tdx(got, tdx_chip.sim_tdx_root(state), now()).claims
    assert claims.report_data == report_data_for(nonce, spki)
    assert claims.measurement == measurement
    assert claims.platform == "sim-tdx" and not claims.hardware_protected
    with pytest.raises(RefusedByPolicy):
        policy_appraise(claims)


@pytest.mark.slow
def test_keep_manager_offers_sim_tdx(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from manager_support import running_server
    from stockade.client.remote import ManagerClient

    with (
        running_server(state_dir, tmp_path_factory) as server,
        ManagerClient(server.url, server.token) as client,
    ):
        keep = client.create("sim-tdx")
        assert keep["backend"] == "sim-tdx"
        try:
            got, nonce, spki = _keep_evidence(client.connect(keep["id"]))
        finally:
            client.kill(keep["id"])
        root = tdx_chip.sim_tdx_root(server.state)  # created by `host serve`
        claims = verify_sim_tdx(got, root, now()).claims
        assert claims.report_data == report_data_for(nonce, spki)
        assert claims.platform == "sim-tdx"
        other = tmp_path_factory.mktemp("other-tdx-chip")
        tdx_chip.ensure_tdx_chip(other)
        with pytest.raises(VerificationFailed):  # not this host's sim TDX root
            verify_sim_tdx(got, tdx_chip.sim_tdx_root(other), now())


def test_host_sim_root_tdx_prints_the_sim_tdx_root(stockade, state_dir: Path) -> None:
    out = stockade("host", "sim-root", "--tdx", "--fingerprint")
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().strip() == hashlib.sha256(tdx_chip.sim_tdx_root(state_dir)).hexdigest()
    pem = stockade("host", "sim-root", "--tdx")
    assert pem.returncode == 0
    assert x509.load_pem_x509_certificate(pem.stdout).public_bytes(
        serialization.Encoding.DER
    ) == tdx_chip.sim_tdx_root(state_dir)
    assert b"sim-tdx \xe2\x80\x94 NO HARDWARE PROTECTION" in pem.stderr
    refused = stockade("host", "sim-root", "--tdx", "--crl", str(state_dir / "crl.der"))
    assert refused.returncode == 2 and b"carries its CRLs" in refused.stderr


def test_unknown_sim_flavour_is_refused(state: Path) -> None:
    from stockade.evidence.sim.psp import signer_for
    from stockade.keep.zygote import SpawnError, _child_main

    with pytest.raises(ValueError, match="flavour"):
        signer_for("sgx", state, MEASUREMENT)
    with pytest.raises(SpawnError, match="flavour"):
        _child_main(
            "sim-psp", {"state": str(state), "measurement": MEASUREMENT.hex(), "flavour": "sgx"}, [1, 2]
        )
    with pytest.raises(SpawnError, match="backend"):
        _child_main("keep", {"backend": "tdx"}, [1, 2, 3])
    _child_main("keep", {"backend": "sim-tdx"}, [1, 2, 3])  # accepted (not run)
    _child_main("sim-psp", {"state": str(state), "measurement": MEASUREMENT.hex(), "flavour": "tdx"}, [1, 2])


def test_sim_qe_refuses_a_wrong_size_measurement(state: Path) -> None:
    with pytest.raises(ValueError, match="48 bytes"):
        tdx_chip.SimQe(tdx_chip.load_tdx_chip(state), bytes(32))
