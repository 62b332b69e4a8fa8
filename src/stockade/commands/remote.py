"""``stockade deploy --host URL`` and ``stockade keeps``: Keeps on a remote
keep manager (``stockade host serve``).

``deploy`` verifies and decides exactly as ``stockade run`` does (same
options, same policy choice, same summary and exit codes); only the Keep is
started by the remote manager and reached through its WebSocket relay. The
token comes from ``--token-file`` or ``$STOCKADE_TOKEN``, never from the
command line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stockade.commands._output import fail
from stockade.commands._run import (
    RunOptions,
    deploy_session,
    exit_now,
    prepare,
    print_json,
    workload_options,
)
from stockade.errors import KeepDied, StockadeError, UsageError

if TYPE_CHECKING:
    from stockade.client.remote import ManagerClient

SIM_ROOT_NOTE = (
    "  sim root     fetched from the host (--allow-sim): a host-supplied sim root gives NO protection at all"
)

_host_option = click.option(
    "--host",
    "url",
    required=True,
    envvar="STOCKADE_HOST",
    metavar="URL",
    help="Keep manager URL, e.g. http://127.0.0.1:8470 ($STOCKADE_HOST).",
)
_token_option = click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File holding the API token (default: $STOCKADE_TOKEN).",
)


def _token(token_file: Path | None) -> str:
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--token-file: cannot read {token_file}: {exc}") from None
    else:
        token = os.environ.get("STOCKADE_TOKEN", "").strip()
    if not token:
        raise UsageError("no API token: use --token-file FILE or set STOCKADE_TOKEN")
    return token


def _client(url: str, token_file: Path | None) -> ManagerClient:
    from stockade.client.remote import ManagerClient

    return ManagerClient(url, _token(token_file))


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("wasm", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("args", nargs=-1)
@_host_option
@_token_option
@workload_options
def deploy(url: str, token_file: Path | None, **kwargs: Any) -> None:
    """Run WASM in a fresh Keep on a remote host, after verifying its attestation.

    Like `stockade run`, but the Keep is started by the keep manager at
    --host and reached through its relay. The attested TLS session is end
    to end: the host relays ciphertext only. With --allow-sim, the sim root
    is fetched from that host, which gives NO protection (sim never does).
    """
    opts = RunOptions(backend="sim", state_dir=None, **kwargs)
    try:
        _deploy(url, token_file, opts)
    except StockadeError as err:
        fail(err, opts.as_json, exit_code_source="stockade")
    except KeyboardInterrupt:
        click.echo("stockade: interrupted", err=True)
        sys.exit(130)


def _deploy(url: str, token_file: Path | None, opts: RunOptions) -> None:
    from stockade.client.deploy import send_hello
    from stockade.wire.launch import keep_measurement

    prepared = prepare(opts)
    limits = prepared.limits_map()
    with _client(url, token_file) as client:
        sim_root = None
        extra: tuple[str, ...] = ()
        if opts.allow_sim:
            sim_root = client.sim_root()
            extra = (SIM_ROOT_NOTE,)
        keep = client.create(opts.backend, limits)
        keep_id = str(keep["id"])

        def exit_status() -> int | None:
            try:
                status = client.get(keep_id).get("exit_status")
            except StockadeError:
                return None
            return status if isinstance(status, int) else None

        sock = client.connect(keep_id)
        try:
            hello = send_hello(sock)
            # The pin is this installation's Keep runtime, computed here: what
            # the host reports as the measurement is not trusted.
            result, out = deploy_session(
                sock, keep_measurement(), exit_status, prepared, opts, sim_root, hello, extra
            )
        except KeepDied as err:
            raise KeepDied(f"{err.detail}; Keep {keep_id} on {client.url}") from None
        finally:
            sock.close()
    if opts.as_json:
        print_json(result, out, keep_id=keep_id, host=url)
    exit_now(result.exit_code)


@click.group()
def keeps() -> None:
    """List and kill Keeps on a remote keep manager."""


@keeps.command("ls")
@_host_option
@_token_option
@click.option("--json", "as_json", is_flag=True, help="Print the Keeps as one JSON document.")
def ls(url: str, token_file: Path | None, as_json: bool) -> None:
    """List this token's Keeps on the host."""
    try:
        with _client(url, token_file) as client:
            records = client.list()
    except StockadeError as err:
        fail(err, as_json)
    docs = [{k: (v.hex() if isinstance(v, bytes) else v) for k, v in r.items()} for r in records]
    if as_json:
        click.echo(json.dumps({"keeps": docs}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Keeps on {url}")
    for column in ("id", "state", "backend", "pid", "exit", "created", "detail"):
        table.add_column(column, overflow="fold", no_wrap=column in ("id", "state"))
    style = {"running": "green", "exited": "", "failed": "red", "killed": "yellow", "lost": "red"}
    for d in docs:
        state = str(d.get("state", "?"))
        colour = style.get(state, "")
        table.add_row(
            str(d.get("id")),
            f"[{colour}]{state}[/{colour}]" if colour else state,
            str(d.get("backend", "")),
            str(d.get("pid", "")),
            str(d.get("exit_status", "")),
            str(d.get("created_at", ""))[:19],
            str(d.get("detail", "")),
        )
    Console().print(table)


@keeps.command("kill")
@click.argument("keep_id")
@_host_option
@_token_option
@click.option("--json", "as_json", is_flag=True, help="Print the Keep as one JSON document.")
def kill(keep_id: str, url: str, token_file: Path | None, as_json: bool) -> None:
    """Kill a Keep (SIGTERM, then SIGKILL after a grace period)."""
    try:
        with _client(url, token_file) as client:
            rec = client.kill(keep_id)
    except StockadeError as err:
        fail(err, as_json)
    if as_json:
        click.echo(
            json.dumps({k: (v.hex() if isinstance(v, bytes) else v) for k, v in rec.items()}, indent=2)
        )
    else:
        click.echo(f"Keep {rec.get('id')}: {rec.get('state')}")
