"""``stockade host check``: pre-flight diagnostics of the untrusted host.

Which Keep backends this machine can run, why not, and what to do
(stockade.host.diagnostics does the looking; this module only prints).

Exit status: 0 when at least one backend is usable here (``sim`` counts: it
runs on any Linux machine, with NO hardware protection), 1 when none is;
2 for a usage error. Planned backends (``kvm``) never count.
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    from stockade.fleet.etcd import FleetConfig
    from stockade.host.diagnostics import HostReport
    from stockade.host.fleet import Registrar
    from stockade.host.tokens import Tokens

from stockade.client.plan import state_dir as state_dir_default
from stockade.commands._fleet import fleet_options
from stockade.commands._output import json_option
from stockade.errors import ExitStatus

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
    if report.qemu is None:
        console.print("QEMU: [red]not found[/red] (VM Keeps need it)")
    elif report.accel is not None:
        kvm = "KVM usable" if report.accel.kvm_usable else "KVM unusable"
        console.print(
            f"QEMU {escape(report.qemu.version_str)} ({escape(report.qemu.path)}) · "
            f"acceleration: [bold]{report.accel.accel}[/bold] ({kvm}, probed in {report.accel.seconds:.1f} s)"
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
        if all(b.startswith("sim") or b == "vm" for b in report.usable):
            console.print("[yellow]only sim and vm: NO HARDWARE PROTECTION (development only)[/yellow]")
    else:
        console.print("[red]no backend is usable on this machine[/red]")


@click.group()
def host() -> None:
    """Inspect the untrusted host that runs Keeps."""


@host.command()
@json_option("Print the report as one JSON document.")
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
def check(as_json: bool, state_dir: Path | None, verbose: bool, root: Path) -> ExitStatus:
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
    status = ExitStatus.OK if report.usable else ExitStatus.NO_BACKEND
    if as_json:
        doc = {**report.to_json(), "exit_code": int(status)}
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_report(report, verbose)
    return status


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
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    metavar="FILE",
    help="Register the existing token in FILE (first line; made by `host init` on another host) "
    "instead of creating one: one tenant token for several hosts.",
)
def init(state_dir: Path | None, quota: int, token_file: Path | None) -> None:
    """Create an API bearer token for the keep manager.

    The token is printed once, on stdout, and stored only as its SHA-256 in
    STATE_DIR/tokens.json (mode 0600), with a token id and a quota of
    concurrent Keeps. Running it again adds another token.

    With --token-file: register an existing token (read from the file,
    never from the command line) so that one tenant token works on several
    hosts of a fleet; nothing is printed on stdout (docs/fleet.md).
    """
    from stockade.errors import UsageError
    from stockade.host.tokens import add_token, tokens_path

    sdir = state_dir or state_dir_default()
    if token_file is not None:
        try:
            lines = token_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--token-file: cannot read {token_file}: {type(exc).__name__}") from None
        _, entry = add_token(sdir, quota, token=lines[0].strip() if lines else "")
        click.echo(
            f"stockade: the token in {token_file} registered as {entry.token_id} (quota {entry.quota}) "
            f"in {tokens_path(sdir)}",
            err=True,
        )
        return
    token, entry = add_token(sdir, quota)
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
@click.option(
    "--no-compile-cache",
    is_flag=True,
    help="Keeps compile their modules every time: no sealed compile cache (by default process Keeps "
    "keep their compiled code in STATE_DIR/compile-cache, sealed under a key only a Keep of the same "
    "runtime derives; docs/adr/0023-sealed-compile-cache.md).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(16, 1_000_000),
    default=None,
    metavar="N",
    help="Open connections at most (HTTP and relays). Beyond it the oldest connection waiting for "
    "a request head is closed. [default: 1024, or what the file-descriptor limit leaves]",
)
@click.option(
    "--backlog",
    type=click.IntRange(1, 65_535),
    default=128,
    show_default=True,
    metavar="N",
    help="Listen backlog; also the most sockets accepted in one burst (4 bursts count in the fd budget).",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(0.1, 3600),
    default=10,
    show_default=True,
    metavar="SECONDS",
    help="Close a connection that has not sent a complete request head within this long.",
)
@click.option(
    "--backend",
    "backends",
    multiple=True,
    type=click.Choice(["sim", "sim-snp", "sim-tdx", "vm", "snp", "tdx"]),
    help="Backends to run (repeat; default: sim, sim-snp, sim-tdx). vm: QEMU VMs booting the Keep "
    "image, signed by the sim PSP (NO hardware protection); snp, tdx: the Keep image as an SEV-SNP "
    "guest or a TD (needs the hardware, QEMU >= 9.1 / 10.1 and --firmware; docs/vm-hardware.md).",
)
@click.option(
    "--firmware",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="For snp: an AmdSev OVMF build (with kernel hashes); for tdx: TDVF. Part of the measurement.",
)
@click.option(
    "--image",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep image for vm (default: one built in the state directory, rebuilt when the runtime changes).",
)
@click.option(
    "--vm-pool",
    type=click.IntRange(0, 64),
    default=1,
    show_default=True,
    metavar="N",
    help="VM Keeps kept booted ahead of demand (each holds --vm-memory while it waits).",
)
@click.option(
    "--keep-pool",
    type=click.IntRange(0, 16),
    default=2,
    show_default=True,
    metavar="N",
    help="Process Keeps (sim, sim-snp, sim-tdx) forked ahead of demand, per backend, handed out on "
    "create (no owner, workload or key until then; replaced every 30 s). 0: fork each on create. "
    "Needs the fork server.",
)
@click.option(
    "--vm-memory",
    type=click.IntRange(256, 65_536),
    default=1024,  # stockade.host.vm.DEFAULT_MEMORY_MIB
    show_default=True,
    metavar="MIB",
    help="Memory of each VM Keep (the workload's memory and disk limits must fit in it).",
)
@click.option(
    "--vm-vcpus",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    metavar="N",
    help="vCPUs of each VM Keep (for snp, part of the launch measurement: measure with the same N).",
)
@click.option(
    "--accel",
    type=click.Choice(["auto", "kvm", "tcg"]),
    default="auto",
    show_default=True,
    help="VM acceleration: auto uses KVM only where a test guest runs under it.",
)
@click.option(
    "--keep-ports",
    metavar="LOW-HIGH",
    help="Host TCP ports (on the --listen host) the manager may publish for Keeps' listen sockets "
    "(deploy --publish NAME): each is forwarded, bytes only, to a Unix socket the Keep binds; "
    "the manager sees TLS records only. [default: none, publishing is refused]",
)
@fleet_options(
    required=False,
    help_url="Register this host in the fleet on this etcd: etcd://HOST[:PORT][,HOST[:PORT]...] "
    "(etcds:// for TLS). Serving never depends on it (docs/fleet.md).",
)
@click.option(
    "--fleet-id",
    metavar="ID",
    help="This host's id in the fleet [default: generated once into STATE_DIR/fleet-id].",
)
@click.option(
    "--fleet-label",
    "fleet_labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="A label placement may filter on (repeat).",
)
@click.option(
    "--fleet-api-url",
    metavar="URL",
    help="The API URL clients should use [default: from --listen and --tls-cert].",
)
@click.option(
    "--fleet-ttl",
    type=click.IntRange(2, 3600),
    default=10,  # stockade.host.fleet.DEFAULT_TTL_S
    show_default=True,
    metavar="SECONDS",
    help="Lease TTL: a crashed host leaves the fleet within this long (refreshed every TTL/3).",
)
def serve(
    listen: str,
    state_dir: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    idle_timeout: float,
    watchdog_grace: float,
    no_fork_server: bool,
    no_compile_cache: bool,
    max_connections: int | None,
    backlog: int,
    header_timeout: float,
    backends: tuple[str, ...],
    image: Path | None,
    vm_pool: int,
    keep_pool: int,
    vm_memory: int,
    vm_vcpus: int,
    accel: str,
    firmware: Path | None,
    fleet: FleetConfig | None,
    fleet_id: str | None,
    fleet_labels: tuple[str, ...],
    fleet_api_url: str | None,
    fleet_ttl: int,
    keep_ports: str | None,
) -> ExitStatus:
    """Run the keep manager: the HTTP+CBOR API that starts Keeps on this host.

    Clients need a token from `stockade host init`. Without --tls-cert and
    --tls-key the API is plain HTTP: listen on loopback (clients refuse to
    send their token over plain http elsewhere unless told to) or put a
    TLS-terminating proxy in front of it. API TLS protects the tokens and
    the metadata; the manager never sees workloads or secrets in clear
    either way: it relays the attested TLS stream between each client and
    its Keep.

    Connection floods: at most --max-connections connections, a request
    head within --header-timeout seconds, file descriptors kept for Keeps,
    and peer-driven log lines summarised every 10 s. For a host on the
    internet, put a reverse proxy in front (docs/host-api.md).

    A read-only status page for token holders is served at /ui.

    With --fleet the host registers in the fleet directory (etcd) under a
    lease refreshed every --fleet-ttl/3 seconds; a clean stop removes the
    entry, a crash lets it expire. When etcd is down the host serves on and
    retries (its log and /metrics say so). No token is written to etcd.
    """
    import logging
    import ssl

    import uvicorn

    from stockade.errors import UsageError
    from stockade.host import guard
    from stockade.host.manager import create_app
    from stockade.host.tokens import load_tokens

    host_name, port = _parse_listen(listen)
    from stockade.host.manager.portfwd import PortForwarder, PortRange

    try:
        port_range = None if keep_ports is None else PortRange.parse(keep_ports)
    except ValueError as exc:
        raise UsageError(f"--keep-ports: {exc}") from None
    if fleet is None and (fleet_id or fleet_labels or fleet_api_url):
        raise UsageError("--fleet-id, --fleet-label and --fleet-api-url need --fleet URL")
    hardware = [b for b in backends if b in ("snp", "tdx")]
    if hardware and firmware is None:
        raise UsageError(f"--backend {hardware[0]} needs --firmware (docs/vm-hardware.md)")
    if hardware and len(hardware) > 1:
        raise UsageError("one manager runs snp or tdx, not both (their firmware differs)")
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if tls_cert is not None and tls_key is not None:
        try:  # fail here in one line, not in uvicorn with a traceback
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(tls_cert, tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"--tls-cert/--tls-key: cannot load {tls_cert} and {tls_key}: {exc}") from None
    sdir = state_dir or state_dir_default()
    from stockade.measure import sitecheck

    sitecheck.check()  # a .pth that runs code: no Keep could be measured (ADR 0013)
    tokens = load_tokens(sdir)
    # Connections, the accept path and the Keeps' descriptors must fit in
    # the soft RLIMIT_NOFILE, or a flood of connections starves Keep
    # creation and health (stockade.host.guard).
    plan = guard.plan_descriptors(
        guard.raise_nofile(),
        sum(t.quota for t in tokens.entries) + 3 * keep_pool,  # pooled Keeps hold descriptors too
        backlog,
        max_connections,
    )
    from stockade.evidence.sim.chip import ensure_chip
    from stockade.evidence.sim.tdx_chip import ensure_tdx_chip

    if ensure_chip(sdir):
        click.echo(f"stockade: created the sim chip in {sdir} (sim: NO HARDWARE PROTECTION)", err=True)
    if ensure_tdx_chip(sdir):
        click.echo(
            f"stockade: created the sim TDX chip in {sdir} (sim-tdx: NO HARDWARE PROTECTION)", err=True
        )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    from stockade.host.loader import start_keep

    spawner = None
    if not no_fork_server:
        from stockade.host.forkserver import fork_starter, manager_spawner

        spawner = manager_spawner(sdir)
    starter = fork_starter(spawner) if spawner else start_keep
    if not no_compile_cache:
        # One directory; each Keep runtime (measurement) seals into its own
        # subdirectory, named from its sealing key (stockade.keep.compilecache).
        starter = functools.partial(starter, compile_cache=sdir / "compile-cache")
    backends = tuple(dict.fromkeys(backends)) or ("sim", "sim-snp", "sim-tdx")
    keep_pool_ = None
    pooled = tuple(b for b in backends if b in ("sim", "sim-snp", "sim-tdx"))
    if spawner is not None and keep_pool > 0 and pooled:
        from stockade.host.keeppool import KeepPool

        # Forked with the manager's own starter: the same spawner, limits
        # and compile cache as a Keep forked on create.
        keep_pool_ = KeepPool(starter, spawner, sdir, pooled, keep_pool)
    pool = None
    vm_measurements: dict[str, bytes] = {}
    if "vm" in backends or hardware:
        from stockade.commands._vm import ensure_image
        from stockade.host.vm import VmConfig, VmSpawner, choose_accel
        from stockade.host.vmpool import VmPool, vm_starter
        from stockade.image.manifest import load

        vm_image = load(ensure_image(image, sdir, quiet=False))
        vm_accel, why = (
            choose_accel(accel, sdir) if "vm" in backends else ("kvm", "confidential guests need KVM")
        )
        vm_cfg = VmConfig(vm_image, accel=vm_accel, memory_mib=vm_memory, vcpus=vm_vcpus, firmware=firmware)
        vm_spawner = VmSpawner(vm_cfg)
        if "vm" in backends:
            click.echo(
                f"stockade: VM Keeps boot {vm_image.directory} under {vm_cfg.accel.upper()} ({why}; "
                f"{vm_memory} MiB each, {vm_pool} kept warm; vm: NO HARDWARE PROTECTION)",
                err=True,
            )
            pool = VmPool(vm_spawner, sdir, vm_pool)
            vm_measurements["vm"] = vm_spawner.measurement()
            pool.fill()
        for name in hardware:
            click.echo(
                f"stockade: {name} Keeps boot {vm_image.directory} with firmware {firmware} "
                "(never tested on real hardware here: docs/vm-hardware.md)",
                err=True,
            )
        starter = vm_starter(vm_spawner, pool, fallback=starter)
    registrar = None
    if fleet is not None:
        registrar = _registrar(
            fleet,
            sdir,
            tokens,
            backends,
            vm_measurements,
            host_name,
            port,
            tls_cert,
            fleet_id,
            fleet_labels,
            fleet_api_url,
            fleet_ttl,
        )
    app = create_app(
        sdir,
        tokens,
        idle_timeout=idle_timeout or None,
        starter=starter,
        watchdog_grace=watchdog_grace,
        backends=backends,
        fleet=registrar,
        forwarder=PortForwarder(host_name, port_range),
        pool=keep_pool_,
    )
    if pool is not None:
        vm_pool_ = pool
        app.state.metrics.watch_pool(lambda: (vm_pool_.ready(), vm_pool_.hits, vm_pool_.misses))

    limiter = guard.LogRateLimit()
    shed_counter = app.state.metrics.connections_shed

    def on_shed(reason: str) -> None:
        shed_counter.labels(reason).inc()
        limiter.note(guard.shed_kind(reason))

    limits = guard.ConnectionLimits(plan.max_connections, plan.backlog, header_timeout)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            app.state.manager.begin_shutdown()  # open waits answer now
            if registrar is not None:
                registrar.begin_shutdown()  # leave the fleet at once
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            limiter.flush()  # the summaries of peer-driven log lines
            return await super().on_tick(counter)

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
        # Connection-flood guard: the connection cap and request-head
        # timeout live in the protocol class; uvicorn's own limit counts
        # the connection making the request too, so N + 1 leaves the cap to
        # the guard and bounds requests in flight (those whose client left
        # included).
        http=guard.guarded_protocol(limits, on_shed),
        limit_concurrency=plan.max_connections + 1,
        backlog=plan.backlog,
    )
    # After uvicorn configured its loggers: one line per kind and interval
    # for what a peer can make it log at will (accept errors, bad requests).
    guard.attach_log_limit(limiter)
    logging.getLogger("stockade.host.guard").info(
        "connection limits: %s; request head within %g s", plan.describe(), header_timeout
    )
    server = Server(config)
    try:
        with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run does
            server.run()
    finally:
        limiter.flush(force=True)
        if keep_pool_ is not None:
            keep_pool_.close()  # before the fork servers: they wait for their children
        if spawner is not None:
            spawner.close()
        if pool is not None:
            pool.close()
    if not server.started:
        return ExitStatus.SERVER_STARTUP_FAILED  # uvicorn logged why (port in use, ...)
    return ExitStatus.OK


def _registrar(
    fleet: FleetConfig,
    sdir: Path,
    tokens: Tokens,
    backends: tuple[str, ...],
    measurements: dict[str, bytes],
    listen_host: str,
    port: int,
    tls_cert: Path | None,
    fleet_id: str | None,
    fleet_labels: tuple[str, ...],
    fleet_api_url: str | None,
    fleet_ttl: int,
) -> Registrar:
    """The fleet registrar of `host serve --fleet` (stockade.host.fleet)."""
    import time

    from stockade import __version__
    from stockade.fleet.record import HostRecord
    from stockade.host import fleet as fleet_mod
    from stockade.host.loader import HARDWARE_BACKENDS
    from stockade.measure.launch import keep_measurement

    process = keep_measurement()  # what sim, sim-snp and sim-tdx Keeps report (ADR 0013)
    expected = {b: process for b in backends if b in ("sim", "sim-snp", "sim-tdx")}
    expected.update(measurements)
    # Hardware Keeps: the firmware computes the launch measurement; the host
    # does not predict it (empty: placement cannot filter on it).
    for b in HARDWARE_BACKENDS:
        expected.pop(b, None)
    record = HostRecord(
        id=fleet_mod.host_id(sdir, fleet_id),
        api_url=fleet_api_url or fleet_mod.default_api_url(listen_host, port, tls_cert is not None),
        version=__version__,
        offers=fleet_mod.offers_of(backends, expected),
        api_tls_sha256=fleet_mod.tls_sha256(tls_cert) if tls_cert is not None else "",
        labels=fleet_mod.parse_labels(fleet_labels),
        max_keeps=sum(t.quota for t in tokens.entries),
        started=time.time(),
    )
    registrar = fleet_mod.Registrar(fleet, fleet_mod.check_record(record), ttl=fleet_ttl)
    click.echo(
        f"stockade: registering as {record.id} ({record.api_url}) in the fleet at {fleet.url} "
        f"(lease {fleet_ttl} s); serving does not depend on it",
        err=True,
    )
    return registrar


@host.command("sim-root")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Manager state directory (default: $STOCKADE_STATE_DIR or ~/.local/state/stockade).",
)
@click.option("--fingerprint", is_flag=True, help="Print only the SHA-256 of the root certificate (hex).")
@click.option(
    "--crl",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Also write the sim chip's current CRL (DER) to FILE, for `deploy --crl`.",
)
@click.option(
    "--tdx",
    is_flag=True,
    help="The sim TDX chip's root (fake Intel SGX Root CA, backend sim-tdx) instead of the sim ARK.",
)
def sim_root(state_dir: Path | None, fingerprint: bool, crl: Path | None, tdx: bool) -> None:
    """Print this host's sim root certificate (PEM) and its SHA-256.

    Run it ON the host, as its operator, and hand the output to deployers
    over a channel they trust: `stockade deploy --host URL --allow-sim
    --sim-root FILE`, or `[sim] root_sha256 = "HEX"` in their policy. A
    client never trusts a sim root that the host serves over its API
    unless its SHA-256 is pinned so. The sim chip is created if this state
    directory has none (as `stockade host serve` does). sim gives NO
    hardware protection: the host's root user holds the sim chip's keys.
    With --tdx: the root of the sim TDX chip (sim-tdx — NO HARDWARE
    PROTECTION (simulated TDX, for development only)); its CRLs travel in
    the evidence, so --crl does not apply.
    """
    from stockade.errors import UsageError
    from stockade.evidence.sim.chip import ensure_chip, sim_crl
    from stockade.evidence.sim.chip import sim_root as chip_root

    sdir = state_dir or state_dir_default()
    if tdx:
        if crl is not None:
            raise UsageError("--crl applies to the sim SNP chip; sim-tdx evidence carries its CRLs")
        _sim_tdx_root(sdir, fingerprint)
        return
    try:
        if ensure_chip(sdir):
            click.echo(f"stockade: created the sim chip in {sdir} (sim: NO HARDWARE PROTECTION)", err=True)
        der = chip_root(sdir)
        crl_der = sim_crl(sdir) if crl is not None else b""
    except OSError as exc:
        raise UsageError(f"cannot read the sim chip in {sdir}: {exc.strerror or exc}") from None
    if crl is not None:
        try:
            crl.write_bytes(crl_der)
        except OSError as exc:
            raise UsageError(f"--crl: cannot write {crl}: {exc.strerror}") from None
    _print_root(
        der,
        f"sim root of {sdir}",
        fingerprint,
        lambda digest: (
            f'  for a policy: [sim] root_sha256 = "{digest}"\n'
            "  sim gives NO HARDWARE PROTECTION: the host's root user holds the sim chip's keys"
        ),
    )


def _sim_tdx_root(sdir: Path, fingerprint: bool) -> None:
    from stockade.errors import UsageError
    from stockade.evidence.sim.tdx_chip import LABEL, ensure_tdx_chip, sim_tdx_root

    try:
        if ensure_tdx_chip(sdir):
            click.echo(f"stockade: created the sim TDX chip in {sdir} ({LABEL})", err=True)
        der = sim_tdx_root(sdir)
    except OSError as exc:
        raise UsageError(f"cannot read the sim TDX chip in {sdir}: {exc.strerror or exc}") from None
    _print_root(der, f"sim TDX root of {sdir}", fingerprint, lambda digest: f"  {LABEL}")


def _print_root(der: bytes, what: str, fingerprint: bool, notes: Callable[[str], str]) -> None:
    """A sim root for its operator to hand over: the PEM on stdout and its
    SHA-256 with ``notes(digest)`` on stderr, or with ``fingerprint`` the
    SHA-256 alone on stdout."""
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding

    from stockade.evidence.pki import load_der

    digest = hashlib.sha256(der).hexdigest()
    if fingerprint:
        click.echo(digest)
        return
    click.echo(load_der(der, what).public_bytes(Encoding.PEM).decode(), nl=False)
    click.echo(f"stockade: {what}: SHA-256 {digest}\n{notes(digest)}", err=True)
