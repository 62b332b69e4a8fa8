"""Pieces shared by ``stockade run`` (a local Keep) and ``stockade deploy
--host`` (a Keep on a remote keep manager): the shared options, the
verification summary, the deploy session's printing and the JSON result.
What to deploy and under which policy is decided in
:mod:`stockade.client.plan`."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stockade.client.plan import RunOptions
from stockade.commands._output import json_option

if TYPE_CHECKING:
    from stockade.client.attest import Appraisal
    from stockade.client.deploy import DeployResult, StdinFile
    from stockade.client.hello import SentHello
    from stockade.client.identity import WorkloadIdentity
    from stockade.client.plan import Prepared
    from stockade.client.progress import Progress
    from stockade.steward.request import VerifiedIssuance
    from stockade.wire.messages import Net

SIM_WARNING = "sim — NO HARDWARE PROTECTION (simulated SEV-SNP, for development only)"
SIM_TDX_WARNING = "sim-tdx — NO HARDWARE PROTECTION (simulated TDX, for development only)"
#: Platform -> (platform line, name of the root in the signer line).
_LABELS = {
    "sim": (SIM_WARNING, "sim root"),
    "sim-tdx": (SIM_TDX_WARNING, "sim TDX root"),
    "snp": ("", "AMD root"),
    "tdx": ("", "Intel SGX Root CA"),
    "sgx": ("", "Intel SGX Root CA"),
}


def summary(appraisal: Appraisal, policy_note: str, extra: tuple[str, ...] = ()) -> str:
    c = appraisal.claims
    label, root = _LABELS.get(c.platform, ("", "root"))
    platform = label or f"{c.platform} ({c.product})"
    intel = c.platform in ("tdx", "sgx", "sim-tdx")
    if intel:
        # TDX/SGX shape: MRTD (MRENCLAVE for SGX) is the measurement, the
        # TCB is judged by Intel's TCB info (status), the signer is the PCK.
        what = "MRENCLAVE" if c.platform == "sgx" else "MRTD"
        advisories = f", advisories {', '.join(c.advisory_ids)}" if c.advisory_ids else ""
        tcb_line = f"  tcb          {c.tcb_status}{advisories} (FMSPC {c.fmspc}, {c.firmware}, quote v{c.report_version})"
        measurement = f"  measurement  {c.measurement.hex()} ({what})"
        signer = f"  signer       PCK -> {root} {c.root_fingerprint[:16]}…"
    else:
        tcb = " ".join(f"{k}={v}" for k, v in c.tcb)
        tcb_line = f"  tcb          {tcb} (firmware {c.firmware}, report v{c.report_version})"
        measurement = f"  measurement  {c.measurement.hex()}"
        signer = f"  signer       {c.signer} -> {root} {c.root_fingerprint[:16]}…"
    lines = [
        "stockade: Keep attested and verified",
        f"  platform     {platform}",
        measurement,
        tcb_line,
        signer,
        f"  revocation   {appraisal.revocation.summary()}",
        "  freshness    report binds this session's nonce and the Keep's TLS key",
        f"  debug        {'ALLOWED' if c.debug else 'disabled'}",
        f"  policy       {policy_note}",
        *extra,
    ]
    return "\n".join(lines)


def identity_summary(identity: WorkloadIdentity) -> str:
    from stockade.commands._output import safe_text

    # Names and roles are the package's text, as the Keep reported them.
    signers = ", ".join(f"{safe_text(role)} {kid[:16]}…" for role, kid in identity.signers) or "none checked"
    return "\n".join(
        [
            "stockade: workload identity attested; releasing secrets",
            f"  package      {safe_text(identity.package_name)} {identity.package_digest.hex()}",
            f"  signatures   {signers}",
            f"  event log    {len(identity.events)} events, register {identity.register.hex()[:32]}…",
        ]
    )


def deploy_session(
    conn: socket.socket,
    runtime_measurement: bytes,
    keep_exit_status: Callable[[], int | None],
    prepared: Prepared,
    opts: RunOptions,
    sim_root: bytes | None,
    hello: SentHello,
    extra_summary: tuple[str, ...] = (),
    staged: bool = False,
    crls: tuple[bytes, ...] = (),
    sim_tdx_root: bytes | None = None,
    state_dir: Path | None = None,
    progress: Progress | None = None,
    on_release: Callable[[], None] = lambda: None,
    stdin: bytes | StdinFile | None = None,
) -> tuple[DeployResult, dict[int, bytearray]]:
    """Plan the deploy from ``opts`` (:func:`stockade.client.plan.plan_deploy`)
    and run one deploy session over ``conn`` (a stream to a fresh Keep, the
    hello already sent), printing the summary and the workload's output.
    ``runtime_measurement`` is what the measurement is pinned to unless
    ``opts`` says otherwise; ``crls`` (DER) are the CRLs the client holds,
    applied to the Keep's evidence chain; ``sim_tdx_root`` verifies sim-tdx
    evidence; TDX/SGX quotes are verified with the Intel collateral of
    ``opts.collateral`` or the cache under ``state_dir``
    (client/collateral.py). ``progress`` (the caller's, already past
    booting) is told the phases of the session, and its status line is
    cleared before anything is printed. ``on_release`` marks the release
    point (:class:`stockade.client.deploy.ReleaseMark`); ``stdin``: the
    workload's input when the caller read it already."""
    from stockade.client.attest import TrustConfig
    from stockade.client.collateral import intel_source
    from stockade.client.deploy import Steps, deploy
    from stockade.client.plan import plan_deploy
    from stockade.client.plan import state_dir as default_state_dir
    from stockade.client.progress import Progress
    from stockade.client.steward import prepare_steward, summary_line

    steps = Steps()
    progress = progress or Progress()
    planned = plan_deploy(opts, prepared, runtime_measurement, staged=staged, stdin=stdin)
    note, notes = planned.policy_note, planned.notes
    # The steward's log key, under the pinned CA: before anything of the
    # workload leaves (an unreachable steward or a wrong --steward-ca ends
    # the deploy here).
    steward = None if planned.steward is None else prepare_steward(planned.steward)
    # The sim root is used to *verify* sim evidence; acceptance is the
    # policy's decision (the default policy refuses sim).
    trust = TrustConfig(
        sim_root=sim_root,
        policy=planned.policy,
        crls=crls,
        sim_tdx_root=sim_tdx_root,
        intel=intel_source(opts.collateral, default_state_dir(state_dir), opts.offline),
    )
    out: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}

    def on_output(fd: int, data: bytes) -> None:
        if opts.as_json:
            out[fd] += data
            return
        progress.clear()  # the status line is gone before the workload's first byte
        stream = sys.stdout.buffer if fd == 1 else sys.stderr.buffer
        stream.write(data)
        stream.flush()

    def on_verified(appraisal: Appraisal) -> None:
        if opts.as_json:
            return  # the JSON document carries the appraisal and the label
        progress.clear()
        if not opts.quiet:
            click.echo(summary(appraisal, note, (*extra_summary, *notes)), err=True)
        elif not appraisal.claims.hardware_protected:
            # sim output is always labelled, even with --quiet.
            click.echo(f"stockade: {appraisal.claims.platform} Keep: NO HARDWARE PROTECTION", err=True)

    def on_net(event: Net) -> None:
        # Not the workload's data: what the Keep runtime did with its
        # sockets (keep/netsock.py). JSON: the "net" list of print_json.
        if not opts.as_json:
            progress.clear()
            click.echo(net_line(event), err=True)

    def on_identity(identity: WorkloadIdentity) -> None:
        if not opts.as_json and not opts.quiet and not prepared.from_module:
            progress.clear()
            click.echo(identity_summary(identity), err=True)

    def on_certificate(issuance: VerifiedIssuance) -> None:
        if not opts.as_json and not opts.quiet:
            progress.clear()
            click.echo(summary_line(issuance), err=True)

    steps.mark("client_prepare")
    result = deploy(
        conn,
        planned.plan,
        trust,
        on_output,
        on_verified,
        keep_exit_status,
        steps,
        hello,
        on_identity=on_identity,
        progress=progress,
        on_release=on_release,
        on_net=on_net,
        steward=steward,
        on_certificate=on_certificate,
    )
    if progress is not None:
        result.timing_ms.update({f"phase_{k}": v for k, v in progress.durations_ms().items()})
    if opts.timings and not opts.as_json:
        click.echo(timings_text(result.timing_ms), err=True)
    return result, out


