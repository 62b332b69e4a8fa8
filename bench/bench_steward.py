"""Workload certificates issued per second by the steward's CA
(stockade.steward.profile.issue: CSR checks, build, P-384 signature,
self-check of the signature) with the CA key in a SoftHSM2 token vs in a
file, in the same run, alternating rounds.

Baseline, same run: the file key. The ratio is token over file
(certificates per second). SoftHSM2 is a software token: a hardware HSM
is usually slower per signature (and serialises them); this measures the
PKCS#11 path's own cost. The bench makes its own token directory and
token (softhsm2-util) and deletes them.

Through the HTTPS API (``--https``, on by default): certificates per
second that one sequential client gets from a running steward
(``stockade.steward.service``, TLS under the CA, in this process): a
challenge, sim evidence over the binding, the certify request, its
appraisal (evidence verification, policy), issuance, the log append with
its signed tree head, and the client's checks of the answer. File CA and
log key vs both in SoftHSM2, alternating rounds, same run; the ratio is
token over file.

The steward's log as it grows (``--log-sizes``): the time of one append
(entry durable, tree head signed: Ed25519 in a file, or ECDSA P-256 in
SoftHSM2 for a token steward) and the size of the inclusion proof of the
first entry (the longest path, ceil(log2 size) hashes), at several log
sizes.

Run: .venv/bin/python bench/bench_steward.py [--seconds 2] [--rounds 3] [--no-https] [--log-sizes 100,1000,10000] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
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


MEASUREMENT = bytes.fromhex("5a" * 48)


def _events() -> tuple[Any, ...]:
    from stockade.binding.eventlog import Event

    d = hashlib.sha256
    return (
        Event("runtime", "bench", d(b"runtime").digest()),
        Event("package", "bench 1.0", d(b"bench").digest()),
        Event("entry", "main.wasm", d(b"module").digest()),
        Event("config", "deploy", d(b"config").digest()),
    )


def _https_rate(url: str, ca: Any, psp: Any, seconds: float) -> dict[str, float]:
    from cryptography.hazmat.primitives.asymmetric import ec

    from stockade.binding.eventlog import replay
    from stockade.evidence.sim.channel import ReportRequest
    from stockade.steward.request import request_certificate
    from stockade.wire.evidence import EvidenceBundle

    events = _events()
    register = replay(events)

    def evidence(report_data: bytes) -> EvidenceBundle:
        r = psp.report(ReportRequest(report_data=report_data))
        return EvidenceBundle(platform="sim", report=r.report, certs=r.certs)

    n = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while True:
        key = ec.generate_private_key(ec.SECP256R1())
        request_certificate(url, ca=ca, key=key, register=register, events=events, evidence=evidence)
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    cpu = time.process_time() - cpu0
    return {"certs_per_s": n / elapsed, "cpu_ms_per_cert": cpu / n * 1e3, "certs": n}


def _https(base: Path, module: str, pin: str, seconds: float, rounds: int) -> dict[str, Any]:
    """Certificates/s through the HTTPS API: file CA + log key vs SoftHSM2."""
    from stockade.evidence.sim import chip as simchip
    from stockade.evidence.sim.psp import SimPsp
    from stockade.policy import loads_policy
    from stockade.steward import service
    from stockade.steward.appraise import StewardTrust
    from stockade.steward.ca import Pkcs11Options, create_ca

    chip_dir = base / "chip"
    simchip.ensure_chip(chip_dir)
    psp = SimPsp(simchip.load_chip(chip_dir), MEASUREMENT)
    policy = loads_policy(
        f'version = 1\nname = "bench"\nplatforms = ["sim"]\nmeasurements = ["{MEASUREMENT.hex()}"]\n',
        "<bench policy>",
    )
    trust = StewardTrust(policy=policy, sim_root=simchip.sim_root(chip_dir))
    rows: dict[str, list[dict[str, float]]] = {"file": [], "softhsm2": []}
    now = dt.datetime.now(dt.UTC)
    with (
        create_ca(base / "https-file", now=now) as file_ca,
        create_ca(base / "https-token", now=now, pkcs11=Pkcs11Options(module, "bench", pin)) as token_ca,
    ):
        opened = [
            (name, ca, service.open_log(ca, ca.state_dir, p, now))
            for name, ca, p in (("file", file_ca, None), ("softhsm2", token_ca, pin))
        ]
        try:
            with contextlib.ExitStack() as stack:
                urls = {}
                for name, ca, (tlog, cert, _) in opened:
                    steward = service.Steward(ca, tlog, cert, trust)
                    urls[name] = (stack.enter_context(service.serving(steward, rate=1e9, burst=10**6)), ca)
                    _https_rate(urls[name][0], ca.certificate, psp, 0.0)  # warm-up: one certificate
                for _ in range(rounds):
                    for name in ("file", "softhsm2"):
                        url, ca = urls[name]
                        rows[name].append(_https_rate(url, ca.certificate, psp, seconds))
        finally:
            for _, _, (_, _, close) in opened:
                close()
    med = {
        k: {m: statistics.median(r[m] for r in v) for m in ("certs_per_s", "cpu_ms_per_cert")}
        for k, v in rows.items()
    }
    return {
        "file": med["file"],
        "softhsm2": med["softhsm2"],
        "ratio_softhsm2_over_file": med["softhsm2"]["certs_per_s"] / med["file"]["certs_per_s"],
    }


def _log_growth(base: Path, module: str, pin: str, sizes: list[int], appends: int) -> list[dict[str, Any]]:
    """Append time and newest-entry inclusion proof size at each log size,
    with the log key in a file (Ed25519) and in SoftHSM2 (P-256)."""
    from stockade.steward.pkcs11 import Pkcs11TreeHeadSigner, generate_log_key
    from stockade.translog import RefusalDigestEntry, TransparencyLog

    def entry(i: int) -> RefusalDigestEntry:
        return RefusalDigestEntry(hashlib.sha256(i.to_bytes(8, "big")).digest())

    out = []
    ref = generate_log_key(module, "bench", pin)
    token_signer = Pkcs11TreeHeadSigner(ref, pin)
    try:
        for size in sizes:
            row: dict[str, Any] = {"size": size}
            for name, signer in (("file", None), ("softhsm2", token_signer)):
                with TransparencyLog.create(base / f"log-{name}-{size}", signer=signer) as tlog:
                    tlog.append([entry(i) for i in range(size)])
                    t0 = time.perf_counter()
                    for i in range(appends):
                        tlog.append([entry(size + i)])
                    row[f"append_ms_{name}"] = (time.perf_counter() - t0) / appends * 1e3
                    proof = tlog.inclusion_proof(0)  # the longest path: ceil(log2 size) hashes
                    row["inclusion_hashes"] = len(proof.path)
                    row["inclusion_bytes"] = len(proof.to_cbor())
            out.append(row)
    finally:
        token_signer.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="per round and key location")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-https", action="store_true", help="skip the HTTPS API rounds")
    ap.add_argument("--log-sizes", default="100,1000,10000", help="log sizes for the growth rows ('' skips)")
    ap.add_argument("--appends", type=int, default=20, help="appends timed per log size")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sizes = [int(x) for x in args.log_sizes.split(",") if x]

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
        https = None if args.no_https else _https(base, module, pin, args.seconds, args.rounds)
        growth = _log_growth(base, module, pin, sizes, args.appends) if sizes else []
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
        "https": https,
        "log_growth": growth,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"{'CA key':<10} {'certs/s (median)':>17} {'CPU ms/cert':>12}")
    for k in ("file", "softhsm2"):
        print(f"{k:<10} {med[k]['certs_per_s']:>17.0f} {med[k]['cpu_ms_per_cert']:>12.2f}")
    print(f"ratio softhsm2 / file: {doc['ratio_softhsm2_over_file']:.2f}x")
    if https is not None:
        print("\nthrough the HTTPS API (one sequential client, sim evidence, appraisal, log append)")
        print(f"{'CA+log key':<10} {'certs/s (median)':>17} {'CPU ms/cert':>12}")
        for k in ("file", "softhsm2"):
            print(f"{k:<10} {https[k]['certs_per_s']:>17.1f} {https[k]['cpu_ms_per_cert']:>12.2f}")
        print(f"ratio softhsm2 / file: {https['ratio_softhsm2_over_file']:.2f}x")
    if growth:
        print("\nthe log as it grows (one entry per append, durable, tree head signed)")
        print(
            f"{'size':>7} {'append ms file':>15} {'append ms token':>16} {'proof hashes':>13} {'proof bytes':>12}"
        )
        for r in growth:
            print(
                f"{r['size']:>7} {r['append_ms_file']:>15.2f} {r['append_ms_softhsm2']:>16.2f} "
                f"{r['inclusion_hashes']:>13} {r['inclusion_bytes']:>12}"
            )


if __name__ == "__main__":
    main()
