"""`stockade run` / `deploy --host` with the sim-tdx backend, and TDX/SGX
evidence in the client's deploy path (issue 14, items 3-5).

sim-tdx gives NO hardware protection: its quotes are TDX v4 quotes signed
under a generated fake Intel PKI, verified by the Intel DCAP verifier with
this installation's sim TDX root.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stockade.binding.reportdata import report_data_for
from stockade.client.attest import TrustConfig, appraise, verify_bundle_report
from stockade.client.collateral import intel_cache_dir, intel_source
from stockade.errors import CollateralUnavailable, VerificationFailed
from stockade.evidence.sim import tdx_chip
from stockade.keep.identity import certificate
from stockade.policy import development_policy
from stockade.wire.evidence import EvidenceBundle
from stockade.wire.messages import Identity

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"
MEASUREMENT = hashlib.sha384(b"a sim-tdx Keep").digest()
LABEL = "sim-tdx \N{EM DASH} NO HARDWARE PROTECTION (simulated TDX, for development only)"


@pytest.fixture(scope="module")
def tdx_state(state_dir: Path) -> Path:
    """The session state directory, with its sim TDX chip."""
    tdx_chip.ensure_tdx_chip(state_dir)
    return state_dir


@pytest.fixture(scope="module")
def other_chip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("other-sim-tdx")
    tdx_chip.ensure_tdx_chip(path)
    return path


def _now() -> datetime:
    return datetime.now(UTC)


# --- stockade run --backend sim-tdx ------------------------------------------------------


@pytest.mark.slow
def test_run_hello_prints_a_tdx_shaped_summary(stockade, tdx_state: Path) -> None:
    proc = stockade("run", "--backend", "sim-tdx", "--allow-sim", str(HELLO), "Bob")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"Hello, Bob!\narguments: 1\n"
    err = proc.stderr.decode()
    root_fp = hashlib.sha256(tdx_chip.sim_tdx_root(tdx_state)).hexdigest()
    assert f"  platform     {LABEL}\n" in err
    assert "(MRTD)" in err
    assert "  tcb          UpToDate (FMSPC 00806f050000" in err
    assert f"  signer       PCK -> sim TDX root {root_fp[:16]}…" in err
    assert "  revocation   checked: not revoked (root CA and PCK CRLs carried by the evidence)" in err
    assert "  freshness    report binds this session's nonce and the Keep's TLS key" in err
    assert "development (--allow-sim)" in err


@pytest.mark.slow
def test_run_json_reports_the_tdx_shape(stockade, tdx_state: Path) -> None:
    proc = stockade("run", "--backend", "sim-tdx", "--allow-sim", "--json", str(HELLO), "Bob")
    assert proc.returncode == 0, proc.stderr.decode()
    doc = json.loads(proc.stdout)
    assert doc["stdout"] == "Hello, Bob!\narguments: 1\n"
    att = doc["attestation"]
    assert att["platform"] == "sim-tdx"
    assert att["hardware_protection"] is False
    assert att["tcb_status"] == "UpToDate"
    assert att["registers"]["mrtd"] == att["measurement"]
    assert att["revocation"]["checked"] is True
    assert att["revocation"]["source"] == "root CA and PCK CRLs carried by the evidence"
    assert att["root_sha256"] == hashlib.sha256(tdx_chip.sim_tdx_root(tdx_state)).hexdigest()
    # The identity step ran on the same platform, PPID, FMSPC and MRTD.
    assert "same platform, root, chip and launch measurement as the first report" in doc["workload"]["checks"]
    assert doc["policy"]["platform"] == "sim-tdx"


@pytest.mark.slow
def test_quiet_run_still_labels_sim_tdx(stockade, tdx_state: Path) -> None:
    proc = stockade("run", "--backend", "sim-tdx", "--allow-sim", "-q", str(HELLO), "Bob")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b"stockade: sim-tdx Keep: NO HARDWARE PROTECTION\n"


@pytest.mark.slow
def test_default_policy_refuses_sim_tdx(stockade, tdx_state: Path) -> None:
    proc = stockade("run", "--backend", "sim-tdx", str(HELLO), "Bob")
    assert proc.returncode == 112, proc.stderr.decode()
    assert proc.stdout == b""
    err = proc.stderr.decode()
    assert "refused sim-tdx evidence" in err
    assert 'add "sim-tdx" to `platforms`' in err and "--allow-sim" in err


def test_a_policy_without_sim_tdx_and_allow_sim_is_a_usage_error(stockade, tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text('version = 1\nname = "snp-sim"\nplatforms = ["sim"]\n')
    proc = stockade("run", "--backend", "sim-tdx", "--allow-sim", "--policy", str(policy), str(HELLO))
    assert proc.returncode == 2, proc.stderr.decode()
    assert "does not list sim-tdx in platforms" in proc.stderr.decode()


# --- the client's verification of a sim-tdx Keep certificate ------------------------------


def _keep_cert(chip_state: Path, nonce: bytes) -> bytes:
    """A Keep certificate whose evidence is a sim-tdx quote of the chip in
    ``chip_state``, bound to ``nonce`` and the certificate's key (what a
    fake Keep on a host with another sim TDX chip presents)."""
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    qe = tdx_chip.SimQe(tdx_chip.load_tdx_chip(chip_state), MEASUREMENT)
    quote = qe.quote(report_data_for(nonce, spki))
    bundle = EvidenceBundle(platform="sim-tdx", report=quote, certs=qe.collateral)
    return certificate(key, bundle).public_bytes(serialization.Encoding.DER)


def test_appraise_accepts_a_sim_tdx_keep_of_the_trusted_chip(tdx_state: Path) -> None:
    nonce = b"n" * 32
    trust = TrustConfig(sim_tdx_root=tdx_chip.sim_tdx_root(tdx_state), policy=development_policy(MEASUREMENT))
    appraisal = appraise(_keep_cert(tdx_state, nonce), nonce, trust)
    assert appraisal.claims.platform == "sim-tdx" and appraisal.claims.measurement == MEASUREMENT
    assert appraisal.revocation.checked


def test_development_policy_pins_mrtd(tdx_state: Path) -> None:
    from stockade.policy.model import RefusedByPolicy

    nonce = b"n" * 32
    trust = TrustConfig(
        sim_tdx_root=tdx_chip.sim_tdx_root(tdx_state),
        policy=development_policy(hashlib.sha384(b"another Keep").digest()),
    )
    with pytest.raises(RefusedByPolicy) as err:
        appraise(_keep_cert(tdx_state, nonce), nonce, trust)
    assert err.value.exit_code == 112


def test_a_quote_from_another_sim_tdx_chip_fails(tdx_state: Path, other_chip: Path) -> None:
    nonce = b"n" * 32
    trust = TrustConfig(sim_tdx_root=tdx_chip.sim_tdx_root(tdx_state), policy=development_policy(MEASUREMENT))
    with pytest.raises(VerificationFailed) as err:
        appraise(_keep_cert(other_chip, nonce), nonce, trust)
    assert err.value.exit_code == 110


def test_sim_tdx_without_its_root_fails(tdx_state: Path) -> None:
    nonce = b"n" * 32
    with pytest.raises(VerificationFailed, match="sim TDX root"):
        appraise(_keep_cert(tdx_state, nonce), nonce, TrustConfig(policy=development_policy(MEASUREMENT)))


def test_sim_tdx_evidence_bound_to_another_nonce_fails(tdx_state: Path) -> None:
    trust = TrustConfig(sim_tdx_root=tdx_chip.sim_tdx_root(tdx_state), policy=development_policy(MEASUREMENT))
    with pytest.raises(VerificationFailed, match="report data does not bind"):
        appraise(_keep_cert(tdx_state, b"a" * 32), b"b" * 32, trust)


# --- TDX evidence without collateral says what is missing ---------------------------------


def _tdx_bundle(tdx_state: Path) -> EvidenceBundle:
    """A TDX quote presented as real TDX evidence, its collateral stripped
    (the Keep of a TDX host: the client must bring the collateral)."""
    qe = tdx_chip.SimQe(tdx_chip.load_tdx_chip(tdx_state), MEASUREMENT)
    return EvidenceBundle(platform="tdx", report=qe.quote(b"\0" * 64), certs=())


def test_tdx_deploy_without_any_collateral_source_names_it(tdx_state: Path) -> None:
    with pytest.raises(CollateralUnavailable, match=r"TDX quote \(TCB info, QE identity") as err:
        verify_bundle_report(_tdx_bundle(tdx_state), TrustConfig(), _now())
    assert err.value.exit_code == 114
    assert "--collateral DIR" in err.value.detail


def test_tdx_deploy_offline_with_an_empty_cache_names_what_is_missing(
    tdx_state: Path, tmp_path: Path
) -> None:
    trust = TrustConfig(intel=intel_source(None, tmp_path, offline=True))
    with pytest.raises(CollateralUnavailable) as err:
        verify_bundle_report(_tdx_bundle(tdx_state), trust, _now())
    detail = err.value.detail
    assert "TDX quote (FMSPC 00806F050000, PCK " in detail
    assert "tcb_info.json is not cached and fetching is off" in detail
    assert str(intel_cache_dir(tmp_path)) in detail
    assert "`stockade collateral fetch`" in detail and "--offline" in detail


def test_tdx_deploy_with_an_incomplete_collateral_dir_names_the_file(tdx_state: Path, tmp_path: Path) -> None:
    qe = tdx_chip.SimQe(tdx_chip.load_tdx_chip(tdx_state), MEASUREMENT)
    items = dict(qe.collateral)
    (tmp_path / "tcb_info.json").write_bytes(items["tcb_info"])
    (tmp_path / "tcb_signing_chain.pem").write_bytes(items["tcb_signing_chain"])
    trust = TrustConfig(intel=intel_source(tmp_path, tmp_path / "state", offline=False))
    with pytest.raises(CollateralUnavailable, match=r"has no qe_identity\.json") as err:
        verify_bundle_report(_tdx_bundle(tdx_state), trust, _now())
    assert "tcb_signing_chain.pem" in err.value.detail


def test_tdx_evidence_verifies_with_collateral_from_a_dir(tdx_state: Path, tmp_path: Path) -> None:
    """The client's TDX path goes through the Intel verifier with the
    collateral of --collateral DIR; here under the sim root, which the real
    TDX verifier (rightly) does not trust: the quote is not Intel-signed."""
    from stockade.evidence.intel.collateral import FILES

    qe = tdx_chip.SimQe(tdx_chip.load_tdx_chip(tdx_state), MEASUREMENT)
    for name, data in qe.collateral:
        if name in FILES:
            (tmp_path / FILES[name]).write_bytes(data)
    trust = TrustConfig(intel=intel_source(tmp_path, tmp_path / "state", offline=True))
    with pytest.raises(VerificationFailed):
        verify_bundle_report(_tdx_bundle(tdx_state), trust, _now())


# --- deploy --host --backend sim-tdx -------------------------------------------------------


@pytest.mark.slow
def test_deploy_sim_tdx_through_a_live_manager(
    tdx_state: Path, other_chip: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    from manager_support import deploy, running_server

    with running_server(tdx_state, tmp_path_factory) as server:
        root = tmp_path / "sim-tdx-root.der"
        root.write_bytes(tdx_chip.sim_tdx_root(server.state))
        proc = deploy(
            server, "--backend", "sim-tdx", "--sim-root", str(root), "--allow-sim", "--json", str(HELLO), "x"
        )
        assert proc.returncode == 0, proc.stderr.decode()
        doc = json.loads(proc.stdout)
        assert doc["stdout"] == "Hello, x!\narguments: 1\n"
        assert doc["attestation"]["platform"] == "sim-tdx"
        assert doc["attestation"]["hardware_protection"] is False

        # The human summary is TDX-shaped too.
        proc = deploy(server, "--backend", "sim-tdx", "--sim-root", str(root), "--allow-sim", str(HELLO))
        assert proc.returncode == 0, proc.stderr.decode()
        assert f"  platform     {LABEL}" in proc.stderr.decode()

        # Another chip's root: the host's Keep does not verify.
        wrong = tmp_path / "other-root.der"
        wrong.write_bytes(tdx_chip.sim_tdx_root(other_chip))
        proc = deploy(server, "--backend", "sim-tdx", "--sim-root", str(wrong), "--allow-sim", str(HELLO))
        assert proc.returncode == 110, proc.stderr.decode()
        assert proc.stdout == b""


def test_deploy_sim_tdx_without_a_root_is_refused(tdx_state: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    token = tmp_path / "token"
    token.write_text("t\n")
    # Refused before any request: the host is never contacted.
    proc = subprocess.run(
        [sys.executable, "-m", "stockade", "deploy", "--host", "http://127.0.0.1:9", "--token-file", str(token),
         "--backend", "sim-tdx", "--allow-sim", str(HELLO)],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr.decode()
    assert "stockade host sim-root --tdx" in proc.stderr.decode()


# --- the identity step on sim-tdx ----------------------------------------------------------


def _identity(chip_state: Path, measurement: bytes, nonce: bytes, spki: bytes) -> tuple[Identity, tuple]:
    from stockade.binding import eventlog
    from stockade.binding.eventlog import Event
    from stockade.binding.reportdata import identity_report_data

    events = (
        Event("runtime", "stockade", b"\1" * 32),
        Event("package", "hello", b"\2" * 32),
        Event("entry", "hello.wasm", b"\3" * 32),
        Event("config", "config", b"\4" * 32),
    )
    qe = tdx_chip.SimQe(tdx_chip.load_tdx_chip(chip_state), measurement)
    quote = qe.quote(identity_report_data(nonce, spki, eventlog.replay(events)))
    bundle = EvidenceBundle(platform="sim-tdx", report=quote, certs=qe.collateral)
    return Identity(evidence=bundle.to_cbor(), events=events), events


@pytest.mark.parametrize(
    ("chip", "measurement", "error"),
    [
        ("same", MEASUREMENT, None),
        ("same", hashlib.sha384(b"another launch").digest(), "launch measurement differs"),
        ("other", MEASUREMENT, "PCK chain does not end in the trusted"),
    ],
    ids=["same-chip-and-mrtd", "other-mrtd", "other-chip"],
)
def test_identity_on_sim_tdx(
    tdx_state: Path, other_chip: Path, chip: str, measurement: bytes, error: str | None
) -> None:
    from stockade.client.identity import appraise_identity
    from stockade.wire.messages import Expect

    nonce = b"n" * 32
    trust = TrustConfig(
        sim_tdx_root=tdx_chip.sim_tdx_root(tdx_state),
        policy=development_policy(MEASUREMENT),
    )
    first = appraise(_keep_cert(tdx_state, nonce), nonce, trust)
    load_nonce = b"l" * 32
    message, events = _identity(
        tdx_state if chip == "same" else other_chip, measurement, load_nonce, first.tls_spki
    )
    run = lambda: appraise_identity(  # noqa: E731
        message, first, load_nonce, events[1].digest, events[-1].digest, Expect(), trust
    )
    if error is None:
        got = run()
        assert got.claims.platform == "sim-tdx"
        assert got.claims.chip_id == first.claims.chip_id and got.claims.fmspc == first.claims.fmspc
        assert "same platform, root, chip and launch measurement as the first report" in got.checks
    else:
        with pytest.raises(VerificationFailed, match=error):
            run()
