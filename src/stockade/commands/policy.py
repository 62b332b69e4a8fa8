"""``stockade policy``: check evidence or claims against a policy, print
reference values, show the built-in policies.

- ``stockade policy check [--policy FILE] EVIDENCE`` verifies an SNP report
  (certificates from ``--certs DIR``, default the report's directory; time
  ``--at``) and prints the decision table; ``--claims FILE`` evaluates a
  claims document instead (labelled "not verified"). Exit codes: 0
  accepted, 112 refused, 110/111 verification failed / malformed evidence,
  2 usage (including a malformed policy file).
- ``stockade policy reference`` prints the Keep measurement of this
  installation on sim, as a policy snippet.
- ``stockade policy default [--allow-sim]`` prints the built-in policy.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stockade import __version__
from stockade.commands._output import json_option, safe_text
from stockade.commands.image_measure import compute_snp, snp_options
from stockade.errors import UsageError

if TYPE_CHECKING:
    from stockade.policy import Decision, Policy
    from stockade.policy.claims import Claims, UnverifiedClaims

_VERDICT_STYLE = {"pass": "green", "fail": "bold red", "n/a": "dim"}
SIM_LABEL = "sim — NO HARDWARE PROTECTION (simulated SEV-SNP, for development only)"


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{what}: cannot read {path}: {exc.strerror}") from None


def _load_claims(path: Path) -> UnverifiedClaims:
    from stockade.policy.claims import UnverifiedClaims

    try:
        doc = json.loads(_read(path, "--claims"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--claims {path}: not JSON: {exc}") from None
    return UnverifiedClaims.from_json(doc, f"--claims {path}")


def _print_table(decision: Decision, claims_label: str) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(soft_wrap=False)
    outcome = "ACCEPTED" if decision.accepted else "REFUSED"
    table = Table(
        title=f"policy {decision.policy_name!r} ({decision.policy_source}): {outcome}",
        show_lines=False,
        expand=False,
    )
    table.add_column("rule", overflow="fold", no_wrap=False)
    table.add_column("expected", overflow="fold")
    table.add_column("actual", overflow="fold")
    table.add_column("verdict", no_wrap=True)
    parents: list[str] = []  # rule of the last row at each depth
    for row in decision.rows:
        del parents[row.depth :]
        name = row.rule
        if parents and name.startswith(parents[-1]) and name[len(parents[-1]) : len(parents[-1]) + 1] in ".[":
            name = name[len(parents[-1]) :].lstrip(".")  # nested: shown relative to its parent row
        parents.append(row.rule)
        table.add_row(  # claims may come from a --claims file: never markup, never escapes
            Text("  " * row.depth + safe_text(name)),
            Text(safe_text(row.expected)),
            Text(safe_text(row.actual)),
            Text(row.verdict.value, style=_VERDICT_STYLE[row.verdict.value]),
        )
    style = "" if "NOT verified" not in claims_label else "bold yellow"
    console.print(Text(f"claims: {claims_label}", style=style), soft_wrap=True)
    console.print(table)
    if decision.platform == "sim":
        console.print(Text(f"stockade: {SIM_LABEL}", style="bold yellow"))
    for note in decision.notes:
        if not note.startswith("sim:"):
            console.print(f"note: {note}", highlight=False, soft_wrap=True)
    if decision.accepted:
        console.print(Text(f"accepted by policy {decision.policy_name!r}", style="green"))
    else:
        console.print(Text(f"refused by policy {decision.policy_name!r}:", style="bold red"))
        for row in decision.failures():
            console.print(Text(f"  - {safe_text(row.sentence())}"), highlight=False, soft_wrap=True)
        if decision.hint:
            console.print(f"hint: {decision.hint}", highlight=False, soft_wrap=True)


def _write(target: str, data: bytes) -> None:
    if target == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        Path(target).write_bytes(data)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror}") from None


@click.group()
def policy() -> None:
    """Write, check and explain deployment trust policies (docs/policy.md)."""


@policy.command()
@click.argument("evidence", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Policy file (TOML). Default: the built-in default policy.",
)
@click.option(
    "--claims",
    "claims_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Evaluate a JSON claims document instead of verifying EVIDENCE (NOT verified).",
)
@click.option(
    "--certs",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory with vcek.der and ask.der or ask_ark.pem (default: EVIDENCE's directory).",
)
@click.option(
    "--collateral",
    type=click.Path(file_okay=False, path_type=Path),
    help="TDX/SGX: directory with the Intel collateral (default: EVIDENCE's collateral/).",
)
@click.option(
    "--at", "at_text", metavar="TIME", help="Verification and evaluation time, ISO 8601 (default: now)."
)
@click.option(
    "--sim-root",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also trust this sim ARK (DER or PEM), e.g. $STOCKADE_STATE_DIR/sim/chip/ark.der.",
)
@json_option("Print the decision as JSON.", indent=2)
@click.option("--ear-json", metavar="FILE|-", help="Write the decision as an (unsigned) EAR, JSON.")
@click.option("--ear-cbor", metavar="FILE|-", help="Write the decision as an (unsigned) EAR, CBOR.")
def check(
    evidence: Path | None,
    policy_file: Path | None,
    claims_file: Path | None,
    certs: Path | None,
    collateral: Path | None,
    at_text: str | None,
    sim_root: Path | None,
    as_json: bool,
    ear_json: str | None,
    ear_cbor: str | None,
) -> int:
    """Check EVIDENCE (an SEV-SNP report or a TDX/SGX quote) against a policy and explain
    every verdict. Exit status: 0 accepted, 112 refused, 110/111 evidence
    does not verify / parse, 2 usage error."""
    return _check(
        evidence,
        policy_file,
        claims_file,
        certs,
        collateral,
        at_text,
        sim_root,
        as_json,
        ear_json,
        ear_cbor,
    )


def _check(
    evidence: Path | None,
    policy_file: Path | None,
    claims_file: Path | None,
    certs: Path | None,
    collateral: Path | None,
    at_text: str | None,
    sim_root: Path | None,
    as_json: bool,
    ear_json: str | None,
    ear_cbor: str | None,
) -> int:
    from stockade.errors import ExitStatus, PolicyRejected
    from stockade.policy import default_policy, ear, evaluate, load_policy

    if (evidence is None) == (claims_file is None):
        raise UsageError(
            "give either EVIDENCE (a report or quote file) or --claims FILE, not both or neither"
        )
    if claims_file is not None and (certs or sim_root or collateral):
        raise UsageError("--certs, --collateral and --sim-root apply to EVIDENCE, not to --claims")
    if claims_file is not None and (ear_json or ear_cbor):
        raise UsageError("an EAR reports an appraisal of verified evidence; --claims input is not verified")
    if ear_json == "-" and ear_cbor == "-":
        raise UsageError("only one of --ear-json and --ear-cbor can write to stdout")
    pol: Policy = load_policy(policy_file) if policy_file is not None else default_policy()
    from stockade.commands._files import parse_time

    at = parse_time(at_text)
    claims: Claims
    if claims_file is not None:
        claims = _load_claims(claims_file)
        label = f"claims from file {claims_file}, NOT verified"
    else:
        assert evidence is not None
        from stockade.commands._files import verify_file

        verified_file = verify_file(evidence, at, certs=certs, collateral=collateral, sim_root=sim_root)
        claims = verified_file.claims
        kind = {"sev-snp-report": "SEV-SNP report", "tdx-quote": "TDX quote", "sgx-quote": "SGX quote"}
        root = {"sim": "sim root", "snp": "AMD root"}.get(claims.platform, "Intel root")
        label = (
            f"verified {kind[verified_file.kind]} {evidence} at {at.isoformat()} ({claims.signer} -> {root})"
        )
    decision = evaluate(claims, pol, at)
    if ear_json:
        _write(ear_json, (ear.ear_json(decision) + "\n").encode())
    if ear_cbor:
        _write(ear_cbor, ear.ear_cbor(decision))
    if as_json:
        doc: dict[str, Any] = {
            "exit_code": 0 if decision.accepted else PolicyRejected.exit_code,
            "claims_source": label,
            "claims_verified": decision.claims_verified,
            "decision": decision.to_json(),
            "claims": claims.to_json(),
        }
        if ear_json != "-" and ear_cbor != "-":
            click.echo(json.dumps(doc, indent=2))
    elif ear_json != "-" and ear_cbor != "-":
        _print_table(decision, label)
    # A refusal is an outcome here, not an error: the decision was printed.
    return ExitStatus.OK if decision.accepted else PolicyRejected.exit_code


@policy.command()
@json_option("Print JSON (with --files: every measured file).")
@click.option("--files", is_flag=True, help="List every measured file: SHA-256, kind, name, path.")
@click.option(
    "--platform",
    type=click.Choice(["sim", "vm", "snp"]),
    help="sim (default): this installation's Keep runtime. vm: a Keep image booted by the vm backend "
    "(sim signing), with --image. snp: an SNP Keep image, with --image and --ovmf.",
)
@functools.partial(snp_options, required=False)
@click.option(
    "-o", "--output", metavar="FILE", help="--platform snp: write the policy to FILE instead of stdout."
)
def reference(
    as_json: bool,
    files: bool,
    platform: str | None,
    ovmf: Path | None,
    ovmf_hash: str | None,
    image: Path | None,
    kernel: Path | None,
    initrd: Path | None,
    append: str | None,
    vcpus: int | None,
    vcpu_type: str | None,
    guest_features: str,
    vmm_type: str,
    output: str | None,
) -> None:
    """Print the expected Keep measurement of this installation on sim, or
    write a policy pinning an SNP Keep image's launch measurement.

    Default (sim): computed by the same launch-digest code the keep loader
    uses (stockade.measure.launch.keep_measurement): the bytes of every module
    and library the Keep loads and of the interpreter (ADR 0013).

    --platform snp --image DIR --ovmf FILE --vcpus N --vcpu-type NAME: the
    SEV-SNP launch digest of that image booted with that OVMF
    (stockade.measure.snp, ADR 0016), as a policy with [snp] measurements.
    For TDX/SGX, see docs/policy.md.

    --platform vm --image DIR: the launch measurement the sim PSP signs for
    that image on the vm backend (stockade.measure.vm), as [sim]
    measurements (vm evidence is sim evidence: NO hardware protection).
    """
    if platform == "vm":
        _vm_reference(
            as_json,
            output,
            image,
            files,
            ovmf or ovmf_hash or kernel or initrd or append or vcpus or vcpu_type,
        )
        return
    snp_given = [
        name
        for name, value in (
            ("--ovmf", ovmf),
            ("--ovmf-hash", ovmf_hash),
            ("--image", image),
            ("--kernel", kernel),
            ("--initrd", initrd),
            ("--append", append),
            ("--vcpus", vcpus),
            ("--vcpu-type", vcpu_type),
            ("--output", output),
        )
        if value is not None
    ]
    if platform == "snp":
        if files:
            raise UsageError(
                "--files lists the sim Keep runtime's files; it does not apply to --platform snp"
            )
        missing = [
            n for n, v in (("--ovmf", ovmf), ("--vcpus", vcpus), ("--vcpu-type", vcpu_type)) if v is None
        ]
        if image is None and kernel is None:
            missing.insert(0, "--image")
        if missing:
            raise UsageError(f"--platform snp needs {', '.join(missing)}")
        assert ovmf is not None and vcpus is not None and vcpu_type is not None
        _snp_reference(
            as_json,
            output,
            compute_snp(
                ovmf, ovmf_hash, image, kernel, initrd, append, vcpus, vcpu_type, guest_features, vmm_type
            ),
            image,
        )
        return
    if snp_given:
        raise UsageError(f"{', '.join(snp_given)}: only with --platform snp")
    from stockade.measure.launch import keep_measurement, measured_files, package_root

    entries = measured_files()
    measurement = keep_measurement(entries).hex()
    snippet = "\n".join(
        [
            f"# Keep runtime of stockade {__version__} at {package_root()}",
            "# on sim: NO hardware protection. For snp, tdx and sgx see docs/policy.md.",
            "version = 1",
            'platforms = ["sim"]',
            "",
            "[sim]",
            f'measurements = ["{measurement}"]',
        ]
    )
    if as_json:
        doc: dict[str, Any] = {
            "stockade_version": __version__,
            "platform": "sim",
            "hardware_protection": False,
            "measurement": measurement,
            "policy_snippet": snippet + "\n",
        }
        if files:
            doc["files"] = [
                {
                    "label": m.label,
                    "kind": m.kind,
                    "path": str(m.path) if m.path else None,
                    "sha256": m.sha256.hex() if m.sha256 else None,
                }
                for m in entries
            ]
        click.echo(json.dumps(doc, indent=2))
    elif files:
        click.echo(f"# {len(entries)} entries of the Keep measurement {measurement}")
        click.echo(
            "# sha256 (- : no file of its own: built into the interpreter, or absent)  kind  name  path"
        )
        for m in entries:
            click.echo(f"{m.sha256.hex() or '-'}  {m.kind}  {m.label}  {m.path or '-'}")
    else:
        click.echo(snippet)


@policy.command()
@click.option("--allow-sim", is_flag=True, help="Show the development policy (what --allow-sim means).")
def default(allow_sim: bool) -> None:
    """Print the built-in policy that `stockade run` enforces without --policy."""
    from stockade.measure.launch import keep_measurement
    from stockade.policy.builtin import default_policy_toml, development_policy_toml

    measurement = keep_measurement()
    if allow_sim:
        click.echo(development_policy_toml(measurement), nl=False)
    else:
        click.echo(default_policy_toml(measurement), nl=False)


def snp_policy_toml(doc: dict[str, Any], image: Path | None) -> str:
    """A policy pinning the SNP launch measurement of ``doc`` (compute_snp's
    result), with its inputs in comments. Loadable by load_policy; the
    platform rules other than the measurement are the deployer's to add."""
    inputs = doc["inputs"]

    def file_line(key: str, label: str) -> str:
        entry = inputs[key]
        return f"#   {label}: sha256 {entry['sha256']}" if entry else f"#   {label}: none"

    source = f"Keep image {json.dumps(str(image))}" if image is not None else "guest"
    lines = [
        f"# SEV-SNP launch measurement of the {source}, computed offline",
        f"# by stockade {__version__} (stockade image measure snp; sev-snp-measure algorithm) from:",
        file_line("ovmf", "OVMF"),
    ]
    if inputs["ovmf_hash"]:
        lines.append(f"#   OVMF pages measured as the given OVMF hash {inputs['ovmf_hash']}")
    lines += [
        file_line("kernel", "kernel"),
        file_line("initrd", "initrd"),
        # json.dumps: one line, every control or non-ASCII character escaped
        f"#   command line: {json.dumps(inputs['append'])}",
        f"#   {inputs['vcpus']} vCPU(s) of type {inputs['vcpu_type']}, guest features "
        f"{inputs['guest_features']}, VMM {inputs['vmm_type']}",
        "# It holds only for exactly these inputs: a changed byte in any of them changes it.",
        "# Add your [snp] platform rules (products, min_tcb, min_firmware...): docs/policy.md.",
        "version = 1",
        'name = "snp keep image"',
        'platforms = ["snp"]',
        "",
        "[snp]",
        f'measurements = ["{doc["measurement"]}"]',
    ]
    return "\n".join(lines) + "\n"


