"""A steward on loopback for tests and benchmarks: the real app, the real
uvicorn server with TLS under the steward CA, in a thread of this process
(so a test can reach the :class:`Steward` object), stopped on exit."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from stockade.binding.eventlog import Event, replay
from stockade.evidence.sim.channel import ReportRequest
from stockade.evidence.sim.psp import SimPsp
from stockade.policy import Policy, loads_policy
from stockade.steward import service
from stockade.steward.appraise import StewardTrust
from stockade.steward.ca import CertificateAuthority
from stockade.wire.evidence import EvidenceBundle

MEASUREMENT = bytes.fromhex("5a" * 48)
DIGEST = hashlib.sha256(b"the package").digest()
SIGNER = bytes(range(32))  # a raw Ed25519 public key (only its id is measured)


def policy_toml(
    *,
    platforms: tuple[str, ...] = ("sim",),
    measurement: bytes = MEASUREMENT,
    digests: tuple[bytes, ...] = (DIGEST,),
    signers: tuple[bytes, ...] = (SIGNER,),
    min_signatures: int = 1,
) -> str:
    lines = [
        "version = 1",
        'name = "steward test"',
        "platforms = [" + ", ".join(f'"{p}"' for p in platforms) + "]",
        f'measurements = ["{measurement.hex()}"]',
        "[workload]",
        "digests = [" + ", ".join(f'"{d.hex()}"' for d in digests) + "]",
    ]
    if signers:
        lines.append("signers = [" + ", ".join(f'"{s.hex()}"' for s in signers) + "]")
        lines.append(f"min_signatures = {min_signatures}")
    return "\n".join(lines) + "\n"


def policy(**kwargs: Any) -> Policy:
    return loads_policy(policy_toml(**kwargs), "<steward test policy>")


def events(digest: bytes = DIGEST, signer: bytes = SIGNER) -> tuple[Event, ...]:
    """A workload event log as a Keep measures it."""
    return (
        Event("runtime", "stockade-keep test", hashlib.sha256(b"runtime").digest()),
        Event("package", "test 1.0", digest),
        Event("signer", "author", hashlib.sha256(signer).digest()),
        Event("entry", "main.wasm", hashlib.sha256(b"module").digest()),
        Event("config", "deploy", hashlib.sha256(b"config").digest()),
    )


def sim_evidence(psp: SimPsp) -> Callable[[bytes], EvidenceBundle]:
    """The Keep's attester: evidence from the sim PSP over the report data."""

    def evidence(report_data: bytes) -> EvidenceBundle:
        response = psp.report(ReportRequest(report_data=report_data))
        return EvidenceBundle(platform="sim", report=response.report, certs=response.certs)

    return evidence


@dataclass
class Running:
    url: str
    steward: service.Steward
    ca: x509.Certificate


@contextlib.contextmanager
def run_steward(
    ca: CertificateAuthority,
    state_dir: Path,
    trust: StewardTrust,
    *,
    pin: str | None = None,
    rate: float = 6000.0,
    burst: int = 1000,
    max_request: int = 256 * 1024,
    log_level: str = "warning",
) -> Iterator[Running]:
    """A steward serving ``ca`` (state in ``state_dir``) on 127.0.0.1:<free port>."""
    tlog, log_cert, close_log = service.open_log(ca, state_dir, pin, dt.datetime.now(dt.UTC))
    try:
        steward = service.Steward(ca, tlog, log_cert, trust)
        with service.serving(
            steward, rate=rate, burst=burst, max_request=max_request, log_level=log_level
        ) as url:
            yield Running(url, steward, ca.certificate)
    finally:
        close_log()


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def register_of(evs: tuple[Event, ...]) -> bytes:
    return replay(evs)