#: Where each step of DeployResult.timing_ms is measured, and what it is.
_STEP_NOTES = {
    "client_prepare": "client: plan, policy, trust (after the hello went out)",
    "attest_and_handshake": "client: waiting for the evidence and the TLS handshake",
    "verify": "client: evidence verification and policy",
    "transfer": "client: sending the workload",
    "identity": "client: the second report and the workload identity check",
    "certificate": "client: from the release to the Keep's verified service certificate (--steward)",
    "run": "client: from the release to the exit (streaming output)",
}


def timings_text(timing_ms: dict[str, float]) -> str:
    """The ``--timings`` table: the deploy's phases as the client saw them,
    then its steps (client_*, and keep_* measured inside the Keep)."""
    lines = ["stockade: timings (ms)"]
    phases = [(k.removeprefix("phase_"), v) for k, v in timing_ms.items() if k.startswith("phase_")]
    if phases:
        lines.append("  phases (client's view)")
        lines += [f"    {name:<22} {ms:>10.1f}" for name, ms in phases]
    client = [(k, v) for k, v in timing_ms.items() if not k.startswith(("phase_", "keep_"))]
    if client:
        lines.append("  client steps")
        lines += [f"    {k:<22} {v:>10.1f}  {_STEP_NOTES.get(k, '')}".rstrip() for k, v in client]
    cached = timing_ms.get("keep_compile_cached")
    keep = sorted(
        (
            (k.removeprefix("keep_"), v)
            for k, v in timing_ms.items()
            if k.startswith("keep_") and k != "keep_compile_cached"
        ),
        key=lambda kv: kv[0],
    )
    notes = {} if cached is None else {"compile": f"cached={'true' if cached else 'false'}"}
    if keep:
        lines.append("  Keep steps (measured inside the Keep)")
        lines += [f"    {k:<22} {v:>10.1f}  {notes.get(k, '')}".rstrip() for k, v in keep]
    return "\n".join(lines)