def _vm_reference(as_json: bool, output: str | None, image: Path | None, files: bool, other: object) -> None:
    from stockade.image.manifest import load

    if image is None:
        raise UsageError("--platform vm needs --image DIR (a Keep image: stockade image build)")
    if files or other:
        raise UsageError("--platform vm takes --image (and --output, --json) only")
    img = load(image)
    measurement = img.vm_measurement().hex()
    toml_text = "\n".join(
        [
            f"# Keep image {image} (kernel {img.manifest.kernel.sha256[:16]}..., initrd "
            f"{img.manifest.initrd.sha256[:16]}...) on the vm backend:",
            "# sim signing, NO hardware protection. For snp and tdx see docs/vm-hardware.md.",
            "version = 1",
            'platforms = ["sim"]',
            "",
            "[sim]",
            f'measurements = ["{measurement}"]',
            "",
        ]
    )
    if output is not None:
        _write(output, toml_text.encode())
    if as_json:
        doc = {
            "platform": "vm",
            "hardware_protection": False,
            "measurement": measurement,
            "policy": toml_text,
        }
        click.echo(json.dumps(doc, indent=2))
    elif output is None:
        click.echo(toml_text, nl=False)


def _snp_reference(as_json: bool, output: str | None, doc: dict[str, Any], image: Path | None) -> None:
    toml_text = snp_policy_toml(doc, image)
    if output is not None:
        _write(output, toml_text.encode())
    if as_json:
        click.echo(json.dumps({**doc, "hardware_protection": True, "policy": toml_text}, indent=2))
    elif output is None:
        click.echo(toml_text, nl=False)
