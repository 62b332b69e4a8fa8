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

import codecs
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, TypeVar

import click

from stockade.client.plan import Prepared, RunOptions, check_publish, prepare
from stockade.commands._fleet import fleet_options
from stockade.commands._output import json_option, safe_text
from stockade.commands._run import deploy_session, print_json, workload_options
from stockade.errors import ExitStatus, KeepDied, StockadeError, UsageError, WorkloadExit

if TYPE_CHECKING:
    from stockade.client.deploy import DeployResult, StdinFile
    from stockade.client.remote import ManagerClient
    from stockade.fleet.etcd import FleetConfig

#: Why a remote sim deploy needs a sim root from the deployer's side.
NEED_SIM_ROOT = (
    "a sim Keep on a remote host is verified only against a sim root you got from the host's "
    "operator, never one the host serves: pass --sim-root FILE, or pin its SHA-256 in a policy "
    '([sim] root_sha256 = "..."); the operator prints both with `stockade host sim-root` on the host'
)


#: Why a remote sim-tdx deploy needs --sim-root (the host serves only the sim ARK).
NEED_SIM_TDX_ROOT = (
    "a sim-tdx Keep on a remote host is verified only against the sim TDX root you got from the "
    "host's operator: pass --sim-root FILE with the root `stockade host sim-root --tdx` prints on the "
    "host (a policy may pin its SHA-256 too, [sim] root_sha256); the host does not serve it"
)


#: Exit status of `stockade keeps wait` when the Keep did not end in time.
WAIT_TIMED_OUT: Final = ExitStatus.WAIT_TIMED_OUT
#: How long `keeps logs --follow` waits for the Keep's end between log reads.
FOLLOW_POLL_S: Final = 1.0

F = TypeVar("F", bound=Callable[..., Any])


def _host_options(fn: F) -> F:
    """--host, --token-file, --cacert and --insecure-http; the command gets
    one ``connection`` keyword (a _Connection)."""
    return _connection_options(required=True)(fn)


def _connection_options(required: bool, with_host: bool = True) -> Callable[[F], F]:
    """:func:`_host_options`; ``required`` False for ``deploy``, where
    ``--fleet`` may name the hosts instead of ``--host``; ``with_host``
    False for commands whose hosts come from the fleet (``fleet keeps``):
    the token and TLS options only."""
    return functools.partial(_add_connection_options, required=required, with_host=with_host)


def _add_connection_options(fn: F, required: bool, with_host: bool) -> F:
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
        help="PEM CA certificate(s) that sign the keep managers' TLS certificates, used instead of the "
        "system CAs ($STOCKADE_HOST_CACERT; https:// only).",
    )
    @click.option(
        "--insecure-http",
        is_flag=True,
        help="Allow sending the API token over plain http to a host that is not loopback.",
    )
    @functools.wraps(fn)
    def wrapper(
        token_file: Path | None,
        cacert: Path | None,
        insecure_http: bool,
        url: str | None = None,
        **kwargs: Any,
    ) -> Any:
        return fn(connection=_Connection(url, token_file, cacert, insecure_http), **kwargs)

    if not with_host:
        return wrapper  # type: ignore[return-value]
    host = click.option(
        "--host",
        "url",
        required=required,
        envvar="STOCKADE_HOST",
        metavar="URL",
        help="Keep manager URL, e.g. https://host.example:8470 or http://127.0.0.1:8470 ($STOCKADE_HOST)"
        + ("." if required else "; or --fleet."),
    )
    return host(wrapper)  # type: ignore[return-value]


