"""``stockade host check``: pre-flight diagnostics of the untrusted host.

Which Keep backends this machine can run, why not, and what to do
(stockade.host.diagnostics does the looking; this module only prints).

Exit status: 0 when at least one backend is usable here (``sim`` counts: it
runs on any Linux machine, with NO hardware protection), 1 when none is;
2 for a usage error. Planned backends (``kvm``) never count.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from types import FrameType

    from stockade.host.diagnostics import HostReport

from stockade.commands._run import state_dir as state_dir_default

_STYLE = {"ok": "green", "warn": "yellow", "fail": "red", "n/a": "dim"}


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

    report = check_host(Environment(root=root, state_dir=state_dir or state_dir_default()))
    if as_json:
        doc = {**report.to_json(), "exit_code": 0 if report.usable else 1}
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_report(report, verbose)
    sys.exit(0 if report.usable else 1)


@host.command()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Manager state directory (default: $STOCKADE_STATE_DIR or ~/.local/state/stockade).",
)
@click.option(
    "--quota",
    type=click.IntRange(1, 100_000),
    default=16,
    show_default=True,
    help="Concurrent Keeps allowed to this token.",
)
def init(state_dir: Path | None, quota: int) -> None:
    """Create an API bearer token for the keep manager.

    The token is printed once, on stdout, and stored only as its SHA-256 in
    STATE_DIR/tokens.json (mode 0600), with a token id and a quota of
    concurrent Keeps. Running it again adds another token.
    """
    from stockade.errors import StockadeError
    from stockade.host.tokens import add_token, tokens_path

    sdir = state_dir or state_dir_default()
    try:
        token, entry = add_token(sdir, quota)
    except StockadeError as err:
        from stockade.commands._output import fail

        fail(err, False)
    click.echo(token)
    click.echo(
        f"stockade: token {entry.token_id} (quota {entry.quota}) added to {tokens_path(sdir)}; "
        "it is shown only this once",
        err=True,
    )


def _parse_listen(text: str) -> tuple[str, int]:
    host_part, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{text!r}: expected HOST:PORT", param_hint="--listen")
    return host_part.strip("[]") or "127.0.0.1", int(port)


@host.command()
@click.option("--listen", default="127.0.0.1:8470", show_default=True, metavar="HOST:PORT")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Manager state directory (default: $STOCKADE_STATE_DIR or ~/.local/state/stockade).",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    metavar="FILE",
    help="Serve the API over TLS with this PEM certificate (chain); needs --tls-key.",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    metavar="FILE",
    help="PEM private key of --tls-cert.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(0, 86_400),
    default=60,
    show_default=True,
    metavar="SECONDS",
    help="Kill a Keep that no client connected to within this long (0: never).",
)
@click.option(
    "--watchdog-grace",
    type=click.FloatRange(0, 86_400),
    default=30,
    show_default=True,
    metavar="SECONDS",
    help="Kill a Keep created with a timeout_ms limit once it runs this much longer than "
    "that limit after its client connected.",
)
@click.option(
    "--no-fork-server",
    is_flag=True,
    help="Start every Keep as a fresh Python process instead of forking it from the Keep fork server.",
)
def serve(
    listen: str,
    state_dir: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    idle_timeout: float,
    watchdog_grace: float,
    no_fork_server: bool,
) -> None:
    """Run the keep manager: the HTTP+CBOR API that starts Keeps on this host.

    Clients need a token from `stockade host init`. Without --tls-cert and
    --tls-key the API is plain HTTP: listen on loopback (clients refuse to
    send their token over plain http elsewhere unless told to) or put a
    TLS-terminating proxy in front of it. API TLS protects the tokens and
    the metadata; the manager never sees workloads or secrets in clear
    either way: it relays the attested TLS stream between each client and
    its Keep.
    """
    import logging
    import ssl

    import uvicorn

    from stockade.commands._output import fail
    from stockade.errors import StockadeError, UsageError
    from stockade.host.manager import create_app
    from stockade.host.tokens import load_tokens

    host_name, port = _parse_listen(listen)
    if (tls_cert is None) != (tls_key is None):
        fail(UsageError("--tls-cert and --tls-key go together"), False)
    if tls_cert is not None and tls_key is not None:
        try:  # fail here in one line, not in uvicorn with a traceback
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(tls_cert, tls_key)
        except (OSError, ssl.SSLError) as exc:
            fail(UsageError(f"--tls-cert/--tls-key: cannot load {tls_cert} and {tls_key}: {exc}"), False)
    sdir = state_dir or state_dir_default()
    try:
        from stockade.wire import sitecheck

        sitecheck.check()  # a .pth that runs code: no Keep could be measured (ADR 0013)
        tokens = load_tokens(sdir)
    except StockadeError as err:
        fail(err, False)
    from stockade.evidence.sim.chip import ensure_chip

    if ensure_chip(sdir):
        click.echo(f"stockade: created the sim chip in {sdir} (sim: NO HARDWARE PROTECTION)", err=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    from stockade.host.loader import start_keep

    spawner = None
    if not no_fork_server:
        from stockade.host.forkserver import fork_starter, manager_spawner

        spawner = manager_spawner(sdir)
    starter = fork_starter(spawner) if spawner else start_keep
    app = create_app(
        sdir, tokens, idle_timeout=idle_timeout or None, starter=starter, watchdog_grace=watchdog_grace
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            app.state.manager.begin_shutdown()  # open waits answer now
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=host_name,
        port=port,
        ws="websockets-sansio",
        log_level="info",
        lifespan="on",
        server_header=False,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        # Relays must not hold a shutdown up for long.
        timeout_graceful_shutdown=5,
        # uvicorn closes idle keep-alive connections after 5 s by default; a
        # busy client that sends its next request just then gets the
        # connection closed under it. 30 s makes that window rare.
        timeout_keep_alive=30,
    )
    server = Server(config)
    try:
        with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run does
            server.run()
    finally:
        if spawner is not None:
            spawner.close()
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE: it logged why (port in use, ...)
