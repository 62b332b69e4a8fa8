"""Evidence files on disk -> verified claims; shared by ``stockade evidence``
and ``stockade policy``.

Detection: a 0x4A0-byte file is an SEV-SNP ATTESTATION_REPORT; a file whose
header is a DCAP quote header is a TDX or SGX quote. SNP certificates come
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

from stockade.errors import MalformedEvidence, UsageError
from stockade.evidence.claims import VerifiedClaims

SNP_REPORT_SIZE = 0x4A0


@dataclass(frozen=True)
class VerifiedFile:
    kind: str  # "sev-snp-report", "tdx-quote", "sgx-quote"
    claims: VerifiedClaims
    checks: list[str] = field(default_factory=list)


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
) -> VerifiedFile:
    data = read_input(path, "evidence")
    if len(data) == SNP_REPORT_SIZE:
        return _verify_snp(data, certs if certs is not None else path.parent, at, product, sim_root)
    from stockade.evidence.intel import detect_quote

    tee = detect_quote(data)
    if tee is None:
        raise MalformedEvidence(
            f"{path} is neither an SEV-SNP report ({SNP_REPORT_SIZE} bytes) nor a TDX/SGX quote "
            f"({len(data)} bytes)"
        )
    return _verify_intel(
        data,
        tee,
        collateral if collateral is not None else path.parent / "collateral",
        at,
        allow_trailing,
        check_revocation,
    )


def _verify_snp(
    report: bytes, certs: Path, at: datetime, product: str | None, sim_root: Path | None
) -> VerifiedFile:
    from stockade.evidence.pki import der_of, load_der, load_pem_chain
    from stockade.evidence.snp.abi import AttestationReport, Product
    from stockade.evidence.snp.certs import read_extensions
    from stockade.evidence.snp.verify import TrustAnchor, amd_anchors, bundled_intermediate, verify_report

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
    crls = [read_input(p, "CRL") for p in sorted(certs.glob("*.crl"))]
    anchors = list(amd_anchors())
    if sim_root is not None:
        anchors.append(TrustAnchor("sim", Product.MILAN, read_sim_root(sim_root)))
    verified = verify_report(report, endorsement, intermediate, anchors, at, hint, crls=crls)
    root_name = "sim root" if verified.claims.platform == "sim" else "AMD root"
    checks = [
        "report structure, reserved fields and version",
        f"certificate chain to the {root_name} (RSASSA-PSS SHA-384), validity at {at.isoformat()}",
        "endorsement TCB = REPORTED_TCB, hwID = CHIP_ID, signer kind and product",
        "ECDSA P-384 signature over bytes 0x000-0x29F",
    ]
    if verified.revocation_checked:
        checks.append("CRL signature, validity and revocation")
    return VerifiedFile("sev-snp-report", verified.claims, checks)


def _verify_intel(
    quote: bytes, tee: str, collateral: Path, at: datetime, allow_trailing: bool, check_revocation: bool
) -> VerifiedFile:
    from stockade.evidence.intel import verify_quote_files

    if not collateral.is_dir():
        raise UsageError(f"no collateral directory {collateral}: pass --collateral DIR")
    verified = verify_quote_files(
        quote, collateral, at, allow_trailing=allow_trailing, check_revocation=check_revocation
    )
    checks = [
        "quote structure, version, TEE and key type",
        "attestation-key signature over header and body; QE report signed by the PCK key",
        "QE report data binds the attestation key and QE authentication data",
        f"PCK chain to the Intel SGX Root CA, validity at {at.isoformat()}",
        f"TCB info and QE identity signatures and validity; TCB status {verified.tcb_status}",
    ]
    if verified.revocation_checked:
        checks.append("root CA and PCK CRLs: signature, validity, revocation")
    return VerifiedFile(f"{tee}-quote", verified.claims, checks)
