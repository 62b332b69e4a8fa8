"""``stockade evidence verify``: verify a piece of evidence offline.

SEV-SNP reports are detected by size (0x4A0 bytes); their endorsement
certificate and intermediate come from ``--certs DIR`` (``vcek.der`` or
``vlek.der``, and ``ask_ark.pem`` / ``ask.der``; the intermediate shipped in
the package is used when none is given) and optional CRLs (``*.crl`` in the
same directory). Verification runs at ``--at`` (default: now) against the
AMD roots shipped in the package, never fetching anything.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from stockade.errors import MalformedEvidence, StockadeError, UsageError

SNP_REPORT_SIZE = 0x4A0


def parse_time(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at {text!r}: expected an ISO 8601 time, e.g. 2025-06-20T00:00:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None


def verify_snp_files(report: bytes, certs: Path | None, at: datetime, product: str | None) -> dict[str, Any]:
    from stockade.evidence.snp.abi import AttestationReport, Product, SigningKey
    from stockade.evidence.snp.verify import amd_anchors, bundled_intermediate, verify_report
    from stockade.evidence.x509util import der_of, load_pem_chain

    parsed = AttestationReport.from_bytes(report)
    hint = Product(product.capitalize()) if product else None
    endorsement = intermediate = None
    crls: list[bytes] = []
    if certs is not None:
        for name in ("vcek.der", "vlek.der"):
            if (certs / name).exists():
                endorsement = _read(certs / name, "endorsement certificate")
                break
        if (certs / "ask_ark.pem").exists():
            chain = load_pem_chain(_read(certs / "ask_ark.pem", "certificate chain"), "ask_ark.pem")
            intermediate = der_of(chain[0]) if chain else None
        elif (certs / "ask.der").exists():
            intermediate = _read(certs / "ask.der", "intermediate certificate")
        crls = [_read(p, "CRL") for p in sorted(certs.glob("*.crl"))]
    if endorsement is None:
        raise UsageError("no endorsement certificate: pass --certs DIR holding vcek.der or vlek.der")
    if intermediate is None:
        signer = parsed.signing_key if parsed.signing_key is not SigningKey.NONE else SigningKey.VCEK
        intermediate = bundled_intermediate(
            parsed.product(hint) if hint or parsed.version >= 3 else Product.MILAN, signer
        )
    verified = verify_report(report, endorsement, intermediate, amd_anchors(), at, hint, crls=crls)
    checks = [
        "report structure, reserved fields and version",
        "certificate chain to the AMD root (RSASSA-PSS SHA-384), validity at the given time",
        "endorsement TCB = REPORTED_TCB, hwID = CHIP_ID, signer kind",
        "ECDSA P-384 signature over bytes 0x000-0x29F",
    ]
    if verified.revocation_checked:
        checks.append("CRL signature, validity and revocation")
    return {"evidence": "sev-snp-report", **verified.claims.to_json(), "checks": checks}


def _print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"verified {doc['evidence']}", show_header=True)
    table.add_column("claim")
    table.add_column("value", overflow="fold")
    for key, value in doc.items():
        if key in ("evidence", "checks"):
            continue
        text = str(value)
        if isinstance(value, dict):
            text = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            text = ", ".join(map(str, value)) or "-"
        if value is None or text == "-":
            continue  # fields of other platforms
        table.add_row(key, text)
    console = Console()
    console.print(table)
    for check in doc["checks"]:
        console.print(f"  [green]ok[/green] {check}")


@click.group()
def evidence() -> None:
    """Inspect and verify attestation evidence offline."""


@evidence.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--certs",
    type=click.Path(file_okay=False, path_type=Path),
    help="SNP: directory with vcek.der|vlek.der, ask_ark.pem|ask.der, *.crl.",
)
@click.option(
    "--collateral",
    type=click.Path(file_okay=False, path_type=Path),
    help="TDX/SGX: directory with the Intel collateral.",
)
@click.option("--at", "at_text", metavar="TIME", help="Verification time, ISO 8601 (default: now).")
@click.option(
    "--product",
    type=click.Choice(["milan", "genoa", "turin"]),
    help="SNP product hint (needed for v2 reports without a VCEK productName).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the verified claims as JSON.")
def verify(
    path: Path,
    certs: Path | None,
    collateral: Path | None,
    at_text: str | None,
    product: str | None,
    as_json: bool,
) -> None:
    """Verify the evidence in PATH and print the verified claims."""
    try:
        data = _read(path, "evidence")
        at = parse_time(at_text)
        if len(data) == SNP_REPORT_SIZE:
            doc = verify_snp_files(data, certs, at, product)
        else:
            doc = _verify_intel(data, collateral, at)
    except StockadeError as err:
        if as_json:
            click.echo(
                json.dumps({"error": {"type": err.problem_type, "title": err.title, "detail": err.detail}})
            )
        else:
            click.echo(f"stockade: {err.title}: {err.detail}", err=True)
        sys.exit(err.exit_code)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_table(doc)


def _verify_intel(data: bytes, collateral: Path | None, at: datetime) -> dict[str, Any]:
    raise MalformedEvidence(
        f"not an SEV-SNP report ({len(data)} bytes, expected {SNP_REPORT_SIZE}); "
        "Intel quotes are not supported by this command yet"
    )
