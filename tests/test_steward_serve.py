"""`stockade steward serve`: the steward's HTTPS API, its appraisal and its
log, end to end on loopback (tests/steward_support.py starts the real app
under uvicorn with TLS under the steward CA).

The Keep's side is the real request library (stockade.steward.request)
with sim evidence made in-test by the sim PSP over the report data the
library computes; the client's side is verify_issued. Every refusal is
checked for its rule and for its refusal-digest entry in the log, with an
inclusion proof that verifies under the log key the CA certifies.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import http.client
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hsm_support import Hsm
from steward_support import (
    DIGEST,
    MEASUREMENT,
    SIGNER,
    Running,
    events,
    new_key,
    policy,
    policy_toml,
    register_of,
    run_steward,
    sim_evidence,
)
from stockade.binding.reportdata import identity_report_data, report_data_for, steward_report_data
from stockade.cli import main
from stockade.errors import (
    CertificateRequestRefused,
    LogProofError,
    ProtocolError,
    WorkloadCertificateInvalid,
)
from stockade.evidence.sim import chip as simchip
from stockade.evidence.sim.psp import SimPsp
from stockade.steward import api
from stockade.steward.appraise import StewardTrust
from stockade.steward.ca import create_ca, open_ca
from stockade.steward.request import (
    Connection,
    Issued,
    StewardUnreachable,
    challenge,
    fetch_log_key,
    make_csr,
    request_certificate,
    spki_of,
    verify_issued,
)
from stockade.translog import (
    InclusionProof,
    LogKey,
    RefusalDigestEntry,
    TransparencyLog,
    encode_entry,
    verify_inclusion,
)
from stockade.translog.treehead import load_signer

OTHER = hashlib.sha256(b"another package").digest()


@pytest.fixture(scope="module")
def psp(state_dir: Path) -> SimPsp:
    return SimPsp(simchip.load_chip(state_dir), MEASUREMENT)


@pytest.fixture(scope="module")
def trust(state_dir: Path) -> StewardTrust:
    return StewardTrust(policy=policy(), sim_root=simchip.sim_root(state_dir))


@pytest.fixture(scope="module")
def steward(tmp_path_factory: pytest.TempPathFactory, trust: StewardTrust) -> Iterator[Running]:
    sdir = tmp_path_factory.mktemp("steward") / "state"
    with create_ca(sdir, "serve test CA") as ca, run_steward(ca, sdir, trust) as running:
        yield running


@pytest.fixture(scope="module")
def log_key(steward: Running) -> LogKey:
    return fetch_log_key(steward.url, ca=steward.ca)


def _request(running: Running, psp: SimPsp, evs: Any = None, **kw: Any) -> Issued:
    evs = events() if evs is None else evs
    return request_certificate(
        running.url,
        ca=running.ca,
        key=kw.pop("key", new_key()),
        register=register_of(evs),
        events=evs,
        evidence=sim_evidence(psp),
        **kw,
    )


def _check_refusal_logged(problem: dict[Any, Any], body: bytes | None, key: LogKey) -> None:
    """The refusal's digest is an entry of the log, proven by the answer."""
    digest = problem["refusal-digest"]
    if body is not None:
        assert digest == hashlib.sha256(body).digest()
    head = problem["tree-head"]
    from stockade.translog.treehead import parse_signed_tree_head

    size = parse_signed_tree_head(head)[0].size
    proof = InclusionProof(problem["log-index"], size, tuple(problem["inclusion"]))
    verify_inclusion(encode_entry(RefusalDigestEntry(digest)), proof, head, [key])


def _refused(running: Running, psp: SimPsp, key: LogKey, rule: str, evs: Any = None) -> dict[Any, Any]:
    with pytest.raises(CertificateRequestRefused) as info:
        _request(running, psp, evs)
    problem = info.value.problem  # type: ignore[attr-defined]
    assert rule in problem["refusal"]["rule"], problem["refusal"]
    _check_refusal_logged(problem, None, key)
    return problem


def _post(running: Running, path: str, body: bytes, media: str = api.CBOR) -> tuple[int, str, bytes]:
    with Connection(running.url, running.ca) as conn:
        conn._conn.request("POST", path, body=body, headers={"Content-Type": media})
        r = conn._conn.getresponse()
        return r.status, (r.getheader("Content-Type") or ""), r.read()


