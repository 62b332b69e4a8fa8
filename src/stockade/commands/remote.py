"""``stockade deploy --host URL`` and ``stockade keeps``: Keeps on a remote
keep manager (``stockade host serve``).

``deploy`` verifies and decides exactly as ``stockade run`` does (same
options, same policy choice, same summary and exit codes); only the Keep is
started by the remote manager and reached through its WebSocket relay. The
token comes from ``--token-file`` or ``$STOCKADE_TOKEN``, never from the
command line, and is never sent over plain http to a host that is not
loopback unless ``--insecure-http`` is given. ``https://`` URLs are verified
against the system CAs, or ``--cacert`` / ``$STOCKADE_HOST_CACERT``.

``stockade keeps wait`` exits 0 when the Keep exited, 115 when it failed,
was killed or was lost, 124 when the wait timed out (docs/exit-codes.md).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

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

#: Exit status of `stockade keeps wait` when the Keep did not end in time
#: (the value coreutils' timeout(1) uses).
WAIT_TIMED_OUT: Final = 124
#: How long `keeps logs --follow` waits for the Keep's end between log reads.
FOLLOW_POLL_S: Final = 1.0

F = TypeVar("F", bound=Callable[..., Any])


def _host_options(fn: F) -> F:
    """--host, --token-file, --cacert and --insecure-http; the command gets
    one ``connection`` keyword (a _Connection)."""

    @click.option(
        "--host",
        "url",
        required=True,
        envvar="STOCKADE_HOST",
        metavar="URL",
        help="Keep manager URL, e.g. https://host.example:8470 or http://127.0.0.1:8470 ($STOCKADE_HOST).",
    )
    @click.option(
        "--token-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="File holding the API token (default: $STOCKADE_TOKEN).",
    )
    @click.option(
        "--cacert",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="STOCKADE_HOST_CACERT",
        metavar="FILE",
        help="PEM CA certificate(s) that sign the manager's TLS certificate, used instead of the "
        "system CAs ($STOCKADE_HOST_CACERT; https:// only).",
    )
    @click.option(
        "--insecure-http",
        is_flag=True,
        help="Allow sending the API token over plain http to a host that is not loopback.",
    )
    @functools.wraps(fn)
    def wrapper(
        url: str, token_file: Path | None, cacert: Path | None, insecure_http: bool, **kwargs: Any
    ) -> Any:
        return fn(connection=_Connection(url, token_file, cacert, insecure_http), **kwargs)

    return wrapper  # type: ignore[return-value]


class _Connection:
    """Where and how to reach the manager, from the command line."""

    def __init__(self, url: str, token_file: Path | None, cacert: Path | None, insecure_http: bool) -> None:
        self.url = url
        self.token_file = token_file
        self.cacert = cacert
        self.insecure_http = insecure_http

    def client(self) -> ManagerClient:
        from stockade.client.remote import ManagerClient

        return ManagerClient(
            self.url, _token(self.token_file), cacert=self.cacert, allow_insecure_http=self.insecure_http
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


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("wasm", metavar="WASM|PACKAGE", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("args", nargs=-1)
@_host_options
@workload_options
@click.option(
    "--stage-on-host",
    is_flag=True,
    help="Upload the package to the host, which hands it to the Keep (untrusted: the Keep "
    "loads it only if its digest matches, and attests what it loaded).",
)
def deploy(connection: _Connection, **kwargs: Any) -> None:
    """Run a module or package in a fresh Keep on a remote host, after verifying its attestation.

    Like `stockade run`, but the Keep is started by the keep manager at
    --host and reached through its relay. The attested TLS session is end
    to end: the host relays ciphertext only. With --allow-sim, the sim root
    is fetched from that host, which gives NO protection (sim never does).
    An https:// --host protects the API token and the Keep's metadata on
    the way; the workload and its secrets are protected by the attested
    session either way.
    """
    opts = RunOptions(backend="sim", state_dir=None, **kwargs)
    try:
        _deploy(connection, opts)
    except StockadeError as err:
        fail(err, opts.as_json, exit_code_source="stockade")
    except KeyboardInterrupt:
        click.echo("stockade: interrupted", err=True)
        sys.exit(130)


def _deploy(connection: _Connection, opts: RunOptions) -> None:
    from stockade.client.deploy import send_hello
    from stockade.wire.launch import measure_in_background

    # The pin: this installation's Keep runtime, hashed while we talk to the host.
    keep_measurement = measure_in_background()
    prepared = prepare(opts)
    limits = prepared.limits_map()
    with connection.client() as client:
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

        if opts.stage_on_host:
            client.stage(keep_id, prepared.package)
        sock = client.connect(keep_id)
        try:
            hello = send_hello(sock)
            # The pin is this installation's Keep runtime, computed here: what
            # the host reports as the measurement is not trusted.
            result, out = deploy_session(
                sock,
                keep_measurement(),
                exit_status,
                prepared,
                opts,
                sim_root,
                hello,
                extra,
                staged=opts.stage_on_host,
            )
        except KeepDied as err:
            raise KeepDied(f"{err.detail}; Keep {keep_id} on {client.url}") from None
        finally:
            sock.close()
    if opts.as_json:
        print_json(result, out, keep_id=keep_id, host=connection.url)
    exit_now(result.exit_code)


@click.group()
def keeps() -> None:
    """List, inspect, wait for and kill Keeps on a remote keep manager."""


def _jsonable(doc: dict[Any, Any]) -> dict[Any, Any]:
    return {k: (v.hex() if isinstance(v, bytes) else v) for k, v in doc.items()}


@keeps.command("ls")
@_host_options
@click.option("--json", "as_json", is_flag=True, help="Print the Keeps as one JSON document.")
def ls(connection: _Connection, as_json: bool) -> None:
    """List this token's Keeps on the host."""
    url = connection.url
    try:
        with connection.client() as client:
            records = client.list()
    except StockadeError as err:
        fail(err, as_json)
    docs = [_jsonable(r) for r in records]
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
@_host_options
@click.option("--json", "as_json", is_flag=True, help="Print the Keep as one JSON document.")
def kill(keep_id: str, connection: _Connection, as_json: bool) -> None:
    """Kill a Keep (SIGTERM, then SIGKILL after a grace period)."""
    try:
        with connection.client() as client:
            rec = client.kill(keep_id)
    except StockadeError as err:
        fail(err, as_json)
    if as_json:
        click.echo(json.dumps(_jsonable(rec), indent=2))
    else:
        click.echo(f"Keep {rec.get('id')}: {rec.get('state')}")


