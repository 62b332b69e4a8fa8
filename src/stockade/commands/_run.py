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
    from stockade.client.deploy import DeployResult, SentHello
    from stockade.client.identity import WorkloadIdentity
    from stockade.client.plan import Prepared

SIM_WARNING = "sim — NO HARDWARE PROTECTION (simulated SEV-SNP, for development only)"


def summary(appraisal: Appraisal, policy_note: str, extra: tuple[str, ...] = ()) -> str:
    c = appraisal.claims
    platform = SIM_WARNING if c.platform == "sim" else f"{c.platform} ({c.product})"
    tcb = " ".join(f"{k}={v}" for k, v in c.tcb)
    lines = [
        "stockade: Keep attested and verified",
        f"  platform     {platform}",
        f"  measurement  {c.measurement.hex()}",
        f"  tcb          {tcb} (firmware {c.firmware}, report v{c.report_version})",
        f"  signer       {c.signer} -> {'sim root' if c.platform == 'sim' else 'AMD root'} "
        f"{c.root_fingerprint[:16]}…",
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
) -> tuple[DeployResult, dict[int, bytearray]]:
    """Plan the deploy from ``opts`` (:func:`stockade.client.plan.plan_deploy`)
    and run one deploy session over ``conn`` (a stream to a fresh Keep, the
    hello already sent), printing the summary and the workload's output.
    ``runtime_measurement`` is what the measurement is pinned to unless
    ``opts`` says otherwise; ``crls`` (DER) are the CRLs the client holds,
    applied to the Keep's evidence chain."""
    from stockade.client.attest import TrustConfig
    from stockade.client.deploy import Steps, deploy
    from stockade.client.plan import plan_deploy

    steps = Steps()
    planned = plan_deploy(opts, prepared, runtime_measurement, staged=staged)
    note, notes = planned.policy_note, planned.notes
    # The sim root is used to *verify* sim evidence; acceptance is the
    # policy's decision (the default policy refuses sim).
    trust = TrustConfig(sim_root=sim_root, policy=planned.policy, crls=crls)
    out: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}

    def on_output(fd: int, data: bytes) -> None:
        if opts.as_json:
            out[fd] += data
            return
        stream = sys.stdout.buffer if fd == 1 else sys.stderr.buffer
        stream.write(data)
        stream.flush()

    def on_verified(appraisal: Appraisal) -> None:
        if opts.as_json:
            return  # the JSON document carries the appraisal and the label
        if not opts.quiet:
            click.echo(summary(appraisal, note, (*extra_summary, *notes)), err=True)
        elif appraisal.claims.platform == "sim":
            # sim output is always labelled, even with --quiet.
            click.echo("stockade: sim Keep: NO HARDWARE PROTECTION", err=True)

    def on_identity(identity: WorkloadIdentity) -> None:
        if not opts.as_json and not opts.quiet and not prepared.from_module:
            click.echo(identity_summary(identity), err=True)

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
    )
    return result, out


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
    click.echo(json.dumps(doc, indent=2))


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
        click.option("--stdin", "stdin", metavar="FILE|-", help="Standard input for the workload."),
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
            "--expect-measurement",
            metavar="HEX",
            help="Pin the Keep measurement (default: this installation's Keep runtime).",
        ),
        json_option("Print one JSON result document on stdout.", exit_code_source="stockade"),
        click.option("--quiet", "-q", is_flag=True, help="Do not print the verification summary."),
    ]
    for option in reversed(options):
        f = option(f)
    return f
