"""``stockade evidence verify``: verify a piece of evidence offline (an
SEV-SNP report or a TDX/SGX quote; detection and inputs: commands/_files.py)
at ``--at`` (default: now) against the roots shipped in the package, never
fetching anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from stockade.commands._output import json_option, safe_text
from stockade.errors import UsageError


def _print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

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
        table.add_row(key, Text(safe_text(text)))  # never markup, never escapes
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
    help="SNP: directory with vcek.der|vlek.der, ask_ark.pem|ask.der, *.crl (default: PATH's).",
)
@click.option(
    "--collateral",
    type=click.Path(file_okay=False, path_type=Path),
    help="TDX/SGX: directory with the Intel collateral (default: PATH's collateral/).",
)
@click.option("--at", "at_text", metavar="TIME", help="Verification time, ISO 8601 (default: now).")
@click.option(
    "--product", type=click.Choice(["milan", "genoa", "turin"]), help="SNP product hint (for v2 reports)."
)
@click.option("--allow-trailing-bytes", is_flag=True, help="TDX/SGX: accept non-zero bytes after the quote.")
@click.option(
    "--revocation",
    type=click.Choice(["require", "if-given", "skip"]),
    help="CRL checking on every platform: require the chain's CRLs, check those given, or skip them "
    "(default: if-given for SNP, require for TDX/SGX).",
)
@click.option("--no-revocation-check", is_flag=True, help="Same as --revocation if-given (reported).")
@json_option("Print the verified claims as JSON.")
def verify(
    path: Path,
    certs: Path | None,
    collateral: Path | None,
    at_text: str | None,
    product: str | None,
    allow_trailing_bytes: bool,
    revocation: str | None,
    no_revocation_check: bool,
    as_json: bool,
) -> None:
    """Verify the evidence in PATH (an SEV-SNP report, a TDX or SGX quote)
    offline and print the verified claims."""
    from stockade.commands._files import parse_time, verify_file
    from stockade.evidence.registry import Revocation

    if no_revocation_check and revocation not in (None, "if-given"):
        raise UsageError("--no-revocation-check contradicts --revocation " + revocation)
    mode = Revocation(revocation) if revocation else Revocation.IF_GIVEN if no_revocation_check else None
    verified = verify_file(
        path,
        parse_time(at_text),
        certs=certs,
        collateral=collateral,
        product=product,
        allow_trailing=allow_trailing_bytes,
        check_revocation=not no_revocation_check,
        revocation=mode,
    )
    doc: dict[str, Any] = {"evidence": verified.kind, **verified.claims.to_json(), "checks": verified.checks}
    if not verified.revocation_checked:
        doc["checks"].append(
            f"revocation NOT checked ({'--revocation skip' if revocation == 'skip' else 'no CRL given'})"
        )
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_table(doc)
