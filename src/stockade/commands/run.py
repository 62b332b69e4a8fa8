"""``stockade run``: a module or package in a fresh local Keep, after its
attestation is verified and accepted by the policy (the remote counterpart
is ``stockade deploy --host``, :mod:`stockade.commands.remote`)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stockade.client.plan import RunOptions, compile_cache_dir, prepare, state_dir
from stockade.client.progress import Phase
from stockade.commands._progress import progress_for
from stockade.commands._run import deploy_session, print_json, workload_options
from stockade.errors import KeepDied, WorkloadExit

if TYPE_CHECKING:
    from stockade.host.loader import KeepHandle
    from stockade.host.warm import WarmKeep


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("wasm", metavar="WASM|PACKAGE", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("args", nargs=-1)
@click.option(
    "--backend",
    type=click.Choice(["sim", "sim-snp", "sim-tdx", "vm"]),
    default="sim",
    show_default=True,
    help="Keep backend on this host: sim (alias sim-snp) is a simulated SEV-SNP PSP, sim-tdx a "
    "simulated TDX quoting enclave, vm a QEMU VM booting the Keep image with sim signing; all give "
    "NO hardware protection.",
)
@click.option(
    "--image",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep image directory for --backend vm (default: one built in the state directory, "
    "rebuilt when this installation's Keep runtime changes).",
)
@click.option(
    "--accel",
    type=click.Choice(["auto", "kvm", "tcg"]),
    default="auto",
    show_default=True,
    help="VM acceleration for --backend vm: auto uses KVM only where a test guest runs under it.",
)
@click.option(
    "--no-compile-cache",
    is_flag=True,
    help="Compile the module in the Keep every time: no sealed compile cache (by default a sim Keep "
    "keeps its compiled code in $XDG_CACHE_HOME/stockade/compile, sealed under a key only a Keep of "
    "the same runtime derives; docs/adr/0023-sealed-compile-cache.md).",
)
@workload_options
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), help="State directory.")
@click.option(
    "--cold",
    is_flag=True,
    help="Start a fresh Keep process instead of forking one from this user's warm fork server "
    "(sim backends; also STOCKADE_WARM=0). The Keep is attested and checked the same either way.",
)
def run(cold: bool, **kwargs: Any) -> WorkloadExit:
    """Run a module or package in a fresh Keep after verifying its attestation.

    WASM|PACKAGE is a WebAssembly module or a package (`stockade package
    build`). Arguments after it (use -- before options meant for the
    workload) are passed to the workload. Nothing of the workload leaves
    this machine before the Keep's evidence is verified and accepted by the
    policy; secrets and stdin leave only after a second attestation proves
    which package the Keep loaded. The exit status is the workload's own,
    or a stockade failure code (docs/exit-codes.md).
    """
    opts = RunOptions(**kwargs)
    from stockade.commands._warm import WarmStart, chip_ready, sim_flavour

    sdir = state_dir(opts.state_dir)
    flavour = sim_flavour(opts.backend)
    # The Keep's sealed compile cache (ADR 0023), on the cold and warm paths alike.
    cache = None if opts.no_compile_cache else compile_cache_dir()
    # Warm path (ADR 0022): a Keep forked by the per-user fork server, asked
    # for first so that it forks while this process gets ready.
    warm_start = WarmStart(opts.backend, sdir, cold, cache) if chip_ready(sdir, flavour) else None
    try:
        prepared = prepare(opts)
    except BaseException:
        if warm_start is not None:
            warm_start.cancel()
        raise
    if flavour == "tdx":
        from stockade.evidence.sim import tdx_chip

        if not tdx_chip.tdx_chip_exists(sdir) and not opts.quiet and not opts.as_json:
            click.echo("stockade: creating the sim TDX chip key chain (first use, a few seconds)", err=True)
        tdx_chip.ensure_tdx_chip(sdir)
    elif not chip_ready(sdir, flavour):
        from stockade.evidence.sim import chip

        if not opts.quiet and not opts.as_json:
            click.echo("stockade: creating the sim chip key chain (first use, a few seconds)", err=True)
        chip.ensure_chip(sdir)

    if warm_start is None:  # the chip was just created
        warm_start = WarmStart(opts.backend, sdir, cold, cache)
    if warm_start.pending is not None:
        # While the server forks: the hello goes out as soon as the Keep is here.
        import stockade.client.deploy  # noqa: F401
    warm, keep_line = warm_start.finish()
    # The cold path's loader (and in-process sim PSP) is imported only for a cold start.
    # Start the Keep first: its start-up overlaps everything below.
    # die_with_parent: a killed `stockade run` takes its Keep along. Its
    # boot ends with its first request to the PSP (client/progress.py).
    extra: tuple[str, ...] = () if opts.backend == "vm" else (keep_line,)
    if warm is None:
        from stockade.evidence.sim.local import serve_in_thread
        from stockade.host.loader import PopenSpawner, start_keep
    if opts.backend == "vm":
        from stockade.commands._vm import local_vm_spawner

        spawner: Any = local_vm_spawner(sdir, opts)  # builds the image first when needed
        cfg = spawner.cfg
        extra = (
            f"  keep         a VM ({cfg.accel.upper()}, {cfg.memory_mib} MiB) booted from the Keep image "
            f"{cfg.image.directory}; its measurement covers the kernel, initrd and command line",
        )
    elif warm is None:
        spawner = PopenSpawner(die_with_parent=True)
    progress = progress_for(opts)
    attesting = functools.partial(progress.enter, Phase.ATTESTING)
    handle: KeepHandle | WarmKeep
    hello = None
    if warm is not None:
        handle = warm
        attesting()  # forked with its hello pending: it attests from now on
    else:
        handle = start_keep(
            opts.backend,
            sdir,
            psp=lambda measurement: serve_in_thread(
                sdir, measurement, flavour=flavour, on_first_request=attesting
            ),
            spawner=spawner,
            compile_cache=cache,
        )
    try:
        from stockade.client.hello import send_hello

        # The nonce goes out at once: the Keep attests while we get ready.
        # A forked Keep is ready at once: the TLS ClientHello goes too (on
        # the cold path, ssl is imported later, while the Keep starts).
        hello = send_hello(handle.conn, start_tls=warm is not None)
        # The local sim root is used to *verify* sim evidence; acceptance is
        # the policy's decision (the default policy refuses sim). For sim
        # (SNP shape), the local sim chip's CRL is the revocation collateral
        # this client holds; sim-tdx evidence carries its signed collateral
        # and CRLs, verified under the local sim TDX root. First: the sim
        # chip's imports are most of the in-process PSP's, which the Keep
        # waits for; the workload and the verifier come after.
        crls: tuple[bytes, ...] = ()
        if flavour == "tdx":
            from stockade.evidence.sim import tdx_chip

            sim_root, sim_tdx_root = None, tdx_chip.sim_tdx_root(sdir)
        else:
            from stockade.evidence.sim import chip

            sim_root, sim_tdx_root, crls = chip.sim_root(sdir), None, _local_crls(sdir)
        result, out = deploy_session(
            handle.conn,
            handle.measurement,
            lambda: handle.wait(0.5),
            prepared,
            opts,
            sim_root,
            hello,
            extra,
            crls=crls,
            sim_tdx_root=sim_tdx_root,
            state_dir=sdir,
            progress=progress,
        )
    except KeepDied as err:
        # A refused launch measurement (exit 120) is the cause when there is
        # one; else the host-side log of the Keep process (never workload
        # data) says why.
        handle.check_measured()
        raise KeepDied(f"{err.detail}; Keep log: {handle.log_path}") from None
    finally:
        if hello is not None and hello.tls is not None:
            hello.tls.close()  # it owns the stream once the ClientHello went
        handle.close()
    if opts.as_json:
        print_json(result, out, keep_start="warm" if warm is not None else "cold")
    return WorkloadExit(result.exit_code)


def _local_crls(sdir: Path) -> tuple[bytes, ...]:
    """The sim chip's CRL, issued here (it holds the sim ARK's key); none
    when it cannot be issued (the summary then says revocation was not
    checked)."""
    from stockade.evidence.sim import chip

    try:
        return (chip.sim_crl(sdir),)
    except (OSError, ValueError):
        return ()