def _raw_certify(running: Running, psp: SimPsp, *, csr_key: Any = None, nonce: bytes | None = None) -> bytes:
    """A certify request body made by hand: evidence bound to one key, the
    CSR of ``csr_key`` (default: the same key), the nonce of a fresh
    challenge (or ``nonce``)."""
    key = new_key()
    evs = events()
    if nonce is None:
        with Connection(running.url, running.ca) as conn:
            nonce = challenge(conn)
    bundle = sim_evidence(psp)(steward_report_data(nonce, spki_of(key), register_of(evs)))
    return api.CertifyRequest(nonce, bundle.to_cbor(), evs, make_csr(csr_key or key)).to_cbor()


# --------------------------------------------------------------------------- binding


def test_steward_report_data_is_domain_separated() -> None:
    nonce, spki, register = secrets.token_bytes(32), b"spki", bytes(32)
    value = steward_report_data(nonce, spki, register)
    assert len(value) == 64
    assert value not in (identity_report_data(nonce, spki, register), report_data_for(nonce, spki))
    with pytest.raises(ValueError, match="nonce"):
        steward_report_data(b"short", spki, register)
    with pytest.raises(ValueError, match="register"):
        steward_report_data(nonce, spki, b"short")


# --------------------------------------------------------------------------- issuance


def test_certificate_issued_verified_and_logged(steward: Running, psp: SimPsp, log_key: LogKey) -> None:
    key = new_key()
    issued = _request(steward, psp, key=key)
    cert = x509.load_der_x509_certificate(issued.certificate)
    cert.verify_directly_issued_by(steward.ca)
    assert cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == spki_of(key)
    verified = verify_issued(
        issued, ca=steward.ca, log_key=log_key, expected_digest=DIGEST, now=dt.datetime.now(dt.UTC)
    )
    assert verified.identity.package_digest == DIGEST
    assert verified.identity.platform == "sim"
    assert verified.identity.measurement == MEASUREMENT
    assert verified.identity.signer_keys == (SIGNER,)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(hours=1)
    assert verified.inclusion_json()["index"] == issued.log_index
    # The client refuses a certificate for another package, and a proof
    # under another log key.
    with pytest.raises(WorkloadCertificateInvalid, match="names package"):
        verify_issued(
            issued, ca=steward.ca, log_key=log_key, expected_digest=OTHER, now=dt.datetime.now(dt.UTC)
        )
    other_key = LogKey.from_der(load_signer(_ed25519_pem()).public_key_der())
    with pytest.raises(LogProofError):
        verify_issued(
            issued, ca=steward.ca, log_key=other_key, expected_digest=DIGEST, now=dt.datetime.now(dt.UTC)
        )
    tampered = dataclasses.replace(issued, inclusion=(bytes(32), *issued.inclusion[1:]))
    if issued.inclusion:
        with pytest.raises(LogProofError):
            verify_issued(
                tampered, ca=steward.ca, log_key=log_key, expected_digest=DIGEST, now=dt.datetime.now(dt.UTC)
            )


def _ed25519_pem() -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_token_ca_issues_over_https(hsm: Hsm, tmp_path: Path, trust: StewardTrust, psp: SimPsp) -> None:
    sdir = tmp_path / "state"
    with (
        create_ca(sdir, "token serve CA", pkcs11=hsm.options("serve")) as ca,
        run_steward(ca, sdir, trust, pin=hsm.pin) as running,
    ):
        issued = _request(running, psp)
        key = fetch_log_key(running.url, ca=running.ca)
    assert key.algorithm == "ecdsa-p256-sha256"  # the log key is in the token too
    assert (sdir / "log-key.json").is_file() and not (sdir / "log" / "log.key").exists()
    x509.load_der_x509_certificate(issued.certificate).verify_directly_issued_by(running.ca)
    verify_issued(issued, ca=running.ca, log_key=key, expected_digest=DIGEST, now=dt.datetime.now(dt.UTC))
    for path in sdir.rglob("*"):
        if path.is_file():
            assert hsm.pin.encode() not in path.read_bytes(), path


# --------------------------------------------------------------------------- refusals


def test_wrong_measurement_is_refused(steward: Running, state_dir: Path, log_key: LogKey) -> None:
    other = SimPsp(simchip.load_chip(state_dir), bytes.fromhex("6b" * 48))
    problem = _refused(steward, other, log_key, "measurements")
    assert "6b6b" in problem["refusal"]["actual"]