class _Connection:
    """Where and how to reach the manager, from the command line."""

    def __init__(
        self, url: str | None, token_file: Path | None, cacert: Path | None, insecure_http: bool
    ) -> None:
        self.url = url or ""
        self.token_file = token_file
        self.cacert = cacert
        self.insecure_http = insecure_http

    def client(self, url: str | None = None, token: str | None = None) -> ManagerClient:
        """A client of ``--host`` (or of ``url``, a host placement chose,
        with ``token`` already read)."""
        from stockade.client.remote import ManagerClient

        return ManagerClient(
            url or self.url,
            token or _token(self.token_file),
            cacert=self.cacert,
            allow_insecure_http=self.insecure_http,
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
@_connection_options(required=False)
@fleet_options(
    required=False,
    help_url="Let placement choose the host among those registered in the fleet's etcd: "
    "etcd://HOST[:PORT][,HOST[:PORT]...] (etcds:// for TLS); instead of --host (docs/fleet.md).",
)
@click.option(
    "--prefer-platform",
    type=click.Choice(["snp", "tdx", "sim", "sim-tdx"]),
    help="With --fleet: try hosts offering this platform first (a preference, not a filter).",
)
@click.option(
    "--host-label",
    "host_labels",
    multiple=True,
    metavar="K=V",
    help="With --fleet: only hosts with this label (repeatable: all must match).",
)
@click.option(
    "--fleet-attempts",
    type=click.IntRange(1, 10),
    default=3,
    show_default=True,
    help="With --fleet: how many hosts to try before giving up (only failures before the release "
    "of secrets and stdin are retried).",
)
@workload_options
@click.option(
    "--backend",
    type=click.Choice(["sim", "sim-snp", "sim-tdx", "vm", "snp", "tdx"]),
    default="sim",
    show_default=True,
    help="Keep backend on the host: sim (alias sim-snp, simulated SEV-SNP), sim-tdx (simulated "
    "TDX) or vm (a VM booting the Keep image, sim signing) give NO hardware protection; snp and tdx "
    "are confidential VMs on real hardware and need --policy pinning the image's measurement "
    "(docs/vm-hardware.md).",
)
@click.option(
    "--image",
    type=click.Path(file_okay=False, path_type=Path),
    help="For --backend vm: the Keep image whose launch measurement to expect (default: this "
    "installation's, built in the state directory; images build reproducibly, so it equals the "
    "host's when both run the same stockade).",
)
@click.option(
    "--sim-root",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="The host's sim root certificate (PEM or DER), from its operator's `stockade host sim-root` "
    "(`--tdx` for --backend sim-tdx); needed to verify a sim Keep unless the policy pins it "
    "([sim] root_sha256; sim only).",
)
@click.option(
    "--crl",
    "crls",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="CRL (DER or PEM) to check the Keep's certificate chain against, e.g. AMD's KDS CRL, "
    "or the sim chip's from `stockade host sim-root --crl`.",
)
@click.option(
    "--publish",
    "publish",
    multiple=True,
    metavar="NAME",
    help="Have the keep manager publish the package's listen socket NAME on a port of its own "
    "(host serve --keep-ports) and forward it to the Keep, bytes only (repeat; not with --listen NAME).",
)
@click.option(
    "--stage-on-host",
    is_flag=True,
    help="Upload the package to the host, which hands it to the Keep (untrusted: the Keep "
    "loads it only if its digest matches, and attests what it loaded).",
)
def deploy(
    connection: _Connection,
    fleet: FleetConfig | None,
    prefer_platform: str | None,
    host_labels: tuple[str, ...],
    fleet_attempts: int,
    sim_root: Path | None,
    crls: tuple[Path, ...],
    **kwargs: Any,
) -> WorkloadExit:
    """Run a module or package in a fresh Keep on a remote host, after verifying its attestation.

    Like `stockade run`, but the Keep is started by the keep manager at
    --host and reached through its relay. The attested TLS session is end
    to end: the host relays ciphertext only. A sim Keep (--allow-sim, or a
    policy that lists sim) is verified against the sim root of --sim-root,
    or against the one the host serves only if its SHA-256 is the one the
    policy pins ([sim] root_sha256); sim gives NO hardware protection
    either way. --crl gives CRLs to check the Keep's certificate chain
    against; the summary says whether revocation was checked. An https://
    --host protects the API token and the Keep's metadata on the way; the
    workload and its secrets are protected by the attested session either
    way.

    With --fleet URL instead of --host, the host is chosen from the fleet
    registered in etcd (docs/fleet.md, "Placement"): hosts whose platforms
    the policy accepts, not drained, with capacity and the --host-label
    labels; least loaded first (--prefer-platform first of all). If
    creating, attesting or verifying the Keep fails on a host, the next one
    is tried (--fleet-attempts); once secrets and stdin are released to a
    Keep, a failure is final. What the fleet says is never trusted: the
    Keep's attestation decides as with --host.
    """
    ctx = click.get_current_context()
    fleet_only = {"--prefer-platform": prefer_platform, "--host-label": host_labels}
    if fleet is None:
        if not connection.url:
            raise UsageError("deploy needs --host URL (or $STOCKADE_HOST) or --fleet URL")
        given = [name for name, value in fleet_only.items() if value]
        if ctx.get_parameter_source("fleet_attempts") is click.core.ParameterSource.COMMANDLINE:
            given.append("--fleet-attempts")
        if given:
            raise UsageError(f"{', '.join(given)} only go with --fleet")
    elif ctx.get_parameter_source("url") is click.core.ParameterSource.COMMANDLINE:
        raise UsageError(
            "--host and --fleet are mutually exclusive: --host names the host, --fleet lets placement choose"
        )
    opts = RunOptions(state_dir=None, **kwargs)
    if opts.publish and fleet is not None:
        raise UsageError("--publish needs --host URL: the keep manager there publishes the port")
    crl_ders = tuple(_read_crl(path) for path in crls)
    if fleet is None:
        return _deploy(connection, opts, sim_root, crl_ders)
    from stockade.commands._fleet_deploy import FleetRequest, deploy_fleet
    from stockade.fleet.record import parse_label_options

    request = FleetRequest(
        fleet,
        prefer_platform,
        parse_label_options("--host-label", host_labels),
        fleet_attempts,
        backend_given=ctx.get_parameter_source("backend") is not click.core.ParameterSource.DEFAULT,
    )
    return deploy_fleet(request, connection, opts, sim_root, crl_ders)


def _read_crl(path: Path) -> bytes:
    """The DER of the CRL in ``path`` (DER or PEM); UsageError if none."""
    from cryptography import x509

    from stockade.commands._files import read_input

    data = read_input(path, "--crl")
    try:
        if data.lstrip().startswith(b"-----"):
            from cryptography.hazmat.primitives.serialization import Encoding

            return x509.load_pem_x509_crl(data).public_bytes(Encoding.DER)
        x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise UsageError(f"--crl {path}: not a CRL (DER or PEM): {exc}") from None
    return data


def _client_sim_root(
    client: ManagerClient, opts: RunOptions, sim_root_file: Path | None
) -> tuple[bytes | None, tuple[str, ...]]:
    """The sim root this deploy verifies sim evidence against, and a line
    for the summary: the one of ``--sim-root``, or the one the host serves
    if the policy pins its SHA-256; never a root only the host vouches for
    (it could serve the root of a chip it just made up, and forge sim
    evidence under it). This pins which sim chip; whoever holds that chip's
    keys can still forge its evidence: sim never protects anything."""
    import hashlib

    from stockade.client.plan import SIM_BACKEND_PLATFORM
    from stockade.commands._files import read_sim_root
    from stockade.errors import VerificationFailed
    from stockade.policy import load_policy

    platform = SIM_BACKEND_PLATFORM.get(opts.backend, opts.backend)
    policy = load_policy(opts.policy) if opts.policy is not None else None
    pins = policy.sim_roots if policy is not None else ()
    allows_sim = opts.allow_sim or (policy is not None and platform in policy.platforms)
    if sim_root_file is not None:
        der = read_sim_root(sim_root_file)
        digest = hashlib.sha256(der).digest()
        if pins and digest not in pins:
            raise UsageError(
                f"--sim-root {sim_root_file}: its SHA-256 {digest.hex()} is not a [sim] root_sha256 "
                f"of the policy {opts.policy}"
            )
        return der, (f"  sim root     {digest.hex()[:16]}… from --sim-root {sim_root_file}",)
    if platform == "sim-tdx" and (pins or allows_sim):
        raise UsageError(NEED_SIM_TDX_ROOT)
    if pins:
        der = client.sim_root()
        digest = hashlib.sha256(der).digest()
        if digest not in pins:
            raise VerificationFailed(
                f"the host serves a sim root with SHA-256 {digest.hex()}, which is not the "
                f"[sim] root_sha256 of the policy {opts.policy}: refusing its Keeps"
            )
        return der, (f"  sim root     served by the host; SHA-256 {digest.hex()[:16]}… pinned by the policy",)
    if allows_sim:
        raise UsageError(NEED_SIM_ROOT)
    return None, ()


def keep_measurement_for(opts: RunOptions) -> Callable[[], bytes]:
    """What the Keep's launch measurement is pinned to for ``opts.backend``
    (unless the policy or --expect-measurement say otherwise): this
    installation's Keep runtime (hashed in the background while we talk to
    the host), or for a VM Keep the launch digest of the Keep image built
    here."""
    from stockade.measure.launch import measure_in_background

    if opts.backend in ("snp", "tdx"):
        # The firmware's measurement depends on the host's firmware and vCPUs:
        # only a policy written for them pins it (stockade policy reference
        # --image DIR --platform snp ..., stockade image measure tdx).
        if opts.policy is None:
            raise UsageError(
                f"--backend {opts.backend} needs --policy pinning the Keep image's launch measurement "
                "(docs/vm-hardware.md)"
            )

        def unused() -> bytes:
            return bytes(48)  # unused: the policy's measurements decide

        return unused
    if opts.backend == "vm":
        from stockade.commands._vm import expected_vm_measurement

        vm_digest = expected_vm_measurement(opts)

        def vm() -> bytes:
            return vm_digest

        return vm
    return measure_in_background()


def _deploy(
    connection: _Connection, opts: RunOptions, sim_root_file: Path | None, crls: tuple[bytes, ...]
) -> WorkloadExit:
    keep_measurement = keep_measurement_for(opts)
    prepared = prepare(opts)
    published: dict[str, str] = {}
    with connection.client() as client:
        result, out, keep_id = deploy_on(
            client, opts, prepared, keep_measurement, sim_root_file, crls, published=published
        )
    if opts.as_json:
        extra: dict[str, Any] = {"published": published} if published else {}
        print_json(result, out, keep_id=keep_id, host=connection.url, **extra)
    return WorkloadExit(result.exit_code)


def deploy_on(
    client: ManagerClient,
    opts: RunOptions,
    prepared: Prepared,
    keep_measurement: Callable[[], bytes],
    sim_root_file: Path | None,
    crls: tuple[bytes, ...],
    *,
    on_created: Callable[[str], None] = lambda keep_id: None,
    on_release: Callable[[], None] = lambda: None,
    stdin: bytes | StdinFile | None = None,
    published: dict[str, str] | None = None,
) -> tuple[DeployResult, dict[int, bytearray], str]:
    """One deploy on the manager of ``client``: create a Keep of
    ``opts.backend``, attest it, and run the workload there; the result,
    the output kept for --json and the Keep's id. ``on_created`` gets the
    Keep's id as soon as the host made it; ``on_release`` marks the release
    point (:class:`stockade.client.deploy.ReleaseMark`). ``published``
    gets NAME -> public HOST:PORT of each --publish socket."""
    from stockade.client.hello import send_hello
    from stockade.client.progress import Phase
    from stockade.client.remote import published_of
    from stockade.commands._progress import progress_for

    # The manager records the limits it knows (its API predates disk_bytes,
    # which the Keep alone enforces from the attested load request).
    limits = {k: v for k, v in prepared.limits_map().items() if k != "disk_bytes"}
    # Before anything is created on the host: a refusal costs it nothing.
    publish = check_publish(opts, prepared.manifest)
    sim_root, extra = _client_sim_root(client, opts, sim_root_file)
    # The root verifies evidence of the backend's shape only.
    sim_tdx_root = sim_root if opts.backend == "sim-tdx" else None
    sim_root = None if opts.backend == "sim-tdx" else sim_root
    progress = progress_for(opts)
    keep = client.create(opts.backend, limits, publish)
    keep_id = str(keep["id"])
    on_created(keep_id)
    if publish:
        forwarded = published_of(keep, publish)
        # The Keep binds the manager's Unix socket; the manager forwards its
        # public port there (TLS records only).
        binds = tuple(f"{name}={bind}" for name, (_, bind) in forwarded.items())
        opts = dataclasses.replace(opts, listen=opts.listen + binds)
        for name, (public, _) in forwarded.items():
            click.echo(
                f"stockade: published {name} at {safe_text(public, limit=300)} (forwarded by the keep manager)",
                err=True,
            )
            if published is not None:
                published[name] = public

    def exit_status() -> int | None:
        try:
            status = client.get(keep_id).get("exit_status")
        except StockadeError:
            return None
        return status if isinstance(status, int) else None

    if opts.stage_on_host:
        client.stage(keep_id, prepared.package)
    sock = client.connect(keep_id)
    hello = None
    try:
        # The TLS ClientHello right after the nonce: the Keep answers it as
        # soon as its certificate is made, while this client plans.
        hello = send_hello(sock, start_tls=True)
        # From here the client only sees the Keep's evidence arrive (client/progress.py).
        progress.enter(Phase.ATTESTING)
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
            crls=crls,
            sim_tdx_root=sim_tdx_root,
            progress=progress,
            on_release=on_release,
            stdin=stdin,
        )
    except KeepDied as err:
        raise KeepDied(f"{err.detail}; Keep {keep_id} on {client.url}") from None
    finally:
        sock.close()
        if hello is not None and hello.tls is not None:
            hello.tls.close()  # it owns the stream once the ClientHello went
    return result, out, keep_id


