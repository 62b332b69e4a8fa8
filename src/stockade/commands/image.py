"""``stockade image``: build and inspect Keep images (VM Keeps).

``build`` makes the image a VM Keep boots (stockade.image.build);
``show`` prints an image's manifest after checking its files; ``measure``
computes expected launch measurements offline for the hardware backends.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from stockade.commands._measure_tdx import tdx
from stockade.commands._output import json_option
from stockade.commands.image_measure import measure


@click.group()
def image() -> None:
    """Build and inspect Keep images: the kernel, initramfs and command line
    a VM Keep boots."""


@image.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("keep-image"),
    show_default=True,
    help="Image directory (created; an existing image in it is replaced).",
)
@click.option(
    "--kernel",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Kernel to boot (default: the newest Debian linux-image-cloud-amd64 in /boot).",
)
@click.option(
    "--modules",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="That kernel's modules directory (default: /lib/modules/RELEASE).",
)
@click.option("--append", help="Kernel command line (default: the built-in one; part of the measurement).")
@json_option("Print the manifest as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def build(
    output: Path, kernel: Path | None, modules: Path | None, append: str | None, as_json: bool, quiet: bool
) -> None:
    """Build a Keep image, reproducibly.

    The initramfs holds a busybox init, the Python interpreter and exactly
    the measured Keep runtime of this installation with the libraries it
    needs; two builds from the same inputs give the same bytes (set
    SOURCE_DATE_EPOCH to choose the file times; default 0). The manifest
    names every component and the expected launch measurement of the vm
    backend; for snp and tdx use `stockade image measure`.
    """
    from stockade.image.build import DEFAULT_CMDLINE
    from stockade.image.build import build as do_build

    def progress(line: str) -> None:
        if not quiet and not as_json:
            click.echo(f"image: {line}", err=True)

    t0 = time.monotonic()
    manifest = do_build(output, kernel, modules, append or DEFAULT_CMDLINE, progress=progress)
    if as_json:
        click.echo(manifest.to_json(), nl=False)
        return
    mib = (manifest.kernel.size + manifest.initrd.size) / (1 << 20)
    click.echo(f"Keep image in {output} ({mib:.1f} MiB, {time.monotonic() - t0:.1f} s)")
    click.echo(f"  kernel   {manifest.kernel.about.get('package')} {manifest.kernel.about.get('version')}")
    click.echo(f"  initrd   {manifest.initrd.sha256}  ({manifest.initrd.size} bytes)")
    click.echo(f"  cmdline  {manifest.cmdline}")
    for backend, digest in sorted(manifest.measurements.items()):
        click.echo(f"  measurement ({backend}, NO HARDWARE PROTECTION)  {digest}")


@image.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@json_option("Print the manifest as JSON.")
def show(directory: Path, as_json: bool) -> None:
    """Check an image's files against its manifest and print it."""
    from stockade.image.manifest import load

    img = load(directory)
    if as_json:
        click.echo(img.manifest.to_json(), nl=False)
        return
    m = img.manifest
    click.echo(
        f"Keep image {directory}: files match the manifest ({m.format}, stockade {m.stockade_version})"
    )
    click.echo(
        json.dumps({"components": m.components, "measurements": m.measurements}, indent=2, sort_keys=True)
    )


measure.add_command(tdx)
image.add_command(measure)
