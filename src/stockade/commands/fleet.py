"""``stockade fleet ls|keeps|drain``: views of the fleet directory (etcd)
and of the Keeps across its hosts (docs/fleet.md).

Everything read from etcd is untrusted: records are parsed strictly
(stockade.fleet.record), a malformed one is listed with its problem and
skipped, and every string from etcd or a host goes through
:func:`~stockade.commands._output.safe_text` before it is printed.

``fleet keeps`` asks each registered host's API for the user's Keeps with
the user's token (``--token-file`` or ``$STOCKADE_TOKEN``, as ``stockade
keeps ls``). The token goes to every URL the fleet names: the same rules as
``--host`` apply (https verified against the system CAs or ``--cacert``;
plain http only to loopback unless ``--insecure-http``). Use a CA of your
own for the fleet's hosts (``--cacert``) so that an etcd entry cannot send
your token to a server that has no certificate from it. A host that fails
is reported, not fatal: the exit status is 0 when etcd could be read.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Final

import click

from stockade.commands._fleet import fleet_options
from stockade.commands._output import json_option, safe_text
from stockade.commands.remote import _Connection, _connection_options

if TYPE_CHECKING:
    from stockade.fleet.etcd import FleetConfig
    from stockade.fleet.record import FleetEntry

#: A record refreshed longer ago than this is shown as stale (the host's
#: clock says when; the default lease TTL is 10 s, refreshed every 3.3 s).
STALE_AFTER_S: Final = 30.0


@click.group()
def fleet() -> None:
    """The fleet of keep managers registered in etcd (docs/fleet.md)."""


def _health(entry: FleetEntry, now: float) -> str:
    rec = entry.record
    if rec is None:
        return "malformed"
    if not entry.lease:
        return "no lease"  # written by hand: it never expires
    if now - rec.refreshed > STALE_AFTER_S:
        return "stale"
    return "ok"


def _host_doc(entry: FleetEntry, now: float) -> dict[str, Any]:
    rec = entry.record
    assert rec is not None
    return {
        "id": rec.id,
        "api_url": rec.api_url,
        "health": _health(entry, now),
        "lease": f"{entry.lease:x}" if entry.lease else None,
        "platforms": list(rec.platforms),
        "offers": [
            {"backend": o.backend, "platform": o.platform, "measurement": o.measurement} for o in rec.offers
        ],
        "keeps_running": rec.keeps_running,
        "max_keeps": rec.max_keeps,
        "free_memory_mib": rec.free_memory_mib,
        "drained": entry.drained,
        "labels": rec.labels,
        "version": rec.version,
        "api_tls_sha256": rec.api_tls_sha256,
        "refreshed": rec.refreshed,
        "refresh_age_s": round(max(0.0, now - rec.refreshed), 1),
        "started": rec.started,
    }


def _read(config: FleetConfig) -> list[FleetEntry]:
    from stockade.fleet.etcd import Etcd
    from stockade.fleet.record import read_fleet

    return read_fleet(Etcd(config))


@fleet.command("ls")
@fleet_options()
@json_option("Print the hosts as one JSON document.")
def ls(fleet: FleetConfig, as_json: bool) -> None:
    """List the registered hosts: health (lease, age of the last refresh),
    platforms, load and capacity, drained; malformed entries with their
    problem."""
    entries = _read(fleet)
    now = time.time()
    hosts = [_host_doc(e, now) for e in entries if e.record is not None]
    bad = [
        {"key": safe_text(e.key, limit=256), "problem": safe_text(e.problem)}
        for e in entries
        if e.record is None
    ]
    if as_json:
        click.echo(json.dumps({"fleet": fleet.url, "hosts": hosts, "malformed": bad}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    def cell(value: object, style: str = "") -> Text:
        return Text(safe_text("" if value is None else value, limit=256), style=style)

    table = Table(title=Text(f"Fleet at {fleet.url}: {len(hosts)} host(s)"))
    for column in ("id", "url", "health", "platforms", "load", "free MiB", "drained", "refreshed", "labels"):
        table.add_column(column, overflow="fold", no_wrap=column in ("id", "health"))
    style = {"ok": "green", "stale": "yellow", "no lease": "yellow"}
    for h in hosts:
        cap = "∞" if h["max_keeps"] is None else h["max_keeps"]
        table.add_row(
            cell(h["id"]),
            cell(h["api_url"]),
            cell(h["health"], style.get(h["health"], "")),
            cell(", ".join(h["platforms"])),
            cell(f"{h['keeps_running']}/{cap}"),
            cell(h["free_memory_mib"]),
            cell("drained" if h["drained"] else "", "yellow"),
            cell(f"{h['refresh_age_s']:g} s ago"),
            cell(" ".join(f"{k}={v}" for k, v in sorted(h["labels"].items()))),
        )
    console = Console()
    console.print(table)
    for b in bad:
        console.print(Text(f"malformed entry {b['key']}: {b['problem']}", style="red"))


@fleet.command("keeps")
@fleet_options()
@_connection_options(required=False, with_host=False)
@json_option("Print the Keeps and the hosts that failed as one JSON document.")
def keeps(fleet: FleetConfig, connection: _Connection, as_json: bool) -> None:
    """List your Keeps on every registered host, through each host's API
    with your token. A host that cannot be asked is reported, not fatal."""
    from stockade.client.fleet_views import keeps_across
    from stockade.commands.remote import _jsonable, _token

    token = _token(connection.token_file)
    hosts = [e.record for e in _read(fleet) if e.record is not None]
    found: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    for answer in keeps_across(
        hosts, token, cacert=connection.cacert, allow_insecure_http=connection.insecure_http
    ):
        rec = answer.host
        if answer.error:
            failed.append({"host": rec.id, "api_url": rec.api_url, "error": safe_text(answer.error)})
        found.extend({"host": rec.id, **_jsonable(d)} for d in answer.keeps)
    if as_json:
        click.echo(json.dumps({"fleet": fleet.url, "keeps": found, "failed": failed}, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    def cell(value: object) -> Text:
        return Text(safe_text("" if value is None else value, limit=256))

    table = Table(
        title=Text(f"Keeps across {len(hosts) - len(failed)} of {len(hosts)} host(s) at {fleet.url}")
    )
    for column in ("host", "id", "state", "backend", "created", "detail"):
        table.add_column(column, overflow="fold", no_wrap=column in ("host", "id", "state"))
    for d in found:
        table.add_row(
            cell(d["host"]),
            cell(d.get("id")),
            cell(d.get("state")),
            cell(d.get("backend")),
            cell(str(d.get("created_at", ""))[:19]),
            cell(d.get("detail", "")),
        )
    Console().print(table)
    for f in failed:
        click.echo(f"stockade: host {f['host']} ({safe_text(f['api_url'])}) failed: {f['error']}", err=True)


@fleet.command("drain")
@click.argument("host_id", metavar="HOST")
@fleet_options()
@click.option("--undo", is_flag=True, help="Remove the drain mark: the host gets new placements again.")
def drain(host_id: str, fleet: FleetConfig, undo: bool) -> None:
    """Drain HOST: no new placements on it; its Keeps run out and it still
    serves direct deploys. The mark stays (across restarts) until --undo."""
    from stockade.errors import FleetError, UsageError
    from stockade.fleet.etcd import Etcd
    from stockade.fleet.record import check_host_id, read_fleet

    try:
        check_host_id(host_id)
    except FleetError as exc:
        raise UsageError(exc.detail) from None
    etcd = Etcd(fleet)
    key = etcd.key("drain", host_id)
    if undo:
        existed = etcd.delete(key)
        click.echo(f"host {host_id}: {'no longer drained' if existed else 'was not drained'}")
        return
    etcd.put(key, json.dumps({"drained_at": time.time()}).encode())
    known = any(e.record is not None and e.record.id == host_id for e in read_fleet(etcd))
    note = "" if known else " (no such host is registered now; the mark applies when it registers)"
    click.echo(f"host {host_id}: drained: no new placements; its Keeps run out{note}")
