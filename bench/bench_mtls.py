"""TLS handshake cost of attested mutual TLS between two Keeps vs plain
TLS 1.3, between two Python processes over loopback, in the same run,
alternating rounds.

* attested: as the Keep runtime does it (keep/netsock.py): pyOpenSSL, TLS
  1.3 only, each side presents its steward workload certificate (P-256
  key), asks for the peer's (OpenSSL checks the CertificateVerify
  signature; its own chain verdict is not used) and checks the peer's
  certificate with stockade.steward.verify.verify_workload_certificate
  after the handshake; no session cache, no tickets;
* attested_store: the same, plus the steward CA in OpenSSL's verify store
  on both sides, so OpenSSL checks the chain too (as `stockade connect`
  does); with the CA in the store and only the leaf configured, OpenSSL
  also builds its own chain at every handshake, and building verifies it;
* plain (the baseline): the same library and server key and certificate,
  the client checks the chain against the CA in OpenSSL as an ordinary TLS
  client does; no client certificate, no workload check.

What one connection is: TCP connect, the TLS 1.3 handshake (full, no
resumption), the workload checks, then one byte from the server, which it
sends only after its own check, so the client's wall time covers both
sides' work. The ratio is attested over plain (median wall ms per
connection). A whole Keep adds its socket plumbing on both sides, the
same for either kind of TLS.

Run: .venv/bin/python bench/bench_mtls.py [--connections 200] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import multiprocessing as mp
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODES = ("plain", "attested", "attested_store")


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
            Path(files[f"{name}_key"]).write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
    return files


def _verify_peer(tls: Any, ca: Any) -> None:
    from stockade.steward.verify import verify_workload_certificate

    cert = tls.get_peer_certificate()
    if cert is None:
        raise RuntimeError("no peer certificate")
    verify_workload_certificate([cert.to_cryptography()], ca, dt.datetime.now(dt.UTC))


def _context(mode: str, side: str, files: dict[str, str]) -> Any:
    """A pyOpenSSL context like keep/netsock.py's (module docstring)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from OpenSSL import SSL

    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_options(SSL.OP_NO_TICKET)
    if side == "server" or mode != "plain":
        cert = x509.load_pem_x509_certificate(Path(files[f"{side}_cert"]).read_bytes())
        key = serialization.load_pem_private_key(Path(files[f"{side}_key"]).read_bytes(), None)
        ctx.use_certificate(cert)
        ctx.use_privatekey(key)
    if mode == "plain":
        if side == "client":
            ctx.load_verify_locations(files["ca"])
            ctx.set_verify(SSL.VERIFY_PEER)
    elif mode == "attested":
        flags = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if side == "server" else 0)
        ctx.set_verify(flags, lambda *_: True)
    else:  # attested_store
        ctx.load_verify_locations(files["ca"])
        flags = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if side == "server" else 0)
        ctx.set_verify(flags)
    return ctx


def _server(mode: str, files: dict[str, str], ready: Any, stop: Any, report: Any) -> None:
    from cryptography import x509
    from OpenSSL import SSL

    ca = x509.load_pem_x509_certificate(Path(files["ca"]).read_bytes())
    ctx = _context(mode, "server", files)
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
            raw.settimeout(None)  # pyOpenSSL needs a blocking socket (a timeout makes it non-blocking)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = SSL.Connection(ctx, raw)
            tls.set_accept_state()
            try:
                tls.do_handshake()
                if mode != "plain":
                    _verify_peer(tls, ca)
                tls.sendall(b"k")
                tls.shutdown()
            except (OSError, SSL.Error):
                continue
            finally:
                raw.close()
                cpu += time.process_time() - c0
            served += 1
        report.put((served, cpu))


def _round(mode: str, port: int, files: dict[str, str], n: int) -> list[float]:
    from cryptography import x509
    from OpenSSL import SSL

    ca = x509.load_pem_x509_certificate(Path(files["ca"]).read_bytes())
    ctx = _context(mode, "client", files)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        raw.settimeout(None)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = SSL.Connection(ctx, raw)
        tls.set_connect_state()
        try:
            tls.do_handshake()
            if mode != "plain":
                _verify_peer(tls, ca)
            if tls.recv(1) != b"k":
                raise RuntimeError(f"{mode}: the server closed without its byte (refused?)")
        finally:
            raw.close()
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
