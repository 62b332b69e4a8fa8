"""``stockade host check``: pre-flight diagnostics of the untrusted host.

Which Keep backends this machine can run, why not, and what to do
(stockade.host.diagnostics does the looking; this module only prints).

Exit status: 0 when at least one backend is usable here (``sim`` counts: it
runs on any Linux machine, with NO hardware protection), 1 when none is;
2 for a usage error. Planned backends (``kvm``) never count.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from stockade.host.diagnostics import HostReport

_STYLE = {"ok": "green", "warn": "yellow", "fail": "red", "n/a": "dim"}


def _default_state_dir() -> Path:
    # Same resolution as stockade.cli.state_dir (commands may not import the cli).
    env = os.environ.get("STOCKADE_STATE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "stockade"


def _print_report(report: HostReport, verbose: bool) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    flags = " ".join(report.cpu_flags) or "none of the TEE flags"
    console.print(
        f"Linux {escape(report.kernel)} · CPU {escape(report.cpu_vendor or 'unknown')} · flags: {flags}"
    )
    table = Table(title="stockade host check", show_header=True, show_lines=False)
    table.add_column("backend")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail / what to do", overflow="fold")
    for b in report.backends:
        if b.planned:
            verdict = "[dim]planned[/dim]"
        else:
            verdict = "[green]usable[/green]" if b.usable else "[red]not usable[/red]"
        table.add_row(f"[bold]{b.backend}[/bold]", "", verdict, escape(b.summary), end_section=False)
        for c in b.checks:
            if b.usable and not verbose and c.status in ("ok", "n/a"):
                continue
            text = escape(c.detail)
            if c.hint and c.status != "ok":
                text += f"\n[italic]→ {escape(c.hint)}[/italic]"
            style = _STYLE[c.status]
            table.add_row("", escape(c.name), f"[{style}]{c.status}[/{style}]", text)
        table.add_section()
    console.print(table)
    if report.usable:
        console.print(f"usable backends: [bold]{', '.join(report.usable)}[/bold]")
        if report.usable == ("sim",):
            console.print("[yellow]only sim: NO HARDWARE PROTECTION (development only)[/yellow]")
    else:
        console.print("[red]no backend is usable on this machine[/red]")


@click.group()
def host() -> None:
    """Inspect the untrusted host that runs Keeps."""


@host.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="State directory to check (default: $STOCKADE_STATE_DIR or ~/.local/state/stockade).",
)
@click.option("--verbose", "-v", is_flag=True, help="Also list the passing checks of usable backends.")
@click.option(
    "--root",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=Path("/"),
    hidden=True,
    help="Look at this directory tree instead of / (tests).",
)
def check(as_json: bool, state_dir: Path | None, verbose: bool, root: Path) -> None:
    """Check which Keep backends (snp, tdx, sgx, sim) this machine can run.

    For each backend: the attestation interfaces, devices and permissions,
    CPU flags and kernel version it needs, what is missing and what to do.
    Nothing is changed, except that a configfs-tsm report entry may be
    created and removed at once to learn the TSM provider.

    Exit status: 0 when at least one backend is usable (sim counts, and
    gives NO hardware protection), 1 when none is.
    """
    from stockade.host.diagnostics import Environment, check_host

    report = check_host(Environment(root=root, state_dir=state_dir or _default_state_dir()))
    if as_json:
        doc = {**report.to_json(), "exit_code": 0 if report.usable else 1}
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_report(report, verbose)
    sys.exit(0 if report.usable else 1)
