"""The VM backend for ``stockade run``: the Keep image and the VM spawner."""

from __future__ import annotations

from pathlib import Path

import click

from stockade.client.plan import RunOptions
from stockade.errors import ImageError
from stockade.host.vm import VmConfig, VmSpawner, choose_accel


def default_image_dir(state_dir: Path) -> Path:
    return state_dir / "image"


def ensure_image(directory: Path | None, state_dir: Path, quiet: bool) -> Path:
    """The image to boot: ``directory`` as given (never rebuilt), or the
    state directory's, built on first use and rebuilt when this
    installation's Keep runtime no longer matches it."""
    import fcntl

    from stockade.image import manifest
    from stockade.image.build import build, runtime_fingerprint

    if directory is not None:
        return directory
    directory = default_image_dir(state_dir)
    current = runtime_fingerprint()
    state_dir.mkdir(parents=True, exist_ok=True)
    # One builder at a time: a second `stockade run` waits, then finds the
    # image current (the build replaces the files one by one).
    with open(state_dir / "image.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            image = manifest.load(directory, check=False)
            if image.manifest.components.get("runtime") == current:
                return directory
            reason = "the Keep runtime changed since it was built"
        except ImageError:
            reason = "first use"
        if not quiet:
            click.echo(
                f"stockade: building the Keep image in {directory} ({reason}; a few seconds)", err=True
            )
        build(directory)
    return directory


def local_vm_spawner(state_dir: Path, opts: RunOptions) -> VmSpawner:
    from stockade.image.manifest import load

    quiet = opts.quiet or opts.as_json
    image = load(ensure_image(opts.image, state_dir, quiet))
    accel, why = choose_accel(opts.accel, state_dir)
    if not quiet:
        click.echo(f"stockade: VM Keep under {accel.upper()} ({why}); vm: NO HARDWARE PROTECTION", err=True)
    return VmSpawner(VmConfig(image, accel=accel), die_with_parent=True)


def expected_vm_measurement(opts: RunOptions) -> bytes:
    """The launch digest a VM Keep of this installation's image must report
    (computed here from the image's files, never taken from the host)."""
    from stockade.client.plan import state_dir
    from stockade.image.manifest import load

    sdir = state_dir(opts.state_dir)
    return load(ensure_image(opts.image, sdir, opts.quiet or opts.as_json)).vm_measurement()
