"""``stockade image measure tdx``: the expected TDX RTMR[1] and RTMR[2] of a
Keep image booted by TDVF with QEMU direct kernel boot, computed offline
(stockade.measure.tdx, ADR 0017). It prints the values, the events they
replay, the assumptions about the TDVF build and QEMU, and what it cannot
compute (MRTD, RTMR[0], RTMR[3])."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from stockade.commands._output import json_option
from stockade.errors import ImageError, UsageError

_EVENT_NAMES = {
    0x00000004: "EV_SEPARATOR",
    0x00000006: "EV_EVENT_TAG",
    0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION",
    0x80000007: "EV_EFI_ACTION",
}


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ImageError(f"{what}: cannot read {path}: {e.strerror or e}") from None


def _inputs(
    image: Path | None, kernel: Path | None, initrd: Path | None, append: str | None
) -> tuple[bytes, bytes | None, str]:
    if image is not None:
        if kernel is not None or initrd is not None or append is not None:
            raise UsageError("give either --image DIR or --kernel/--initrd/--append, not both")
        raw = _read(image / "cmdline", "cmdline")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ImageError(f"cmdline: {image / 'cmdline'} is not UTF-8 text") from None
        return _read(image / "vmlinuz", "kernel"), _read(image / "initrd.img", "initrd"), text
    if kernel is None:
        raise UsageError("give --kernel FILE (with --initrd FILE and --append TEXT) or --image DIR")
    return _read(kernel, "kernel"), None if initrd is None else _read(initrd, "initrd"), append or ""


@click.command("tdx")
@click.option(
    "--kernel", type=click.Path(dir_okay=False, path_type=Path), help="The kernel QEMU boots (-kernel)."
)
@click.option("--initrd", type=click.Path(dir_okay=False, path_type=Path), help="The initrd (-initrd).")
@click.option("--append", metavar="TEXT", help="The kernel command line (-append); default empty.")
@click.option(
    "--image",
    type=click.Path(file_okay=False, path_type=Path),
    help="A Keep image directory (files vmlinuz, initrd.img, cmdline) instead of the three options.",
)
@click.option(
    "--edk2-before-202508",
    "old_edk2",
    is_flag=True,
    help="TDVF is built from an edk2 release before edk2-stable202508: it appends ' initrd=initrd' "
    "to the command line instead of putting 'initrd=initrd ' in front.",
)
@click.option(
    "--qemu-patched-header",
    "memory_mib",
    type=click.IntRange(min=1),
    metavar="MIB",
    help="QEMU patches the kernel's setup header before TDVF measures it (QEMU up to 10.1, unless QEMU "
    ">= 10.0 and TDVF >= edk2-stable202502): the guest memory (-m) in MiB, which the patch depends on.",
)
@click.option(
    "--kernel-measures/--kernel-does-not-measure",
    "kernel_measures",
    default=None,
    help="Whether the kernel's EFI stub extends RTMR[2] with the command line and initrd "
    "(Linux >= 6.9 does). Default: read from the kernel's release; refused if older or unreadable.",
)
@click.option(
    "--event-log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also compare a real boot's CC event log (the TD's /sys/firmware/acpi/tables/data/CCEL) with the "
    "expected events: the RTMRs it replays to, expected events it lacks, events it has that were not expected.",
)
@json_option("Print JSON.")
def tdx(
    kernel: Path | None,
    initrd: Path | None,
    append: str | None,
    image: Path | None,
    old_edk2: bool,
    memory_mib: int | None,
    kernel_measures: bool | None,
    event_log: Path | None,
    as_json: bool,
) -> None:
    """Print the expected TDX RTMR[1] and RTMR[2] of a TD booted by TDVF.

    RTMR[1] holds the kernel's PE/COFF Authenticode SHA-384 and TDVF's
    boot-service events; RTMR[2] the command line and initrd as the Linux
    EFI stub measures them. MRTD, RTMR[0] and RTMR[3] are not computable
    here: the output says why. Computed offline, nothing is attested: pin
    the values in a policy ([tdx] rtmr1, rtmr2; docs/policy.md).
    """
    from stockade.measure import tdx as measure

    kernel_bytes, initrd_bytes, cmdline = _inputs(image, kernel, initrd, append)
    firmware = measure.EDK2_TDVF_BEFORE_202508 if old_edk2 else measure.EDK2_TDVF
    patch = None if memory_mib is None else measure.QemuHeaderPatch(memory=memory_mib * 1024 * 1024)
    events = measure.tdx_events(
        kernel_bytes,
        initrd_bytes,
        cmdline,
        firmware_events=firmware,
        qemu_header_patch=patch,
        kernel_measures=kernel_measures,
    )
    rtmrs = {i: measure.replay(e.digest for e in events if e.rtmr == i) for i in (1, 2)}
    release = measure.setup_header(kernel_bytes).release
    assumptions = [
        "TDVF is edk2's OVMF TDX build (IntelTdxX64, or OvmfPkgX64 with CC measurement) booting QEMU's "
        "-kernel directly, with no PCI option ROMs, no other EFI application before the kernel and no vTPM "
        "(with a TCG2 protocol the EFI stub measures into it instead of RTMR[2])",
        "LoadOptions: "
        + (
            "'<cmdline> initrd=initrd' (edk2 before edk2-stable202508)"
            if old_edk2
            else "'initrd=initrd <cmdline>' (edk2-stable202508 and later)"
        )
        + " when there is an initrd",
        "kernel measured "
        + (
            f"with the setup header QEMU <= 10.1 patches for {memory_mib} MiB of guest memory (q35)"
            if memory_mib is not None
            else "as the file is (QEMU >= 10.2, or QEMU >= 10.0 with TDVF >= edk2-stable202502)"
        ),
        (
            "RTMR[2] is NOT extended by this kernel's EFI stub: it does not cover the command line or the initrd"
            if kernel_measures is False
            else "the kernel's EFI stub (Linux >= 6.9) measures the command line and initrd into RTMR[2]"
        ),
    ]
    doc: dict[str, Any] = {
        "platform": "tdx",
        "computed_offline": True,
        "kernel_release": release,
        "rtmr1": rtmrs[1].hex(),
        "rtmr2": rtmrs[2].hex(),
        "events": [
            {
                "rtmr": e.rtmr,
                "event_type": _EVENT_NAMES.get(e.event_type, hex(e.event_type)),
                "digest": e.digest.hex(),
                "what": e.description,
            }
            for e in events
        ],
        "assumptions": assumptions,
        "not_computable": dict(measure.NOT_COMPUTABLE),
    }
    comparison = None
    if event_log is not None:
        comparison = measure.compare_event_log(events, _read(event_log, "event log"))
        doc["event_log"] = {
            **{f"rtmr{i}": v.hex() for i, v in comparison.replayed.items()},
            "rtmr1_matches": comparison.replayed[1] == rtmrs[1],
            "rtmr2_matches": comparison.replayed[2] == rtmrs[2],
            "missing": [
                {"rtmr": e.rtmr, "digest": e.digest.hex(), "what": e.description} for e in comparison.missing
            ],
            "unexpected": [
                {
                    "rtmr": e.mr_index - 1,
                    "event_type": _EVENT_NAMES.get(e.event_type, hex(e.event_type)),
                    "digest": e.digest.hex(),
                }
                for e in comparison.unexpected
            ],
        }
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    # Lines a [tdx] table of a policy takes as they are (docs/policy.md).
    click.echo(f"# [tdx] registers of a TD booted by TDVF from this kernel {release or '(release unknown)'},")
    click.echo("# initrd and command line: expected values computed offline, not attested")
    click.echo(f'rtmr1 = ["{doc["rtmr1"]}"]')
    if kernel_measures is False:
        # All zero: pinning it would accept any command line and initrd.
        click.echo(
            f'# rtmr2 = ["{doc["rtmr2"]}"]  NOT a policy line: this kernel does not measure into RTMR[2]'
        )
    else:
        click.echo(f'rtmr2 = ["{doc["rtmr2"]}"]')
    click.echo("# events replayed (RTMR, type, SHA-384 digest, what):")
    for event in doc["events"]:
        click.echo(f"#   RTMR[{event['rtmr']}] {event['event_type']} {event['digest']} {event['what']}")
    click.echo("# assumptions:")
    for line in assumptions:
        click.echo(f"#   {line}")
    click.echo("# not computable here:")
    for name, why in measure.NOT_COMPUTABLE.items():
        click.echo(f"#   {name}: {why}")
    if comparison is not None:
        log = doc["event_log"]
        click.echo(f"# event log {event_log}: replays to")
        for i in range(4):
            same = {1: log["rtmr1_matches"], 2: log["rtmr2_matches"]}.get(i)
            note = "" if same is None else " (as expected)" if same else " (DIFFERS from the expected value)"
            click.echo(f"#   rtmr{i} {log[f'rtmr{i}']}{note}")
        for event in log["missing"]:
            click.echo(
                f"#   expected, not in the log: RTMR[{event['rtmr']}] {event['digest']} {event['what']}"
            )
        for event in log["unexpected"]:
            click.echo(
                f"#   in the log, not expected: RTMR[{event['rtmr']}] {event['event_type']} {event['digest']}"
            )
