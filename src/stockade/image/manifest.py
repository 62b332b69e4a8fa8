"""The manifest of a Keep image directory, and reading an image back.

``manifest.json`` names each component with its SHA-256, size and origin
(Debian package and version of the kernel, versions of the interpreter,
busybox and the Keep's libraries) and the expected launch measurements by
backend. Reading an image checks the three boot files against it: a host
that swapped the initrd after the build is caught here, before a boot
(and, on real hardware, by the measurement the client checks anyway).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stockade.errors import ImageError

FORMAT = "stockade-keep-image/1"
KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initrd.img"
CMDLINE_FILE = "cmdline"
MANIFEST_FILE = "manifest.json"


def _sha256(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        raise ImageError(f"cannot read {path} ({exc.strerror})") from None


@dataclass(frozen=True)
class Component:
    file: str
    sha256: str
    size: int
    about: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, path: Path, name: str, about: dict[str, str] | None = None) -> Component:
        return cls(name, _sha256(path), path.stat().st_size, dict(about or {}))

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "size": self.size, **self.about}


@dataclass(frozen=True)
class Manifest:
    format: str
    stockade_version: str
    kernel: Component
    initrd: Component
    cmdline: str
    components: dict[str, str]
    measurements: dict[str, str]

    def to_json(self) -> str:
        doc = {
            "format": self.format,
            "stockade_version": self.stockade_version,
            "kernel": self.kernel.to_dict(),
            "initrd": self.initrd.to_dict(),
            "cmdline": self.cmdline,
            "components": self.components,
            "measurements": self.measurements,
        }
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT:
                raise ImageError(f"{where}: not a {FORMAT} manifest (format {doc.get('format')!r})")

            def component(d: dict[str, Any]) -> Component:
                about = {k: str(v) for k, v in d.items() if k not in ("file", "sha256", "size")}
                return Component(str(d["file"]), str(d["sha256"]), int(d["size"]), about)

            return cls(
                format=doc["format"],
                stockade_version=str(doc["stockade_version"]),
                kernel=component(doc["kernel"]),
                initrd=component(doc["initrd"]),
                cmdline=str(doc["cmdline"]),
                components={str(k): str(v) for k, v in doc["components"].items()},
                measurements={str(k): str(v) for k, v in doc["measurements"].items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            if isinstance(exc, ImageError):
                raise
            raise ImageError(
                f"{where}: malformed Keep image manifest ({exc.__class__.__name__}: {exc})"
            ) from None


@dataclass(frozen=True)
class Image:
    """A Keep image directory whose boot files match its manifest."""

    directory: Path
    manifest: Manifest
    #: True when the boot files were checked against the manifest at load.
    checked: bool = False

    @property
    def kernel(self) -> Path:
        return self.directory / KERNEL_FILE

    @property
    def initrd(self) -> Path:
        return self.directory / INITRD_FILE

    @property
    def cmdline(self) -> str:
        return self.manifest.cmdline

    def vm_measurement(self) -> bytes:
        """The launch digest the sim PSP signs for this image on the vm
        backend (stockade.measure.vm): from the manifest's digests when the
        files were checked against them at load, else from the files."""
        from stockade.measure.vm import sim_vm_digest, sim_vm_digest_of

        if self.checked:
            m = self.manifest
            return sim_vm_digest_of(bytes.fromhex(m.kernel.sha256), bytes.fromhex(m.initrd.sha256), m.cmdline)
        return sim_vm_digest(self.kernel, self.initrd, self.cmdline)


def load(directory: Path, check: bool = True) -> Image:
    """Read the image in ``directory``; with ``check``, refuse it unless the
    kernel, initrd and command line are those its manifest names."""
    path = directory / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ImageError(
            f"no Keep image in {directory} (no {MANIFEST_FILE}); build one: stockade image build -o {directory}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ImageError(f"cannot read {path} ({exc})") from None
    manifest = Manifest.from_json(text, str(path))
    image = Image(directory, manifest, checked=check)
    if check:
        for comp, file in ((manifest.kernel, image.kernel), (manifest.initrd, image.initrd)):
            actual = _sha256(file)
            if actual != comp.sha256:
                raise ImageError(
                    f"{file} does not match the image manifest (sha256 {actual[:16]}..., manifest says "
                    f"{comp.sha256[:16]}...): the image was changed after it was built; rebuild it"
                )
        try:
            on_disk = (directory / CMDLINE_FILE).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ImageError(f"cannot read {directory / CMDLINE_FILE} ({exc})") from None
        if on_disk != manifest.cmdline:
            raise ImageError(f"{directory / CMDLINE_FILE} does not match the image manifest's command line")
    return image
