"""``stockade image measure``: expected launch measurements, computed offline.

- ``stockade image measure snp --ovmf FILE [--ovmf-hash HEX] [--image DIR |
  --kernel FILE [--initrd FILE] [--append TEXT]] --vcpus N --vcpu-type NAME
  [--guest-features HEX] [--vmm-type QEMU|ec2|gce] [--json]`` prints the
  48-byte SEV-SNP launch digest (the report's ``MEASUREMENT``) in hex
  (stockade.measure.snp, ADR 0016). ``--json`` also gives the SHA-256 of
  every input. Bad inputs exit 121 (ImageError).

The group is attached under ``stockade image`` by stockade.commands.image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from stockade.commands._output import json_option
from stockade.errors import ImageError

# Paths are not checked by click (that would exit 2): stockade.measure.snp
# reads them and refuses a missing or unreadable one with ImageError (121).
_FILE = click.Path(path_type=Path)


@click.group()
def measure() -> None:
    """Compute expected launch measurements offline"""


def snp_inputs(
    image: Path | None, kernel: Path | None, initrd: Path | None, append: str | None
) -> tuple[Path | None, Path | None, str | None]:
    """Kernel, initrd and command line from ``--image DIR`` or from the
    separate options (not both)."""
    from stockade.measure.snp import image_boot_inputs

    if image is None:
        return kernel, initrd, append
    if kernel is not None or initrd is not None or append is not None:
        raise ImageError(
            "--image gives the kernel, initrd and command line: do not also give --kernel, --initrd or --append"
        )
    boot = image_boot_inputs(image)
    return boot.kernel, boot.initrd, boot.append


def snp_options(f: Any, *, required: bool = True) -> Any:
    """The options that define an SNP launch (shared with ``stockade policy
    reference``, where they are optional: only ``--platform snp`` needs them)."""
    from stockade.measure.snp import VMM_TYPES

    for option in reversed(
        [
            click.option(
                "--ovmf", type=_FILE, required=required, help="The AmdSev OVMF.fd QEMU will load (-bios)."
            ),
            click.option(
                "--ovmf-hash",
                metavar="HEX",
                help="Precomputed launch digest of OVMF's pages (48 bytes, hex), for a known OVMF build.",
            ),
            click.option(
                "--image",
                type=_FILE,
                help="Keep image directory: its vmlinuz, initrd.img and cmdline are measured.",
            ),
            click.option("--kernel", type=_FILE, help="Direct-boot kernel (QEMU -kernel, kernel-hashes=on)."),
            click.option("--initrd", type=_FILE, help="Direct-boot initrd (QEMU -initrd); needs --kernel."),
            click.option(
                "--append", metavar="TEXT", help="Kernel command line (QEMU -append); needs --kernel."
            ),
            click.option("--vcpus", type=int, required=required, help="Number of vCPUs (QEMU -smp)."),
            click.option(
                "--vcpu-type",
                metavar="NAME",
                required=required,
                help="QEMU CPU model, e.g. EPYC-v4, EPYC-Milan.",
            ),
            click.option(
                "--guest-features",
                metavar="HEX",
                default="0x1",
                show_default=True,
                help="SEV_FEATURES of the VMSAs (0x1: SNP active).",
            ),
            click.option(
                "--vmm-type",
                metavar="|".join(VMM_TYPES),
                default="QEMU",
                show_default=True,
                help="VMM whose initial vCPU state is measured.",
            ),
        ]
    ):
        f = option(f)
    return f


def compute_snp(
    ovmf: Path,
    ovmf_hash: str | None,
    image: Path | None,
    kernel: Path | None,
    initrd: Path | None,
    append: str | None,
    vcpus: int,
    vcpu_type: str,
    guest_features: str,
    vmm_type: str,
) -> dict[str, Any]:
    """The measurement and a record of its inputs (SHA-256 of each file)."""
    from stockade.measure.snp import (
        DIGEST_SIZE,
        file_sha256,
        parse_guest_features,
        parse_hex,
        snp_launch_digest,
    )

    kernel, initrd, append = snp_inputs(image, kernel, initrd, append)
    features = parse_guest_features(guest_features)
    pinned = parse_hex(ovmf_hash, "--ovmf-hash", DIGEST_SIZE) if ovmf_hash is not None else None
    digest = snp_launch_digest(
        ovmf,
        kernel=kernel,
        initrd=initrd,
        append=append,
        vcpus=vcpus,
        vcpu_type=vcpu_type,
        guest_features=features,
        ovmf_hash=pinned,
        vmm_type=vmm_type,
    )
    inputs: dict[str, Any] = {
        "ovmf": {"path": str(ovmf), "sha256": file_sha256(ovmf, "OVMF")},
        "ovmf_hash": pinned.hex() if pinned is not None else None,
        "kernel": {"path": str(kernel), "sha256": file_sha256(kernel, "kernel")} if kernel else None,
        "initrd": {"path": str(initrd), "sha256": file_sha256(initrd, "initrd")} if initrd else None,
        "append": append,
        "append_sha256": None if kernel is None else _cmdline_sha256(append),
        "vcpus": vcpus,
        "vcpu_type": vcpu_type,
        "guest_features": f"{features:#x}",
        "vmm_type": vmm_type,
    }
    return {"platform": "snp", "measurement": digest.hex(), "inputs": inputs}


def _cmdline_sha256(append: str | None) -> str:
    # What the SEV hashes table holds for the command line: its bytes and a NUL
    # (QEMU target/i386/sev.c sev_add_kernel_loader_hashes; sevsnpmeasure/sev_hashes.py).
    import hashlib

    return hashlib.sha256((append or "").encode() + b"\x00").hexdigest()


@measure.command()
@snp_options
@json_option("Print the measurement and the SHA-256 of every input as JSON.", indent=2)
def snp(
    ovmf: Path,
    ovmf_hash: str | None,
    image: Path | None,
    kernel: Path | None,
    initrd: Path | None,
    append: str | None,
    vcpus: int,
    vcpu_type: str,
    guest_features: str,
    vmm_type: str,
    as_json: bool,
) -> None:
    """Print the expected SEV-SNP launch measurement (48 bytes, hex) of a
    guest: OVMF, the direct-boot kernel, initrd and command line
    (kernel-hashes=on), the vCPUs and their type. The same value the AMD
    firmware puts in the report's MEASUREMENT (algorithm and code of VirTEE's
    sev-snp-measure; docs/adr/0016-snp-launch-digest.md)."""
    doc = compute_snp(
        ovmf, ovmf_hash, image, kernel, initrd, append, vcpus, vcpu_type, guest_features, vmm_type
    )
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(doc["measurement"])