def print_json(result: DeployResult, out: dict[int, bytearray], **extra: Any) -> None:
    doc: dict[str, Any] = {
        "exit_code": result.exit_code,
        "exit_code_source": "workload",
        "stdout": out[1].decode("utf-8", "replace"),
        "stderr": out[2].decode("utf-8", "replace"),
        "workload_sha256": result.workload_sha256.hex(),
        "workload": result.identity.to_json(),
        "attestation": {
            **result.appraisal.claims.to_json(),
            "checks": list(result.appraisal.checks),
            "revocation": result.appraisal.revocation.to_json(),
        },
        "policy": result.appraisal.decision.to_json() if result.appraisal.decision else None,
        "timing_ms": result.timing_ms,
        **extra,
    }
    if result.net:
        doc["net"] = [{"event": n.event, "name": n.name, "detail": n.detail} for n in result.net]
    if result.issuance is not None:
        # The Keep's service certificate and its place in the steward's log,
        # both verified (stockade.client.steward.check_certificate).
        doc["certificate"] = result.issuance.certificate_pem
        doc["inclusion"] = result.issuance.inclusion_json()
    click.echo(json.dumps(doc, indent=2))


def net_line(event: Net) -> str:
    """One stderr line for a ``net`` event (the detail is printable text,
    checked by the message's decoder)."""
    return f"stockade: net: {event.event} {event.name} {event.detail}"