@keeps.command("wait")
@click.argument("keep_id")
@_host_options
@click.option(
    "--timeout",
    type=click.FloatRange(0, 86_400),
    default=300,
    show_default=True,
    metavar="SECONDS",
    help="Give up after this long (exit 124).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the Keep and timed_out as one JSON document.")
def wait(keep_id: str, connection: _Connection, timeout: float, as_json: bool) -> None:
    """Wait until a Keep has ended (exited, failed, killed or lost).

    Exit status: 0 if the Keep exited (its process ended with status 0: a
    normal end of session; the workload's own exit code is known only to
    the client that deployed it), 115 if it failed, was killed or was lost,
    124 if it was still active after --timeout seconds.
    """
    deadline = time.monotonic() + timeout
    try:
        with connection.client() as client:
            while True:  # the manager grants at most 300 s per request
                rec = client.wait(keep_id, max(0.0, deadline - time.monotonic()))
                if not rec["timed_out"] or time.monotonic() >= deadline:
                    break
    except StockadeError as err:
        fail(err, as_json)
    except KeyboardInterrupt:
        click.echo("stockade: interrupted", err=True)
        sys.exit(130)
    state = str(rec.get("state"))
    code = WAIT_TIMED_OUT if rec["timed_out"] else 0 if state == "exited" else KeepDied.exit_code
    if as_json:
        click.echo(json.dumps({**_jsonable(rec), "exit_code": code}, indent=2))
    else:
        detail = f" ({rec['detail']})" if rec.get("detail") else ""
        still = f", still {state} after {timeout:g} s" if rec["timed_out"] else f": {state}{detail}"
        click.echo(f"Keep {rec.get('id')}{still}")
    sys.exit(code)


@keeps.command("logs")
@click.argument("keep_id")
@_host_options
@click.option(
    "--tail", type=click.IntRange(0, 100_000), metavar="N", help="Only the last N lines (default: all)."
)
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Keep printing what is added until the Keep has ended (exited, failed, killed or lost).",
)
def logs(keep_id: str, connection: _Connection, tail: int | None, follow: bool) -> None:
    """Print a Keep's host-side log (the Keep loader's stderr).

    The log holds the Keep's own events (start, session end, errors) and
    never workload data or secrets. It is read in steps of at most 1 MiB;
    --follow reads on from where it stopped, about once a second, and ends
    once the Keep has ended.
    """
    out = sys.stdout.buffer
    try:
        with connection.client() as client:

            def drain(offset: int) -> int:
                """Print the log from ``offset`` to its current end."""
                while True:  # a response holds at most 1 MiB
                    data, start = client.logs(keep_id, offset=offset)
                    out.write(data)
                    out.flush()
                    offset = start + len(data)
                    if not data:
                        return offset

            offset = 0
            if tail is not None:
                data, start = client.logs(keep_id, tail=tail)
                out.write(data)
                offset = start + len(data)
            offset = drain(offset)
            while follow:
                ended = not client.wait(keep_id, FOLLOW_POLL_S)["timed_out"]
                offset = drain(offset)
                follow = not ended
    except StockadeError as err:
        fail(err, False)
    except KeyboardInterrupt:
        sys.exit(130)
