"""The deploying client's part of "Keeps get certificates" (issue 17;
docs/steward.md, "Keeps get certificates").

``run|deploy --steward URL --steward-ca FILE`` (or a package whose manifest
names ``[steward] url``, the CA still given by the deployer): the client
pins the steward CA, gets the steward log's key from the log certificate
the CA issued (:func:`stockade.steward.request.fetch_log_key`: the CA pins
it, the fetch only carries it), puts the URL and the CA certificate in the
release (inside the attested channel, so the host cannot swap them), and
checks what the Keep sends back (:func:`check_certificate`): the
certificate chains to the CA, names the package digest the client
verified, and sits in the steward's log under a tree head signed by that
log key.

Nothing here prints; errors are StockadeErrors with their exit codes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stockade.errors import ProtocolError, StewardUnavailable, UsageError

if TYPE_CHECKING:
    from cryptography import x509

    from stockade.package import Manifest
    from stockade.steward.request import VerifiedIssuance
    from stockade.translog import LogKey
    from stockade.wire.messages import ServiceCertificate, StewardRequest

#: Backends whose Keeps are VMs (the vm backend, and SNP/TDX guests): no
#: network path of their own to a steward (docs/limitations.md).
VM_BACKENDS = frozenset({"vm", "snp", "tdx"})
#: Largest steward CA certificate file read (PEM or DER).
MAX_CA_FILE = 64 * 1024


@dataclass(frozen=True)
class StewardChoice:
    """The steward a deploy asks for, from the command line or the
    manifest, with the CA the deployer pinned; before any network."""

    url: str
    ca: x509.Certificate
    #: Where the URL came from: "--steward" or "the package manifest".
    source: str

    def request(self) -> StewardRequest:
        """The release's steward request (URL and CA certificate, DER)."""
        from cryptography.hazmat.primitives import serialization

        from stockade.wire.messages import StewardRequest

        return StewardRequest(url=self.url, ca=self.ca.public_bytes(serialization.Encoding.DER))


@dataclass(frozen=True)
class StewardPlan:
    """A :class:`StewardChoice` with the steward log's key, fetched and
    checked under the pinned CA: everything needed to check the Keep's
    certificate."""

    choice: StewardChoice
    log_key: LogKey


def load_ca(path: Path) -> x509.Certificate:
    """The steward CA certificate of ``--steward-ca FILE`` (PEM or DER; the
    ``ca.pem`` of ``stockade steward init``); UsageError when it is not a
    CA certificate."""
    from cryptography import x509

    try:
        with path.open("rb") as f:
            data = f.read(MAX_CA_FILE + 1)
    except OSError as exc:
        raise UsageError(f"--steward-ca: cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_CA_FILE:
        raise UsageError(f"--steward-ca {path}: larger than {MAX_CA_FILE} bytes, not a CA certificate")
    try:
        ca = (
            x509.load_pem_x509_certificate(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_certificate(data)
        )
    except ValueError:
        raise UsageError(f"--steward-ca {path}: not a PEM or DER X.509 certificate") from None
    try:
        is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (x509.ExtensionNotFound, ValueError):
        is_ca = False
    if not is_ca:
        raise UsageError(f"--steward-ca {path}: not a CA certificate (basicConstraints CA:true)")
    return ca


def choose(url: str | None, ca_file: Path | None, manifest: Manifest, backend: str) -> StewardChoice | None:
    """The steward of this deploy: ``--steward URL`` (else the manifest's
    ``[steward] url``) with ``--steward-ca FILE``; None when neither names
    one. UsageError for a half-given pair, a bad URL or a VM backend."""
    from stockade.wire.messages import check_steward_url

    source = "--steward"
    if url is None and manifest.steward_url is not None:
        url, source = manifest.steward_url, "the package manifest"
    if url is None:
        if ca_file is not None:
            raise UsageError("--steward-ca without --steward: the package names no steward either")
        return None
    if ca_file is None:
        raise UsageError(
            f"steward {url} (from {source}): give its CA certificate with --steward-ca FILE "
            "(the deployer pins the CA; it is never fetched)"
        )
    try:
        check_steward_url(url, f"steward URL {url!r}")
    except ProtocolError as exc:
        raise UsageError(str(exc)) from None
    if backend in VM_BACKENDS:
        raise UsageError(
            f"--backend {backend}: a VM Keep has no network path to a steward, so it cannot get a "
            "service certificate; use a process Keep (sim, sim-snp, sim-tdx) (docs/limitations.md)"
        )
    return StewardChoice(url=url, ca=load_ca(ca_file), source=source)


def prepare_steward(choice: StewardChoice, timeout: float = 10.0) -> StewardPlan:
    """Fetch the steward log's key (its log certificate, checked under the
    pinned CA). StewardUnavailable (114) when the steward cannot be
    reached or its TLS certificate is not under the pinned CA; the
    library's ProtocolError (113), LogProofError (110) or
    MalformedLogData (111) for a wrong answer."""
    from stockade.steward.request import StewardUnreachable, fetch_log_key

    try:
        key = fetch_log_key(choice.url, ca=choice.ca, timeout=timeout)
    except StewardUnreachable as exc:
        raise StewardUnavailable(f"the steward's log key could not be fetched: {exc}") from None
    return StewardPlan(choice=choice, log_key=key)


def check_certificate(
    msg: ServiceCertificate, plan: StewardPlan, package_digest: bytes, now: dt.datetime | None = None
) -> VerifiedIssuance:
    """Check the Keep's service certificate message
    (:func:`stockade.steward.request.verify_issued`): chains to the pinned
    CA, valid now, names ``package_digest`` (the one the workload identity
    proved), in the log under a tree head signed by the pinned log key.
    WorkloadCertificateInvalid or LogProofError (110), MalformedLogData (111)."""
    from stockade.steward.request import Issued, verify_issued

    issued = Issued(
        certificate=msg.certificate,
        chain=msg.chain,
        log_index=msg.log_index,
        tree_head=msg.tree_head,
        inclusion=msg.inclusion,
    )
    return verify_issued(
        issued,
        ca=plan.choice.ca,
        log_key=plan.log_key,
        expected_digest=package_digest,
        now=now or dt.datetime.now(dt.UTC),
    )


def summary_line(verified: VerifiedIssuance) -> str:
    """The one stderr line about the Keep's certificate."""
    identity = verified.identity
    return (
        f"stockade: service certificate serial {identity.serial:x} for {identity.uri}, "
        f"valid until {identity.not_after:%Y-%m-%dT%H:%M:%SZ}; steward log index {verified.log_index} "
        f"of {verified.tree_size} (inclusion proof verified)"
    )