def workload_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The click options that ``run`` and ``deploy`` share (what to run and
    which Keeps to trust), in the order ``--help`` shows them."""
    options = [
        click.option(
            "--allow-sim",
            is_flag=True,
            help="Accept sim evidence (NO hardware protection): the development policy.",
        ),
        click.option(
            "--policy",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Trust policy file (docs/policy.md); default: the built-in policy.",
        ),
        click.option(
            "--env", "env", multiple=True, metavar="K=V", help="Environment variable for the workload."
        ),
        click.option(
            "--stdin",
            "stdin",
            metavar="FILE|-",
            help="Standard input for the workload (more than 1 MiB, or -, is streamed as it runs).",
        ),
        click.option(
            "--file",
            "files",
            multiple=True,
            metavar="HOST[:GUEST]",
            help="File or directory sent through the attested channel, visible under / in the Keep.",
        ),
        click.option(
            "--secret",
            "secret_refs",
            multiple=True,
            metavar="NAME=@FILE",
            help="Secret sent only after verification, visible as /secrets/NAME.",
        ),
        click.option(
            "--timeout", type=float, help="Wall-clock limit, seconds [default: the package's, else 30]."
        ),
        click.option("--memory", help="Linear memory limit [default: the package's, else 256M]."),
        click.option("--max-output", help="Limit on stdout+stderr bytes [default: the package's, else 64M]."),
        click.option(
            "--disk",
            help="Limit on the workload's files (package, --file/--dir, secrets, what it writes) "
            "[default: the package's, else 256M].",
        ),
        click.option(
            "--listen",
            "listen",
            multiple=True,
            metavar="NAME=HOST:PORT",
            help="Where the Keep binds the package's listen socket NAME (TLS by the Keep runtime) "
            "[default: 127.0.0.1:0, any free port; the bound address is printed].",
        ),
        click.option(
            "--connect",
            "connect",
            multiple=True,
            metavar="NAME=HOST:PORT",
            help="Where the package's connect socket NAME connects (the server's workload "
            "certificate is checked against the manifest's peers).",
        ),
        click.option(
            "--signer",
            "signers",
            multiple=True,
            type=click.Path(dir_okay=False, path_type=Path),
            metavar="PUB",
            help="Trusted package signer (public key file); the Keep refuses packages it did not sign.",
        ),
        click.option(
            "--min-signatures",
            type=int,
            help="How many --signer keys must have signed [default: 1].",
        ),
        click.option(
            "--expect-digest",
            "expect_digests",
            multiple=True,
            metavar="HEX",
            help="Trusted boot: the Keep refuses any package whose digest is not one of these.",
        ),
        click.option(
            "--collateral",
            type=click.Path(file_okay=False, path_type=Path),
            metavar="DIR",
            help="TDX/SGX: directory of Intel collateral (the layout `stockade evidence verify "
            "--collateral` reads) [default: the local collateral cache].",
        ),
        click.option(
            "--offline",
            is_flag=True,
            help="Never fetch collateral: use --collateral DIR or the local cache only.",
        ),
        click.option(
            "--steward",
            metavar="URL",
            help="After the workload identity is verified, the Keep makes a service key and gets a "
            "workload certificate for it from the steward at URL (https://HOST[:PORT]) before the "
            "workload runs; the result shows the certificate and its verified log inclusion proof "
            "[default: the package manifest's [steward] url]. Needs --steward-ca.",
        ),
        click.option(
            "--steward-ca",
            type=click.Path(dir_okay=False, path_type=Path),
            metavar="FILE",
            help="The steward's CA certificate (PEM or DER; `stockade steward init` writes ca.pem): the "
            "Keep accepts the steward only under it, and the client checks the certificate against it.",
        ),
        click.option(
            "--expect-measurement",
            metavar="HEX",
            help="Pin the Keep measurement (default: this installation's Keep runtime).",
        ),
        json_option("Print one JSON result document on stdout.", exit_code_source="stockade"),
        click.option("--quiet", "-q", is_flag=True, help="Do not print the verification summary."),
        click.option(
            "--timings",
            is_flag=True,
            help="After the run, print on stderr how long each phase and step took, on the client and "
            "in the Keep (--json always carries them, in timing_ms).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f