@click.group()
def keeps() -> None:
    """List, inspect, wait for and kill Keeps on a remote keep manager."""


def _jsonable(doc: dict[Any, Any]) -> dict[Any, Any]:
    return {k: (v.hex() if isinstance(v, bytes) else v) for k, v in doc.items()}


@keeps.command("ls")
@_host_options
@json_option("Print the Keeps as one JSON document.")
def ls(connection: _Connection, as_json: bool) -> None:
    """List this token's Keeps on the host."""
    url = connection.url
    with connection.client() as client:
        records = client.list()
    docs = [_jsonable(r) for r in records]
    if as_json:
        click.echo(json.dumps({"keeps": docs}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    def cell(value: object, style: str = "") -> Text:
        # Every field comes from the host: control characters are escaped
        # and a Text is never parsed for markup ("[bold]" stays literal).
        return Text(safe_text("" if value is None else value, limit=256), style=style)

    table = Table(title=Text(f"Keeps on {safe_text(url)}"))
    for column in ("id", "state", "backend", "pid", "exit", "created", "detail"):
        table.add_column(column, overflow="fold", no_wrap=column in ("id", "state"))
    style = {"running": "green", "exited": "", "failed": "red", "killed": "yellow", "lost": "red"}
    for d in docs:
        state = str(d.get("state", "?"))
        table.add_row(
            cell(d.get("id")),
            cell(state, style.get(state, "")),
            cell(d.get("backend", "")),
            cell(d.get("pid", "")),
            cell(d.get("exit_status", "")),
            cell(str(d.get("created_at", ""))[:19]),
            cell(d.get("detail", "")),
        )
    Console().print(table)


@keeps.command("kill")
@click.argument("keep_id")
@_host_options
@json_option("Print the Keep as one JSON document.")
def kill(keep_id: str, connection: _Connection, as_json: bool) -> None:
    """Kill a Keep (SIGTERM, then SIGKILL after a grace period)."""
    with connection.client() as client:
        rec = client.kill(keep_id)
    if as_json:
        click.echo(json.dumps(_jsonable(rec), indent=2))
    else:
        click.echo(f"Keep {safe_text(rec.get('id'))}: {safe_text(rec.get('state'))}")


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
@json_option("Print the Keep and timed_out as one JSON document.")
def wait(keep_id: str, connection: _Connection, timeout: float, as_json: bool) -> int:
    """Wait until a Keep has ended (exited, failed, killed or lost).

    Exit status: 0 if the Keep exited (its process ended with status 0: a
    normal end of session; the workload's own exit code is known only to
    the client that deployed it), 115 if it failed, was killed or was lost,
    124 if it was still active after --timeout seconds.
    """
    deadline = time.monotonic() + timeout
    with connection.client() as client:
        while True:  # the manager grants at most 300 s per request
            rec = client.wait(keep_id, max(0.0, deadline - time.monotonic()))
            if not rec["timed_out"] or time.monotonic() >= deadline:
                break
    state = str(rec.get("state"))
    # An outcome, not an error: 115 (the class of KeepDied) when the Keep
    # ended other than by exiting; the Keep document is printed either way.
    code = WAIT_TIMED_OUT if rec["timed_out"] else ExitStatus.OK if state == "exited" else KeepDied.exit_code
    if as_json:
        click.echo(json.dumps({**_jsonable(rec), "exit_code": code}, indent=2))
    else:
        detail = f" ({safe_text(rec['detail'])})" if rec.get("detail") else ""
        shown = safe_text(state)
        still = f", still {shown} after {timeout:g} s" if rec["timed_out"] else f": {shown}{detail}"
        click.echo(f"Keep {safe_text(rec.get('id'))}{still}")
    return code


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
    once the Keep has ended. The log is written by the host: on a terminal,
    control characters and escape sequences in it are shown escaped
    (\\x1b ...); into a pipe or a file, its bytes are written unchanged.
    """
    out = _LogOutput(sys.stdout.buffer, sys.stdout.isatty())
    try:  # on an error too: what the decoder holds is written first
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
    finally:
        out.finish()


class _LogOutput:
    """Where `keeps logs` writes the host's log bytes: unchanged into a
    pipe or a file (the exact log, for tools), or decoded as UTF-8 and
    passed through safe_text (newlines and tabs kept) on a terminal, so
    that the host cannot move the cursor, rewrite lines or set the title.
    The decoder is incremental: a character or an escape split between two
    reads is handled like one in a single read."""

    def __init__(self, stream: BinaryIO, terminal: bool) -> None:
        self.stream = stream
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace") if terminal else None

    def write(self, data: bytes, final: bool = False) -> None:
        if self.decoder is not None:
            text = self.decoder.decode(data, final)
            data = safe_text(text, multiline=True, limit=None).encode("utf-8")
        if data:
            self.stream.write(data)

    def flush(self) -> None:
        self.stream.flush()

    def finish(self) -> None:
        """Write what the decoder still holds (an incomplete character)."""
        self.write(b"", final=True)
        self.stream.flush()
