"""Intel DCAP quote verifications per second against the raw ECDSA cost.

Verified: a real TDX quote (tests/data/vectors/tdx/v4-b0c06f-dcap-qvl, with
its real collateral) through ``verify_quote`` with the collateral cached
(its parsing and signatures are cached by exact bytes after the first
verification), and, with the fake Intel PKI, fresh quotes (a new body each,
signed by the same attestation key, as a platform's quotes are) and quotes
with a fresh attestation key each (so the QE report is new too).

Baselines, in the same run, on the same bytes and keys:

* ``raw_2``: the two P-256 ECDSA verifications every new quote needs (quote
  signature by the attestation key, QE report signature by the PCK key);
* ``raw_10``: those two plus the eight chain and collateral signatures an
  uncached verification needs (PCK by its CA, CA by the root, root
  self-signature, TCB Signing by the root, TCB info, QE identity, root CA
  CRL, PCK CRL).

Every measurement alternates in short slices so that machine noise hits all
alike; rates are per second of CPU time of this thread (time.thread_time),
medians over the slices; wall-clock rates are printed too. Not a pass/fail
gate.

Run: .venv/bin/python bench/bench_dcap.py [--seconds 6] [--json] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from stockade.evidence.intel import verify as intel_verify
from stockade.evidence.intel.abi import Quote
from stockade.evidence.intel.collateral import load_collateral_dir
from stockade.evidence.intel.tcbinfo import split_signed_body
from stockade.evidence.intel.verify import intel_root_der, verify_quote
from stockade.testing.intel import FakeIntelPki, default_td_body, resign

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "data" / "vectors" / "tdx" / "v4-b0c06f-dcap-qvl"
N_FRESH = 400


def _rate(fn: Callable[[], object], seconds: float) -> tuple[float, float]:
    n = 0
    c0, t0 = time.thread_time(), time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(10):
            fn()
        n += 10
        now = time.perf_counter()
        if now >= deadline:
            return n / max(time.thread_time() - c0, 1e-9), n / (now - t0)


def _raw(key: ec.EllipticCurvePublicKey, sig: bytes, data: bytes) -> Callable[[], None]:
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    algorithm = ec.ECDSA(hashes.SHA256())
    return lambda: key.verify(der, data, algorithm)


def _cert_check(child: x509.Certificate, issuer: x509.Certificate) -> Callable[[], None]:
    key = issuer.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    algorithm = ec.ECDSA(hashes.SHA256())
    return lambda: key.verify(child.signature, child.tbs_certificate_bytes, algorithm)


def _clear_caches() -> None:
    for name in (
        "_cert",
        "_tcb_info",
        "_qe_identity",
        "_tcb_signer_der",
        "_sgx_extension",
        "_chain_kind",
        "_p256_key",
        "_qe_report_signed",
        "_root_crl_verdict",
        "_pck_crl_verdict",
    ):
        getattr(intel_verify, name).cache_clear()
    from stockade.evidence import pki
    from stockade.evidence.intel import abi

    abi.parse_pem_chain.cache_clear()
    pki.cache_clear()  # certificates, CRLs, signatures, fingerprints


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="total measuring time (default 6)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of verify_quote")
    args = parser.parse_args()

    quote_bytes = (SAMPLE / "quote.bin").read_bytes()
    collateral = load_collateral_dir(SAMPLE / "collateral")
    at = datetime.fromisoformat("2025-06-20T00:00:00+00:00")
    quote = Quote.from_bytes(quote_bytes)
    leaf, ca, root = (x509.load_der_x509_certificate(d) for d in quote.pck_chain)
    pck_key = leaf.public_key()
    assert isinstance(pck_key, ec.EllipticCurvePublicKey)
    ak = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + quote.attestation_key)
    signer = x509.load_pem_x509_certificates(collateral.tcb_signing_chain)[0]
    signer_key = signer.public_key()
    assert isinstance(signer_key, ec.EllipticCurvePublicKey)
    tcb = split_signed_body(collateral.tcb_info, "tcbInfo", "TCB info")
    qe_id = split_signed_body(collateral.qe_identity, "enclaveIdentity", "QE identity")
    assert collateral.root_ca_crl is not None and collateral.pck_crl is not None
    root_crl = x509.load_der_x509_crl(collateral.root_ca_crl)
    pck_crl = x509.load_der_x509_crl(collateral.pck_crl)
    root_key = root.public_key()
    ca_key = ca.public_key()
    assert isinstance(root_key, ec.EllipticCurvePublicKey) and isinstance(ca_key, ec.EllipticCurvePublicKey)

    per_quote = [
        _raw(ak, quote.signature, quote.signed_bytes),
        _raw(pck_key, quote.qe_report_signature, quote.qe_report.raw),
    ]
    chain_and_collateral = [
        _cert_check(leaf, ca),
        _cert_check(ca, root),
        _cert_check(root, root),
        _cert_check(signer, root),
        _raw(signer_key, tcb.signature, tcb.signed_bytes),
        _raw(signer_key, qe_id.signature, qe_id.signed_bytes),
        lambda: root_crl.is_signature_valid(root_key),
        lambda: pck_crl.is_signature_valid(ca_key),
    ]

    def raw_2() -> None:
        for fn in per_quote:
            fn()

    def raw_10() -> None:
        for fn in per_quote + chain_and_collateral:
            fn()

    def cached() -> object:
        return verify_quote(quote_bytes, collateral, at)

    def cold() -> object:
        _clear_caches()
        return verify_quote(quote_bytes, collateral, at)

    # Fresh quotes from one fake platform: same AK and QE report, new bodies.
    pki = FakeIntelPki()
    pck = pki.pck()
    fake_collateral = pki.collateral("tdx", pck)
    ak_key = ec.generate_private_key(ec.SECP256R1())
    base = pki.quote_parts("tdx", pck, ak=ak_key)  # one QE report, signed once, as a QE does
    fresh = [
        resign(base.replace(body=default_td_body(report_data=i.to_bytes(64, "big"))), ak_key).to_bytes()
        for i in range(N_FRESH)
    ]
    fresh_ak = [pki.quote("tdx", pck, report_data=i.to_bytes(64, "big")) for i in range(N_FRESH)]
    counters = {"fresh": 0, "fresh_ak": 0}

    def fresh_quote() -> object:
        counters["fresh"] += 1
        return verify_quote(
            fresh[counters["fresh"] % N_FRESH], fake_collateral, pki.now, root_der=pki.root_der
        )

    def fresh_ak_quote() -> object:
        counters["fresh_ak"] += 1
        q = fresh_ak[counters["fresh_ak"] % N_FRESH]
        intel_verify._qe_report_signed.cache_clear()  # a new QE report each time
        return verify_quote(q, fake_collateral, pki.now, root_der=pki.root_der)

    assert cached().tcb_status.value == "UpToDate"  # type: ignore[attr-defined]
    assert intel_root_der() == quote.pck_chain[2]
    fresh_quote()
    fresh_ak_quote()

    cases: dict[str, Callable[[], object]] = {
        "raw_2_ecdsa": raw_2,
        "raw_10_ecdsa": raw_10,
        "verify_cached_collateral_same_quote": cached,
        "verify_cached_collateral_fresh_quotes": fresh_quote,
        "verify_cached_collateral_fresh_ak": fresh_ak_quote,
        "verify_cold_no_caches": cold,
    }
    rounds = 8
    slice_s = max(args.seconds / (len(cases) * rounds), 0.02)
    rates: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            rates[name].append(_rate(fn, slice_s))
    cpu = {k: statistics.median(c for c, _ in v) for k, v in rates.items()}
    wall = {k: statistics.median(w for _, w in v) for k, v in rates.items()}
    result: dict[str, object] = {
        "sample": f"tdx/{SAMPLE.name}",
        "rounds": rounds,
        "clock": "thread CPU time",
        "per_second": {k: round(v) for k, v in cpu.items()},
        "us_per_call": {k: round(1e6 / v, 1) for k, v in cpu.items()},
        "ratios": {
            "same_quote_vs_raw_2": round(cpu["verify_cached_collateral_same_quote"] / cpu["raw_2_ecdsa"], 3),
            "fresh_quotes_vs_raw_2": round(
                cpu["verify_cached_collateral_fresh_quotes"] / cpu["raw_2_ecdsa"], 3
            ),
            "fresh_ak_vs_raw_2": round(cpu["verify_cached_collateral_fresh_ak"] / cpu["raw_2_ecdsa"], 3),
            "cold_vs_raw_10": round(cpu["verify_cold_no_caches"] / cpu["raw_10_ecdsa"], 3),
        },
        "wall_clock_per_second": {k: round(v) for k, v in wall.items()},
    }
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(1000):
            fresh_quote()
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(20)
        result["profile"] = out.getvalue()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print("per second of CPU time (median of alternating slices):")
    for name, value in cpu.items():
        print(f"  {name:40s}: {value:9.0f} /s  ({1e6 / value:8.1f} us)")
    print("ratios:")
    for name, value in result["ratios"].items():  # type: ignore[attr-defined]
        print(f"  {name:40s}: {value:9.3f}x")
    print("wall clock /s: " + ", ".join(f"{k} {v:.0f}" for k, v in wall.items()))
    if args.profile:
        print(result["profile"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
