"""TLS handshake cost of attested mutual TLS (steward workload
certificates on both sides, each side checking the other's with
stockade.steward.verify.verify_workload_certificate after the handshake,
as the Keep runtime and `stockade connect` do) vs plain TLS 1.3 (the same
P-256 server key and certificate, OpenSSL's chain check against the same
CA on the client, no client certificate, no workload check), between two
Python processes over loopback, in the same run, alternating rounds.

What one connection is: TCP connect, the TLS 1.3 handshake (full, no
resumption), the workload checks (attested only), then one byte from the
server, which it sends only after its own check, so the client's wall time
covers both sides' work. Baseline, same run: plain TLS. The ratio is
attested over plain (median wall ms per connection). A third line,
attested_chain, sends each side's chain as configured (see MODES).

The Keep runtime terminates TLS with Python's ssl module too, so this is
the handshake part of a Keep-to-Keep connection; a whole Keep adds its
socket plumbing (keep/netsock.py) on both sides, which is the same for
either kind of TLS.

Run: .venv/bin/python bench/bench_mtls.py [--connections 200] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import multiprocessing as mp
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: attested_chain: the same as attested, but each side's certificate file
#: holds its chain (leaf, then the CA certificate), so OpenSSL sends it as
#: is; with the leaf alone and the CA in the verify store, OpenSSL builds
#: (and so verifies: a P-384 signature) its own chain at every handshake.
MODES = ("plain", "attested", "attested_chain")


def _make_pki(base: Path) -> dict[str, str]:
    """A file-key steward CA and two workload certificates (P-256 keys)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from stockade.steward.ca import create_ca
    from stockade.steward.profile import VerifiedWorkloadClaims, issue

    now = dt.datetime.now(dt.UTC)
    files: dict[str, str] = {}
    with create_ca(base / "steward", now=now - dt.timedelta(days=1)) as ca:
        files["ca"] = str(base / "ca.pem")
        Path(files["ca"]).write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
        for name in ("server", "client"):
            key = ec.generate_private_key(ec.SECP256R1())
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .sign(key, hashes.SHA256())
            )
            claims = VerifiedWorkloadClaims(
                package_digest=hashlib.sha256(name.encode()).digest(),
                platform="sim",
                measurement=b"\x5a" * 48,
                signer_keys=(hashlib.sha256(b"signer").digest(),),
            )
            cert = issue(ca, csr, claims, not_before=now - dt.timedelta(minutes=1))
            files[f"{name}_cert"] = str(base / f"{name}.pem")
            files[f"{name}_key"] = str(base / f"{name}-key.pem")
            Path(files[f"{name}_cert"]).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            files[f"{name}_chain"] = str(base / f"{name}-chain.pem")
            Path(files[f"{name}_chain"]).write_bytes(
                cert.public_bytes(serialization.Encoding.PEM) + Path(files["ca"]).read_bytes()
            )
            Path(files[f"{name}_key"]).write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
    return files


def _verify_peer(tls: ssl.SSLSocket, ca: Any) -> None:
    from cryptography import x509

    from stockade.steward.verify import verify_workload_certificate

    der = tls.getpeercert(binary_form=True)
    if der is None:
        raise RuntimeError("no peer certificate")
    verify_workload_certificate([x509.load_der_x509_certificate(der)], ca, dt.datetime.now(dt.UTC))


def _server(mode: str, files: dict[str, str], ready: Any, stop: Any, report: Any) -> None:
    from cryptography import x509

    ca = x509.load_pem_x509_certificate(Path(files["ca"]).read_bytes())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(
        files["server_chain" if mode == "attested_chain" else "server_cert"], files["server_key"]
    )
    if mode != "plain":
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=files["ca"])
    ctx.num_tickets = 0  # no session tickets: every handshake is a full one
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.5)
        ready.put(listener.getsockname()[1])
        served, cpu = 0, 0.0
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            c0 = time.process_time()
            raw.settimeout(30)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                with ctx.wrap_socket(raw, server_side=True) as tls:
                    if mode != "plain":
                        _verify_peer(tls, ca)
                    tls.sendall(b"k")
            except (OSError, ssl.SSLError):
                continue
            finally:
                cpu += time.process_time() - c0
            served += 1
        report.put((served, cpu))


def _client_context(mode: str, files: dict[str, str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=files["ca"])
    if mode != "plain":
        ctx.load_cert_chain(
            files["client_chain" if mode == "attested_chain" else "client_cert"], files["client_key"]
        )
    return ctx


def _round(mode: str, port: int, files: dict[str, str], n: int) -> list[float]:
    from cryptography import x509

    ca = x509.load_pem_x509_certificate(Path(files["ca"]).read_bytes())
    ctx = _client_context(mode, files)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(raw, server_side=False) as tls:
            if mode != "plain":
                _verify_peer(tls, ca)
            if tls.recv(1) != b"k":
                raise RuntimeError(f"{mode}: the server closed without its byte (refused?)")
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=200, help="per round and mode")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-mtls-") as tmp:
        files = _make_pki(Path(tmp))
        mpctx = mp.get_context("spawn")
        stop = mpctx.Event()
        servers, ports, reports = [], {}, {}
        try:
            for mode in MODES:
                ready, reports[mode] = mpctx.Queue(), mpctx.Queue()
                proc = mpctx.Process(
                    target=_server, args=(mode, files, ready, stop, reports[mode]), daemon=True
                )
                proc.start()
                servers.append(proc)
                ports[mode] = ready.get(timeout=60)
            for mode in MODES:  # warm-up: imports, first handshakes
                _round(mode, ports[mode], files, 5)
            samples: dict[str, list[float]] = {m: [] for m in MODES}
            cpu: dict[str, float] = dict.fromkeys(MODES, 0.0)
            for r in range(args.rounds):
                for mode in MODES[r % len(MODES) :] + MODES[: r % len(MODES)]:
                    c0 = time.process_time()
                    samples[mode] += _round(mode, ports[mode], files, args.connections)
                    cpu[mode] += time.process_time() - c0
            stop.set()
            served = {mode: reports[mode].get(timeout=60) for mode in MODES}
        finally:
            stop.set()
            for proc in servers:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()

    result: dict[str, Any] = {"connections_per_mode": args.connections * args.rounds, "modes": {}}
    for mode in MODES:
        s = sorted(samples[mode])
        result["modes"][mode] = {
            "median_ms": statistics.median(s),
            "p90_ms": s[int(0.9 * (len(s) - 1))],
            "client_cpu_ms_per_connection": cpu[mode] / len(s) * 1e3,
            # The server's CPU includes the warm-up connections (5 per mode).
            "server_cpu_ms_per_connection": served[mode][1] / served[mode][0] * 1e3,
        }
    for mode in MODES[1:]:
        result[f"ratio_{mode}_over_plain"] = (
            result["modes"][mode]["median_ms"] / result["modes"]["plain"]["median_ms"]
        )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{result['connections_per_mode']} connections per mode, loopback, TLS 1.3, P-256 keys, no resumption"
    )
    for mode in MODES:
        m = result["modes"][mode]
        print(
            f"  {mode:14s} median {m['median_ms']:.2f} ms  p90 {m['p90_ms']:.2f} ms  "
            f"CPU per connection: client {m['client_cpu_ms_per_connection']:.2f} ms, "
            f"server {m['server_cpu_ms_per_connection']:.2f} ms"
        )
    for mode in MODES[1:]:
        print(f"  ratio {mode} / plain (median): {result[f'ratio_{mode}_over_plain']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
