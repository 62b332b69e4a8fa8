"""Workload certificates issued per second by the steward's CA
(stockade.steward.profile.issue: CSR checks, build, P-384 signature,
self-check of the signature) with the CA key in a SoftHSM2 token vs in a
file, in the same run, alternating rounds.

Baseline, same run: the file key. The ratio is token over file
(certificates per second). SoftHSM2 is a software token: a hardware HSM
is usually slower per signature (and serialises them); this measures the
PKCS#11 path's own cost. The bench makes its own token directory and
token (softhsm2-util) and deletes them.

Run: .venv/bin/python bench/bench_steward.py [--seconds 2] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")


def _token(base: Path) -> tuple[str, str]:
    """(module, PIN) of a fresh SoftHSM2 token labelled 'bench'; sets SOFTHSM2_CONF."""
    module = next((m for m in MODULES if Path(m).is_file()), None)
    if module is None or shutil.which("softhsm2-util") is None:
        sys.exit("bench_steward: softhsm2 is not installed (apt-get install softhsm2)")
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pin = secrets.token_hex(8)
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "bench", "--so-pin", pin, "--pin", pin],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return module, pin


def _rate(ca: Any, csrs: list[Any], claims: Any, seconds: float) -> dict[str, float]:
    from stockade.steward.profile import issue

    now = ca.certificate.not_valid_before_utc
    n = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while True:
        issue(ca, csrs[n % len(csrs)], claims, not_before=now)
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    cpu = time.process_time() - cpu0
    return {"certs_per_s": n / elapsed, "cpu_ms_per_cert": cpu / n * 1e3, "certs": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="per round and key location")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    with tempfile.TemporaryDirectory(prefix="bench-steward-") as tmp:
        base = Path(tmp)
        module, pin = _token(base)
        from stockade.steward.ca import Pkcs11Options, create_ca
        from stockade.steward.profile import VerifiedWorkloadClaims

        claims = VerifiedWorkloadClaims(hashlib.sha256(b"bench").digest(), "sim", b"\x00" * 48, ())
        csrs = [
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
            for _ in range(16)
        ]
        now = dt.datetime.now(dt.UTC)
        rows: dict[str, list[dict[str, float]]] = {"file": [], "softhsm2": []}
        with (
            create_ca(base / "file", now=now) as file_ca,
            create_ca(base / "token", now=now, pkcs11=Pkcs11Options(module, "bench", pin)) as token_ca,
        ):
            for _ in range(args.rounds):
                rows["file"].append(_rate(file_ca, csrs, claims, args.seconds))
                rows["softhsm2"].append(_rate(token_ca, csrs, claims, args.seconds))
    med = {
        k: {m: statistics.median(r[m] for r in v) for m in ("certs_per_s", "cpu_ms_per_cert")}
        for k, v in rows.items()
    }
    doc = {
        "file": med["file"],
        "softhsm2": med["softhsm2"],
        "ratio_softhsm2_over_file": med["softhsm2"]["certs_per_s"] / med["file"]["certs_per_s"],
        "rounds": args.rounds,
        "seconds_per_round": args.seconds,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"{'CA key':<10} {'certs/s (median)':>17} {'CPU ms/cert':>12}")
    for k in ("file", "softhsm2"):
        print(f"{k:<10} {med[k]['certs_per_s']:>17.0f} {med[k]['cpu_ms_per_cert']:>12.2f}")
    print(f"ratio softhsm2 / file: {doc['ratio_softhsm2_over_file']:.2f}x")


if __name__ == "__main__":
    main()
