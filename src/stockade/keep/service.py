"""The Keep's service identity: the key pair the Keep generated for its
workload's network services and the certificate the steward issued for it
(issue 17; docs/steward.md).

Made inside the Keep after the client verified the workload identity and
released it (stockade.keep.session), from the steward's answer; used by
the Keep runtime's attested TLS for the workload's sockets. The private
key never leaves the Keep's memory: not on disk, not in a message, not in
a log line.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec


@dataclass(frozen=True)
class ServiceIdentity:
    """``key``: the Keep's service key (born in this Keep); ``certificate``:
    the workload certificate the steward issued for ``key`` (its SAN names
    the workload, stockade.steward.profile); ``ca``: the steward CA the
    client pinned in its release (peers are checked against it)."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    ca: x509.Certificate

    def __repr__(self) -> str:  # never the key, even in a debugger
        return f"ServiceIdentity(certificate=<serial {self.certificate.serial_number}>, ca={self.ca.subject.rfc4514_string()!r})"
