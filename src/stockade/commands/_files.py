"""Evidence files on disk -> verified claims; shared by ``stockade evidence``
and ``stockade policy``.

Detection is the registry's (evidence/registry.py ``sniff``): a 0x4A0-byte
file is an SEV-SNP ATTESTATION_REPORT; a file whose header is a DCAP quote
header is a TDX or SGX quote. SNP certificates come
from ``--certs DIR`` (``vcek.der`` or ``vlek.der``; ``ask_ark.pem`` or
``ask.der``, else the intermediate shipped in the package; ``*.crl``), Intel
collateral from ``--collateral DIR`` (PCS response bodies and DER CRLs, see
src/stockade/evidence/intel/README.md). Verification is offline, at an
explicit time, against the roots shipped in the package (plus, on request,
a sim root).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from stockade.errors import MalformedEvidence, UsageError
from stockade.evidence.claims import VerifiedClaims
from stockade.wire.platform import Platform

if TYPE_CHECKING:
    from stockade.evidence.registry import Evidence, Revocation


@dataclass(frozen=True)
class VerifiedFile:
    kind: str  # "sev-snp-report", "tdx-quote", "sgx-quote"
    claims: VerifiedClaims
    checks: list[str] = field(default_factory=list)
    revocation_checked: bool = False


def read_input(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None


def read_sim_root(path: Path, what: str = "--sim-root") -> bytes:
    """The DER of the sim root certificate in ``path`` (PEM or DER), as
    `stockade host sim-root` prints it; UsageError if it is not one."""
    from stockade.evidence.pki import der_of, load_der, load_pem_chain

    blob = read_input(path, "sim root")
    try:
        if blob.lstrip().startswith(b"-----"):
            certs = load_pem_chain(blob, f"{what} {path}")
            if len(certs) != 1:
                raise UsageError(f"{what} {path}: expected one certificate, found {len(certs)}")
            return der_of(certs[0])
        load_der(blob, f"{what} {path}")
    except MalformedEvidence as exc:
        raise UsageError(
            f"{exc.detail}; expected the sim root certificate (PEM or DER) that "
            "`stockade host sim-root` prints on the host"
        ) from None
    return blob


def parse_time(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at {text!r}: not an ISO 8601 time (example: 2025-08-01T00:00:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def verify_file(
    path: Path,
    at: datetime,
    *,
    certs: Path | None = None,
    collateral: Path | None = None,
    product: str | None = None,
    sim_root: Path | None = None,
    allow_trailing: bool = False,
    check_revocation: bool = True,
    revocation: Revocation | None = None,
) -> VerifiedFile:
    """Turn the files into evidence + collateral and verify them through the
    registry (evidence/registry.py), which detects the platform.

    ``revocation``: the mode for every platform; None keeps each platform's
    offline default (SNP: CRLs checked if given; TDX/SGX: required, or only
    if given when ``check_revocation`` is false)."""
    from stockade.evidence import registry

    data = read_input(path, "evidence")
    platform = registry.sniff(data)
    if platform is None:
        raise MalformedEvidence(
            f"{path} is neither an SEV-SNP report ({registry.SNP_REPORT_SIZE} bytes) nor a TDX/SGX quote "
            f"({len(data)} bytes)"
        )
    sim_der = read_sim_root(sim_root) if sim_root is not None else None
    trust = registry.Trust(sim_root=sim_der)
    if platform is Platform.SNP:
        evidence, crls = _snp_inputs(data, certs if certs is not None else path.parent, product, sim_der)
        bundle = registry.Collateral(crls=crls, revocation=revocation or registry.Revocation.IF_GIVEN)
    else:
        directory = collateral if collateral is not None else path.parent / "collateral"
        if not directory.is_dir():
            raise UsageError(f"no collateral directory {directory}: pass --collateral DIR")
        from stockade.evidence.intel.collateral import load_collateral_dir

        evidence = registry.Evidence(platform, data, allow_trailing=allow_trailing)
        default = registry.Revocation.REQUIRE if check_revocation else registry.Revocation.IF_GIVEN
        bundle = registry.Collateral(intel=load_collateral_dir(directory), revocation=revocation or default)
    verified = registry.verify(evidence, trust, at, bundle)
    return VerifiedFile(verified.kind, verified.claims, list(verified.checks), verified.revocation_checked)


def _snp_inputs(
    report: bytes, certs: Path, product: str | None, sim_root: bytes | None
) -> tuple[Evidence, tuple[bytes, ...]]:
    """The SNP report with its endorsement and intermediate certificates and
    the CRLs found in ``certs``. The evidence is sim evidence when a sim root
    is given and it issued the intermediate (the verifier picks the root by
    the intermediate's issuer in the same way)."""
    from stockade.evidence import registry
    from stockade.evidence.pki import der_of, load_der, load_pem_chain
    from stockade.evidence.snp.abi import AttestationReport, Product
    from stockade.evidence.snp.certs import read_extensions
    from stockade.evidence.snp.verify import bundled_intermediate

    endorsement = next(
        (
            read_input(certs / n, "endorsement certificate")
            for n in ("vcek.der", "vlek.der")
            if (certs / n).is_file()
        ),
        None,
    )
    if endorsement is None:
        raise UsageError(
            f"no endorsement certificate in {certs}: pass --certs DIR holding vcek.der or vlek.der"
        )
    hint = Product(product.capitalize()) if product else None
    if (certs / "ask_ark.pem").is_file():
        intermediate = der_of(load_pem_chain(read_input(certs / "ask_ark.pem", "chain"), "ask_ark.pem")[0])
    elif (certs / "ask.der").is_file():
        intermediate = read_input(certs / "ask.der", "intermediate certificate")
    else:  # the intermediate AMD publishes for this product and signer, shipped with stockade
        parsed = AttestationReport.from_bytes(report)
        cert_product = read_extensions(load_der(endorsement, "endorsement certificate")).product
        intermediate = bundled_intermediate(parsed.product(hint or cert_product), parsed.signing_key)
    crls = tuple(read_input(p, "CRL") for p in sorted(certs.glob("*.crl")))
    platform = Platform.SNP
    if sim_root is not None:
        issuer = load_der(intermediate, "intermediate certificate").issuer
        if issuer == load_der(sim_root, "sim root").subject:
            platform = Platform.SIM
    evidence = registry.Evidence(
        platform, report, (("vcek", endorsement), ("ask", intermediate)), product_hint=product
    )
    return evidence, crls
