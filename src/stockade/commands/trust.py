"""``stockade trust PKG [--signer PUB]... [--rebuild DIR] [--json]``: what
can be checked offline about a package, area by area (docs/package.md,
"Trust report"). It never runs a build recipe and never uses the network.

Exit codes: 0 every check that ran passed (rows marked unknown or info do not
fail), 117 integrity failed (malformed package, a trusted key's signature
that does not verify, or trusted keys given and none of them signed), 110 the
rebuild from ``--rebuild DIR`` gives another digest, 2 usage (unreadable
file or key, a rebuild directory that does not build)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from stockade.commands._fileio import read_file
from stockade.commands._output import json_option
from stockade.errors import UsageError

if TYPE_CHECKING:
    from stockade.package.trust import TrustReport

_STYLE = {"pass": "green", "fail": "bold red", "unknown": "yellow", "info": "cyan"}


def _print_report(path: Path, report: TrustReport) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from stockade.package.trust import AREA_TITLES, AREAS

    console = Console(soft_wrap=False)
    what = f"{report.name} {report.version}" if report.name else "unparseable package"
    console.print(Text(f"trust report: {path} ({what})", style="bold"), soft_wrap=True)
    if report.digest:
        console.print(f"digest  sha256:{report.digest}", highlight=False, soft_wrap=True)
    table = Table(box=box.SIMPLE_HEAD, expand=False, show_edge=False)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for area in AREAS:
        table.add_row(Text(AREA_TITLES[area].upper(), style="bold"), "", "")
        for row in report.area(area):
            table.add_row("  " + row.name, Text(row.status.value, style=_STYLE[row.status.value]), row.detail)
        if area != AREAS[-1]:
            table.add_section()
    console.print(table)
    if report.error() is None:
        console.print(
            Text("every check that ran passed; rows marked unknown were not checked", style="green"),
            soft_wrap=True,
        )


@click.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--signer",
    "signers",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Trusted Ed25519 public key (PEM) of a signer; repeat.",
)
@click.option(
    "--rebuild",
    "rebuild_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Rebuild the package from this directory (with Stockade.toml) and compare digests.",
)
@json_option("Print the report as JSON (schema stockade-trust/v1).")
def trust(path: Path, signers: tuple[Path, ...], rebuild_dir: Path | None, as_json: bool) -> int:
    """Report what can be checked offline about the package PATH: build,
    integrity, provenance, and what cannot be known offline.

    Build recipes are never run: the report says how to run one yourself.
    """
    from stockade.package import load_public_key
    from stockade.package.trust import TrustedKey, trust_report

    keys = [TrustedKey(str(p), load_public_key(p)) for p in signers]
    data = read_file(path)
    if rebuild_dir is not None and not (rebuild_dir / "Stockade.toml").is_file():
        raise UsageError(f"--rebuild {rebuild_dir}: no Stockade.toml there")
    report = trust_report(data, keys, rebuild_dir)
    problem = report.error()
    if as_json:
        doc = {"package": str(path), **report.to_map()}
        if problem is not None:
            doc["error"] = {
                "type": problem.problem_type,
                "title": problem.title,
                "detail": problem.detail,
                "exit_code": problem.exit_code,
            }
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_report(path, report)
        if problem is not None:
            click.echo(f"stockade: {problem.title}: {problem.detail}", err=True)
    return report.exit_code
