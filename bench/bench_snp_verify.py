"""SEV-SNP report verifications per second against the raw ECDSA floor.

Verifies one real report (tests/data/vectors/snp/milan-v3-oak: a Milan v3
report, its VCEK, AMD's ASK/ARK) through ``verify_report`` with the chain
already verified once (its RSA-PSS signatures are cached by DER bytes), and
in the same run the raw P-384 ECDSA verification of the same signature over
the same bytes with the same public key: the physical floor of a cached-chain
verification. The two alternate in short slices so that machine noise hits
both alike; the reported ratio is the median of the ratios of adjacent
slices (which cancels slow drift of the machine's speed). Rates are per second of
CPU time of this thread (time.thread_time), so that other processes on a
busy machine do not skew one side; wall-clock rates are printed too. Not a
pass/fail gate.

Run: .venv/bin/python bench/bench_snp_verify.py [--seconds 3] [--json] [--profile]
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
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from stockade.evidence.pki import der_of, load_der, load_pem_chain
from stockade.evidence.snp.abi import AttestationReport
from stockade.evidence.snp.verify import VerifiedReport, amd_anchors, verify_report

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "data" / "vectors" / "snp" / "milan-v3-oak"
#: Inside the validity window of every certificate of the sample.
AT = datetime(2025, 8, 1, tzinfo=UTC)
TARGET = 0.9


def _rate(fn: Callable[[], object], seconds: float) -> tuple[float, float]:
    """Calls of ``fn`` per CPU second and per wall second, over about
    ``seconds`` of wall time."""
    n = 0
    c0, t0 = time.thread_time(), time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(20):
            fn()
        n += 20
        now = time.perf_counter()
        if now >= deadline:
            return n / (time.thread_time() - c0), n / (now - t0)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="total measuring time (default 3)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of verify_report")
    args = parser.parse_args()

    report = (SAMPLE / "report.bin").read_bytes()
    vcek_der = (SAMPLE / "vcek.der").read_bytes()
    ask_der = der_of(load_pem_chain((SAMPLE / "ask_ark.pem").read_bytes(), "ask_ark.pem")[0])
    anchors = amd_anchors()

    def verify() -> VerifiedReport:
        return verify_report(report, vcek_der, ask_der, anchors, AT)

    parsed = AttestationReport.from_bytes(report)
    key = load_der(vcek_der, "VCEK").public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    signature = encode_dss_signature(parsed.sig_r, parsed.sig_s)
    signed = parsed.signed_bytes
    algorithm = ec.ECDSA(hashes.SHA384())

    def raw() -> None:
        key.verify(signature, signed, algorithm)

    claims = verify().claims
    assert claims.report_data == parsed.report_data
    raw()

    rounds = 15
    slice_s = max(args.seconds / (2 * rounds), 0.02)
    raw_rates: list[tuple[float, float]] = []
    verify_rates: list[tuple[float, float]] = []
    for _ in range(rounds):
        raw_rates.append(_rate(raw, slice_s))
        verify_rates.append(_rate(verify, slice_s))
    r = statistics.median(c for c, _ in raw_rates)
    v = statistics.median(c for c, _ in verify_rates)
    ratio = statistics.median(vc / rc for (rc, _), (vc, _) in zip(raw_rates, verify_rates, strict=True))
    r_wall = statistics.median(w for _, w in raw_rates)
    v_wall = statistics.median(w for _, w in verify_rates)
    result: dict[str, object] = {
        "sample": SAMPLE.name,
        "rounds": rounds,
        "clock": "thread CPU time",
        "raw_ecdsa_p384_verify_per_s": round(r),
        "verify_report_cached_chain_per_s": round(v),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET,
        "raw_ecdsa_us": round(1e6 / r, 1),
        "verify_report_us": round(1e6 / v, 1),
        "overhead_us": round(1e6 / v - 1e6 / r, 1),
        "wall_clock": {
            "raw_ecdsa_p384_verify_per_s": round(r_wall),
            "verify_report_cached_chain_per_s": round(v_wall),
            "ratio": round(v_wall / r_wall, 3),
        },
    }
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(2000):
            verify()
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
        result["profile"] = out.getvalue()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print("per second of CPU time (median of alternating slices):")
    print(f"  raw P-384 ECDSA verify (same sig/key) : {r:9.0f} /s  ({1e6 / r:7.1f} us)")
    print(f"  verify_report, chain cached           : {v:9.0f} /s  ({1e6 / v:7.1f} us)")
    print(
        f"  ratio (median of adjacent slices)     : {ratio:9.3f}x  "
        f"(target >= {TARGET}x: {'met' if ratio >= TARGET else 'NOT met'})"
    )
    print(f"  overhead over the raw verify          : {1e6 / v - 1e6 / r:9.1f} us")
    print(f"wall clock: raw {r_wall:.0f} /s, verify_report {v_wall:.0f} /s, ratio {v_wall / r_wall:.3f}x")
    if args.profile:
        print(result["profile"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