def test_wrong_package_digest_is_refused(steward: Running, psp: SimPsp, log_key: LogKey) -> None:
    problem = _refused(steward, psp, log_key, "workload.digests", events(digest=OTHER))
    assert OTHER.hex() in problem["refusal"]["actual"]


def test_wrong_signer_is_refused(steward: Running, psp: SimPsp, log_key: LogKey) -> None:
    _refused(steward, psp, log_key, "workload.min_signatures", events(signer=bytes(32)))


def test_sim_under_a_production_policy_is_refused(
    steward: Running, psp: SimPsp, log_key: LogKey, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    production = StewardTrust(policy=policy(platforms=("snp", "tdx")), sim_root=simchip.sim_root(state_dir))
    monkeypatch.setattr(steward.steward, "trust", production)
    problem = _refused(steward, psp, log_key, "platforms")
    assert "sim" in problem["refusal"]["actual"]


def test_sim_without_its_root_is_refused(
    steward: Running, psp: SimPsp, log_key: LogKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(steward.steward, "trust", StewardTrust(policy=policy()))
    _refused(steward, psp, log_key, "evidence")


def test_csr_key_not_bound_to_the_evidence_is_refused(steward: Running, psp: SimPsp, log_key: LogKey) -> None:
    body = _raw_certify(steward, psp, csr_key=new_key())
    status, media, data = _post(steward, api.CERTIFY, body)
    assert (status, media) == (403, api.PROBLEM)
    problem = api.parse_problem(data)
    assert problem["refusal"]["rule"] == "binding"
    _check_refusal_logged(problem, body, log_key)


def test_replayed_nonce_is_refused(steward: Running, psp: SimPsp, log_key: LogKey) -> None:
    body = _raw_certify(steward, psp)
    assert _post(steward, api.CERTIFY, body)[0] == 200
    status, _, data = _post(steward, api.CERTIFY, body)
    assert status == 403
    problem = api.parse_problem(data)
    assert problem["refusal"]["rule"] == "nonce" and "already used" in problem["refusal"]["actual"]
    _check_refusal_logged(problem, body, log_key)


def test_unknown_nonce_is_refused(steward: Running, psp: SimPsp, log_key: LogKey) -> None:
    body = _raw_certify(steward, psp, nonce=secrets.token_bytes(32))
    status, _, data = _post(steward, api.CERTIFY, body)
    problem = api.parse_problem(data)
    assert status == 403 and problem["refusal"]["rule"] == "nonce"
    _check_refusal_logged(problem, body, log_key)


def test_expired_nonce_is_refused(
    steward: Running, psp: SimPsp, log_key: LogKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = _raw_certify(steward, psp)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=61)
    monkeypatch.setattr(steward.steward, "clock", lambda: later)
    status, _, data = _post(steward, api.CERTIFY, body)
    problem = api.parse_problem(data)
    assert status == 403 and problem["refusal"] == {
        "rule": "nonce",
        "expected": "used within 60 s of its challenge",
        "actual": "expired",
    }
    _check_refusal_logged(problem, body, log_key)


def test_oversize_and_malformed_requests_are_refused_unlogged(steward: Running) -> None:
    size = steward.steward.log.size
    status, media, data = _post(steward, api.CERTIFY, b"\xa0" * (api.MAX_REQUEST + 1))
    assert (status, media) == (413, api.PROBLEM)
    assert "at most" in api.parse_problem(data)[api.PD_DETAIL]
    assert _post(steward, api.CERTIFY, b"\xa0", "application/json")[0] == 415
    status, _, data = _post(steward, api.CERTIFY, api.dumps({"nonce": b""}))
    assert status == 400 and "keys" in api.parse_problem(data)[api.PD_DETAIL]
    assert steward.steward.log.size == size


def test_a_certificate_the_ca_cannot_sign_is_neither_answered_nor_logged(
    steward: Running, psp: SimPsp, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = steward.steward.log.size
    monkeypatch.setattr(steward.steward, "lifetime", dt.timedelta(hours=25))  # beyond the profile
    with pytest.raises(ProtocolError, match="HTTP 500: certificate lifetime"):
        _request(steward, psp)
    assert steward.steward.log.size == size


def test_challenges_are_single_use_and_bounded(steward: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    from stockade.steward.appraise import Challenges

    monkeypatch.setattr(steward.steward, "challenges", Challenges(60_000, max_outstanding=2))
    with Connection(steward.url, steward.ca) as conn:
        a, b = challenge(conn), challenge(conn)
        assert a != b and len(a) == 32
        with pytest.raises(StewardUnreachable, match=r"busy.*outstanding"):
            challenge(conn)


def test_rate_limit(tmp_path: Path, trust: StewardTrust, psp: SimPsp) -> None:
    sdir = tmp_path / "state"
    with create_ca(sdir, "rate CA") as ca, run_steward(ca, sdir, trust, rate=1.0, burst=2) as running:
        with Connection(running.url, running.ca) as conn:
            challenge(conn)
            challenge(conn)
            status, _, data = conn.call("POST", api.CHALLENGE, api.dumps({}))
        assert status == 429 and "per minute" in api.parse_problem(data)[api.PD_DETAIL]
        with pytest.raises(StewardUnreachable, match="429"):
            _request(running, psp)


def test_tls_is_pinned_to_the_ca(steward: Running, tmp_path: Path, psp: SimPsp) -> None:
    with (
        create_ca(tmp_path / "other", "another CA") as other,
        pytest.raises(StewardUnreachable, match="does not verify under the pinned steward CA"),
    ):
        request_certificate(
            steward.url,
            ca=other.certificate,
            key=new_key(),
            register=register_of(events()),
            events=events(),
            evidence=sim_evidence(psp),
        )


# --------------------------------------------------------------------------- the log


def test_log_holds_every_issuance_and_refusal(steward: Running, psp: SimPsp, log_key: LogKey) -> None:
    before = steward.steward.log.size
    _request(steward, psp)
    with pytest.raises(CertificateRequestRefused):
        _request(steward, psp, events(digest=OTHER))
    tlog = steward.steward.log
    assert tlog.size == before + 2
    from stockade.translog import decode_entry

    kinds = [decode_entry(tlog.entry(i)).KIND for i in (before, before + 1)]
    assert kinds == ["certificate", "refusal-digest"]


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_log_verify_steward_detects_a_rewritten_entry(
    tmp_path: Path, trust: StewardTrust, psp: SimPsp
) -> None:
    sdir = tmp_path / "state"
    saved = tmp_path / "head.cbor"
    ca_pem = sdir / "ca.pem"
    with create_ca(sdir, "audit CA") as ca:
        with run_steward(ca, sdir, trust) as running:
            _request(running, psp)
            with pytest.raises(CertificateRequestRefused):
                _request(running, psp, events(digest=OTHER))
            result = _cli(
                "log",
                "verify",
                "--steward",
                running.url,
                "--steward-ca",
                str(ca_pem),
                "--save-tree-head",
                str(saved),
            )
            assert result.exit_code == 0, result.output
            assert "2 entries (1 certificates, 1 refusals)" in result.output
            _request(running, psp)
            result = _cli(
                "log",
                "verify",
                "--steward",
                running.url,
                "--steward-ca",
                str(ca_pem),
                "--tree-head",
                str(saved),
            )
            assert result.exit_code == 0, result.output
            assert "extends the tree head of size 2" in result.output
        # The log operator rewrites entry 1 (the refusal) and re-signs
        # every tree head with the log key: a self-consistent log.
        log_dir = sdir / "log"
        with TransparencyLog.open(log_dir, writable=False) as old:
            entries = [old.entry(i) for i in range(old.size)]
        entries[1] = encode_entry(RefusalDigestEntry(hashlib.sha256(b"something else").digest()))
        signer = load_signer((log_dir / "log.key").read_bytes())
        forged = tmp_path / "forged"
        with TransparencyLog.create(forged, signer=signer) as new:
            for e in entries:
                new.append([e])
        (forged / "log.key").write_bytes((log_dir / "log.key").read_bytes())
        os.chmod(forged / "log.key", 0o600)
        os.rename(log_dir, tmp_path / "genuine")
        os.rename(forged, log_dir)
        with run_steward(ca, sdir, trust) as running:
            fresh = _cli("log", "verify", "--steward", running.url, "--steward-ca", str(ca_pem))
            assert fresh.exit_code == 0, fresh.output  # alone, a re-signed log looks fine
            result = _cli(
                "log",
                "verify",
                "--steward",
                running.url,
                "--steward-ca",
                str(ca_pem),
                "--tree-head",
                str(saved),
            )
    assert result.exit_code == 110, result.output
    assert "an entry was rewritten" in result.output
    # Or the operator drops the last entries and re-signs the shorter log
    # (the CA reopened from its state directory).
    shorter = tmp_path / "shorter"
    with TransparencyLog.create(shorter, signer=signer) as new:
        new.append([entries[0]])
    (shorter / "log.key").write_bytes((log_dir / "log.key").read_bytes())
    os.chmod(shorter / "log.key", 0o600)
    os.rename(log_dir, tmp_path / "forged-before")
    os.rename(shorter, log_dir)
    with open_ca(sdir) as ca, run_steward(ca, sdir, trust) as running:
        result = _cli(
            "log", "verify", "--steward", running.url, "--steward-ca", str(ca_pem), "--tree-head", str(saved)
        )
    assert result.exit_code == 110, result.output
    assert "entries were dropped" in result.output


# --------------------------------------------------------------------------- the command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_command_keeps_the_pin_out_of_argv_logs_and_files(
    hsm: Hsm, tmp_path: Path, state_dir: Path, psp: SimPsp
) -> None:
    sdir = tmp_path / "state"
    with create_ca(sdir, "cli serve CA", pkcs11=hsm.options("serve-cli")):
        pass
    pin_file = tmp_path / "pin"
    pin_file.write_text(hsm.pin + "\n")
    pin_file.chmod(0o600)
    pol = tmp_path / "policy.toml"
    pol.write_text(policy_toml())
    root = tmp_path / "sim-root.der"
    root.write_bytes(simchip.sim_root(state_dir))
    port = _free_port()
    env = {**os.environ, "SOFTHSM2_CONF": str(hsm.conf)}
    env.pop("STOCKADE_PKCS11_PIN", None)
    argv = [
        sys.executable, "-m", "stockade", "steward", "serve", "--state-dir", str(sdir),
        "--listen", f"127.0.0.1:{port}", "--policy", str(pol), "--pin-file", str(pin_file),
        "--sim-root", str(root),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ca = x509.load_pem_x509_certificate((sdir / "ca.pem").read_bytes())
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                key = fetch_log_key(url, ca=ca, timeout=2)
                break
            except StewardUnreachable:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the steward did not start"
                time.sleep(0.2)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
        issued = request_certificate(
            url,
            ca=ca,
            key=new_key(),
            register=register_of(events()),
            events=events(),
            evidence=sim_evidence(psp),
        )
        verify_issued(issued, ca=ca, log_key=key, expected_digest=DIGEST, now=dt.datetime.now(dt.UTC))
        with pytest.raises(CertificateRequestRefused):
            request_certificate(
                url,
                ca=ca,
                key=new_key(),
                register=register_of(events(digest=OTHER)),
                events=events(digest=OTHER),
                evidence=sim_evidence(psp),
            )
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    pin = hsm.pin.encode()
    assert pin not in cmdline and pin not in environ
    assert pin not in out and pin not in err
    assert b"issued serial" in err and b"refused (" in err  # the log lines are there, without the PIN
    for path in sdir.rglob("*"):
        if path.is_file():
            assert pin not in path.read_bytes(), path


def test_serve_needs_a_policy_or_allow_sim(tmp_path: Path) -> None:
    with create_ca(tmp_path / "state", "usage CA"):
        pass
    result = CliRunner().invoke(main, ["steward", "serve", "--state-dir", str(tmp_path / "state")])
    assert result.exit_code == 2 and "--policy FILE" in result.output


def test_http_client_sees_problem_details_for_unknown_paths(steward: Running) -> None:
    with Connection(steward.url, steward.ca) as conn:
        status, media, data = conn.call("GET", "/v1/nothing")
    assert status == 404 and media == api.PROBLEM
    assert api.parse_problem(data)[api.PD_TYPE] == "http"
    assert http.client.responses[status] == "Not Found"


# --------------------------------------------------------------------------- docs/steward-api.cddl

DOCS = Path(__file__).resolve().parent.parent / "docs"
API_CDDL = (DOCS / "steward-api.cddl").read_text() + "\n" + (DOCS / "protocol.cddl").read_text()


@functools.cache
def _schema(rule: str) -> Any:
    import pycddl

    return pycddl.Schema(f"root = {rule}\n{API_CDDL}")


def _valid(rule: str, data: bytes) -> bool:
    import pycddl

    try:
        _schema(rule).validate_cbor(data)
    except pycddl.ValidationError:
        return False
    except BaseException as exc:  # pycddl panics on some mismatches (tests/test_translog_cddl.py)
        if type(exc).__name__ != "PanicException":
            raise
        return False
    return True


def test_api_answers_match_the_cddl(steward: Running, psp: SimPsp, state_dir: Path) -> None:
    """Every kind of answer, from the running steward, against docs/steward-api.cddl."""
    with Connection(steward.url, steward.ca) as conn:
        assert _valid("challenge-request", api.dumps({}))
        assert _valid("challenge-response", conn.expect("POST", api.CHALLENGE, api.dumps({})))
        good = _raw_certify(steward, psp)
        assert _valid("certify-request", good)
        ok = _post(steward, api.CERTIFY, good)
        assert ok[0] == 200 and _valid("certify-response", ok[2])
        refused = _post(steward, api.CERTIFY, good)  # the nonce is used up
        assert refused[0] == 403 and _valid("certify-refusal", refused[2])
        other = SimPsp(simchip.load_chip(state_dir), bytes.fromhex("6b" * 48))
        policy_refusal = _post(steward, api.CERTIFY, _raw_certify(steward, other))
        assert "rows" in api.parse_problem(policy_refusal[2])["refusal"]
        assert policy_refusal[0] == 403 and _valid("certify-refusal", policy_refusal[2])
        assert _valid("ca-response", conn.expect("GET", api.CA))
        assert _valid("head-response", conn.expect("GET", api.LOG_HEAD))
        assert _valid("entries-response", conn.expect("GET", f"{api.LOG_ENTRIES}?start=0&count=3"))
        assert _valid("inclusion-response", conn.expect("GET", f"{api.LOG_INCLUSION}?index=0"))
        assert _valid("consistency-response", conn.expect("GET", f"{api.LOG_CONSISTENCY}?old=1"))
        for status, path in ((404, f"{api.LOG_INCLUSION}?index=999999"), (400, f"{api.LOG_ENTRIES}?start=x")):
            code, media, data = conn.call("GET", path)
            assert (code, media) == (status, api.PROBLEM) and _valid("steward-problem", data), data
    for body, media in ((b"\xa0" * (api.MAX_REQUEST + 1), api.CBOR), (b"{}", "application/json")):
        code, _, data = _post(steward, api.CERTIFY, body, media)
        assert code in (413, 415) and _valid("steward-problem", data)
    # A mutated answer is refused by the schema.
    assert not _valid("certify-response", api.dumps({"certificate": b"x"}))
    assert not _valid("certify-refusal", ok[2])


# --------------------------------------------------------------------------- pieces


def test_challenges_expire_and_are_used_once() -> None:
    from stockade.steward.appraise import Challenges, Refused

    ch = Challenges(ttl_ms=1000, max_outstanding=2)
    a, expires = ch.issue(0)
    assert expires == 1000
    ch.take(a, 999)
    with pytest.raises(Refused, match="already used"):
        ch.take(a, 999)
    b, _ = ch.issue(0)
    with pytest.raises(Refused, match="expired"):
        ch.take(b, 1000)
    ch.issue(0), ch.issue(0)
    from stockade.steward.appraise import TooManyChallenges

    with pytest.raises(TooManyChallenges):
        ch.issue(10)
    ch.issue(1000)  # the expired ones make room
    with pytest.raises(Refused, match="32-byte"):
        ch.take(b"short", 0)


def test_rate_limit_refills_per_address() -> None:
    from stockade.steward.service import RateLimit

    now = [0.0]
    limit = RateLimit(60.0, 2, clock=lambda: now[0])
    assert limit.take("a") == 0 and limit.take("a") == 0
    assert limit.take("a") == pytest.approx(1.0)
    assert limit.take("b") == 0  # another address has its own bucket
    now[0] = 1.0
    assert limit.take("a") == 0


def test_server_certificate_names_the_host_and_is_renewed(tmp_path: Path, steward: Running) -> None:
    from stockade.steward.service import ServerTls

    with create_ca(tmp_path / "state", "tls CA") as ca:
        tls = ServerTls(ca, ("127.0.0.1", "steward.example"), lifetime=dt.timedelta(hours=1))
        first = tls.not_after
        tls.renew_if_due(dt.datetime.now(dt.UTC))
        assert tls.not_after == first  # not due
        tls.renew_if_due(first - dt.timedelta(minutes=10))
        assert tls.not_after > first
    # The running steward's certificate names 127.0.0.1 only: another name fails.
    port = steward.url.rsplit(":", 1)[1]
    with pytest.raises(StewardUnreachable, match="pinned steward CA"):
        fetch_log_key(f"https://localhost:{port}", ca=steward.ca)


def test_sim_tdx_evidence_is_certified_under_its_root(
    steward: Running, tmp_path: Path, log_key: LogKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one evidence core serves every platform: sim-tdx quotes (Intel
    DCAP verifier under the sim TDX root) are certified like sim reports."""
    from stockade.evidence.sim import tdx_chip
    from stockade.evidence.sim.channel import ReportRequest
    from stockade.wire.evidence import EvidenceBundle

    assert tdx_chip.ensure_tdx_chip(tmp_path)
    qe = tdx_chip.SimQe(tdx_chip.load_tdx_chip(tmp_path), MEASUREMENT)

    def evidence(report_data: bytes) -> EvidenceBundle:
        rsp = qe.report(ReportRequest(report_data=report_data))
        return EvidenceBundle(platform="sim-tdx", report=rsp.report, certs=rsp.certs)

    trust = StewardTrust(policy=policy(platforms=("sim-tdx",)), sim_tdx_root=tdx_chip.sim_tdx_root(tmp_path))
    monkeypatch.setattr(steward.steward, "trust", trust)
    evs = events()
    issued = request_certificate(
        steward.url, ca=steward.ca, key=new_key(), register=register_of(evs), events=evs, evidence=evidence
    )
    verified = verify_issued(
        issued, ca=steward.ca, log_key=log_key, expected_digest=DIGEST, now=dt.datetime.now(dt.UTC)
    )
    assert verified.identity.platform == "sim-tdx" and verified.identity.measurement == MEASUREMENT
    # Without the sim TDX root the same evidence does not verify.
    monkeypatch.setattr(steward.steward, "trust", dataclasses.replace(trust, sim_tdx_root=None))
    with pytest.raises(CertificateRequestRefused, match="evidence"):
        request_certificate(
            steward.url,
            ca=steward.ca,
            key=new_key(),
            register=register_of(evs),
            events=evs,
            evidence=evidence,
        )


def test_tdx_without_collateral_is_refused_by_name(steward: Running, log_key: LogKey) -> None:
    from stockade.wire.evidence import EvidenceBundle

    with Connection(steward.url, steward.ca) as conn:
        nonce = challenge(conn)
    bundle = EvidenceBundle(platform="tdx", report=b"\x04\x00" + bytes(100), certs=())
    body = api.CertifyRequest(nonce, bundle.to_cbor(), events(), make_csr(new_key())).to_cbor()
    status, _, data = _post(steward, api.CERTIFY, body)
    problem = api.parse_problem(data)
    assert status == 403 and problem["refusal"]["rule"] == "collateral"
    assert "--collateral DIR" in problem["refusal"]["actual"]
    _check_refusal_logged(problem, body, log_key)


def test_csr_refusals(steward: Running, psp: SimPsp, log_key: LogKey) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec as _ec

    for csr_key, bad, expect in (
        (_ec.generate_private_key(_ec.SECP521R1()), None, "secp521r1 is not allowed"),
        (None, b"\x30\x03garbage", "bytes that do not parse"),
    ):
        body = _raw_certify(steward, psp, csr_key=csr_key)
        if bad is not None:
            request = api.CertifyRequest.from_cbor(body)
            body = dataclasses.replace(request, csr=bad).to_cbor()
        status, _, data = _post(steward, api.CERTIFY, body)
        problem = api.parse_problem(data)
        assert status == 403 and problem["refusal"]["rule"] == "csr", problem
        assert expect in problem["refusal"]["actual"] + problem["refusal"]["expected"]
        _check_refusal_logged(problem, body, log_key)
