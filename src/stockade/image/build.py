"""``stockade image build``: a Keep image, the same bytes every time.

What goes into the initramfs, and from where (all of it from this machine):

- the measured Keep runtime: every file stockade.measure.launch resolves for
  the generated module list (ADR 0013): stockade's own modules, the
  third-party modules, the stdlib and lib-dynload extensions, ctypes
  libraries (libwasmtime), the interpreter and libpython, laid out under
  ``/usr`` as a Python installed there would be (``/usr/bin/python3``,
  ``/usr/lib/python3.X``, its ``site-packages``), with a compiled
  ``__pycache__`` file beside each source: hash-based, unchecked pycs
  (PEP 552) compiled with the image path as their file name, so the code
  that runs is the code that is measured, and no path of the build machine
  is in the image;
- the shared libraries those ELF files need (``ldd``), and the dynamic
  loader;
- ``/bin/busybox`` (Debian's busybox-static) and ``/init``, a short shell
  script that mounts /proc, /sys, /dev, loads the virtio modules and starts
  the Keep (``python3 -I -B -m stockade.keep --backend vm``), then powers
  the VM off;
- the kernel modules the Keep needs (virtio-serial, and the SEV-SNP guest
  driver and configfs-tsm when the kernel has them), in dependency order.

Determinism: members sorted by name, owner root, mode 0644 or 0755, one
mtime (``SOURCE_DATE_EPOCH``, else 0), inode numbers counted, no device
numbers (stockade.image.cpio); ELF files without their debug sections
(``strip --strip-debug``, deterministic); the initramfs is not compressed (the kernel
unpacks it faster under TCG, and no compressor's header can carry a time);
pycs compiled in one fresh interpreter in sorted order; the manifest has
sorted keys and no time, host name or build directory. Two builds with the
same inputs (kernel package, busybox, interpreter, installed packages,
stockade source) give the same bytes, whatever the output directory, umask
or time zone; tests/test_image.py checks it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stockade.errors import ImageError
from stockade.image import cpio
from stockade.image.manifest import (
    CMDLINE_FILE,
    FORMAT,
    INITRD_FILE,
    KERNEL_FILE,
    MANIFEST_FILE,
    Component,
    Manifest,
)

#: The kernel command line of every image: the serial console is the
#: Keep's log (host-side, never workload data); panic=-1 reboots at once on
#: a panic and QEMU runs with -no-reboot, so a panic ends the VM.
DEFAULT_CMDLINE = "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init"
#: Modules the Keep needs, each loaded with its dependencies first.
REQUIRED_MODULES = ("virtio_pci", "virtio_console")
#: Modules loaded when the kernel has them: the SEV-SNP guest driver
#: (/dev/sev-guest) and configfs-tsm reports (Linux >= 6.7).
OPTIONAL_MODULES = ("sev-guest", "tdx-guest", "tsm")
#: Mount point of the Keep's scratch area inside the VM.
GUEST_SCRATCH = "/run/keep"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class Tree:
    """The initramfs being assembled: image path -> member."""

    members: dict[str, cpio.Entry] = field(default_factory=dict)

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            self.members.setdefault(d, cpio.Entry.directory(d))

    def add(self, entry: cpio.Entry) -> None:
        old = self.members.get(entry.name)
        if old is not None and old != entry:
            raise ImageError(f"two different files for {entry.name} in the Keep image")
        self._parents(entry.name)
        self.members[entry.name] = entry

    def add_file(self, name: str, source: Path, strip: bool = False) -> None:
        """Add ``source`` as ``name``; with ``strip``, an ELF file loses its
        debug sections on the way (``strip --strip-debug``: same code, a
        fraction of the bytes to unpack at boot)."""
        try:
            data = source.read_bytes()
            executable = bool(source.stat().st_mode & 0o111)
        except OSError as exc:
            raise ImageError(f"cannot read {source} for the Keep image ({exc.strerror})") from None
        if strip and data[:4] == b"\x7fELF":
            data = strip_debug(source)
        self.add(cpio.Entry.file(name, data, executable))

    def archive(self, mtime: int) -> bytes:
        import io

        buf = io.BytesIO()
        cpio.write(buf, [self.members[k] for k in sorted(self.members)], mtime)
        return buf.getvalue()


def strip_debug(source: Path) -> bytes:
    """The bytes of ELF file ``source`` without debug sections."""
    if shutil.which("strip") is None:
        raise ImageError("strip (binutils) not found; install it: apt-get install binutils")
    with tempfile.TemporaryDirectory(prefix="stockade-strip-") as tmp:
        out = Path(tmp) / "stripped"
        proc = subprocess.run(
            ["strip", "--strip-debug", "-o", str(out), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ImageError(f"strip --strip-debug {source} failed: {proc.stderr.strip()}")
        return out.read_bytes()


# == inputs ================================================================================================


@dataclass(frozen=True)
class Kernel:
    path: Path
    release: str
    package: str
    version: str
    modules_dir: Path


def find_kernel(kernel: Path | None = None, modules_dir: Path | None = None) -> Kernel:
    """The kernel to boot: ``kernel``, or the newest Debian cloud kernel in
    /boot (package linux-image-cloud-amd64)."""
    if kernel is None:
        candidates = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"), key=_version_key)
        if not candidates:
            raise ImageError(
                "no Debian cloud kernel in /boot; install one: apt-get install linux-image-cloud-amd64 "
                "(or give --kernel FILE)"
            )
        kernel = candidates[-1]
    if not kernel.is_file():
        raise ImageError(f"kernel {kernel} is not a file")
    with open(kernel, "rb") as f:
        f.seek(0x202)
        if f.read(4) != b"HdrS":  # the x86 boot protocol's header magic (Documentation/arch/x86/boot.rst)
            raise ImageError(f"{kernel} is not a Linux x86 kernel image (no bzImage header)")
    release = kernel.name.removeprefix("vmlinuz-") if kernel.name.startswith("vmlinuz-") else ""
    if modules_dir is None:
        if not release:
            raise ImageError(f"cannot tell the kernel release of {kernel}: give its modules directory")
        modules_dir = Path("/lib/modules") / release
    if not (modules_dir / "modules.dep").is_file():
        raise ImageError(f"no modules.dep in {modules_dir}: the kernel's modules are needed (virtio-serial)")
    package = f"linux-image-{release}" if release else "unknown"
    return Kernel(kernel, release, package, _dpkg_version(package), modules_dir)


def _version_key(path: Path) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.-]", path.name)]


def _dpkg_version(package: str) -> str:
    if shutil.which("dpkg-query") is None:
        return "unknown"
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else "unknown"


def find_busybox(path: Path | None = None) -> Path:
    busybox = path or Path("/bin/busybox")
    if not busybox.is_file():
        raise ImageError(f"{busybox} not found; install it: apt-get install busybox-static")
    if _elf_interpreter(busybox) is not None:
        raise ImageError(f"{busybox} is dynamically linked; the Keep image needs busybox-static")
    return busybox


def _elf_interpreter(path: Path) -> str | None:
    """PT_INTERP of a 64-bit little-endian ELF file, or None when static."""
    import struct

    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            raise ImageError(f"{path} is not a 64-bit little-endian ELF file")
        (phoff,) = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
        for i in range(phnum):
            p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
            if p_type == 3:  # PT_INTERP
                f.seek(p_offset)
                return f.read(p_filesz).rstrip(b"\0").decode()
    return None


# == the Python runtime =====================================================================================


def python_layout() -> list[tuple[str, str]]:
    """[(host sys.path entry, image dir)], longest host path first: where
    each directory of the Keep's sys.path goes."""
    from stockade.measure.launch import keep_sys_path, stdlib_path

    ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    lib = f"usr/lib/{ver}"
    _zip, stdlib, dynload = stdlib_path()
    roots = [(stdlib, lib), (dynload, f"{lib}/lib-dynload")]
    for entry in keep_sys_path():
        if entry not in (_zip, stdlib, dynload):
            roots.append((entry, f"{lib}/site-packages"))
    return sorted(roots, key=lambda r: len(r[0]), reverse=True)


def image_path(host: Path, roots: list[tuple[str, str]]) -> str:
    text = str(host)
    for entry, target in roots:
        if text.startswith(entry.rstrip("/") + "/"):
            return f"{target}/{text[len(entry.rstrip('/')) + 1 :]}"
    raise ImageError(f"{host} lies outside the Keep's sys.path; cannot place it in the image")


def runtime_files(progress: Progress) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """([(image path, host file)] of the measured runtime, [(image path, source)]
    of the modules to compile)."""
    from stockade.measure.launch import measured_files, stdlib_path

    roots = python_layout()
    files: list[tuple[str, Path]] = []
    sources: list[tuple[str, Path]] = []
    progress("resolving the measured Keep runtime")
    # The interpreter finds its prefix from the landmark lib/pythonX.Y/os.py
    # (Modules/getpath.py); os is frozen into the interpreter, so its source
    # is not part of the runtime's file list, but must be in the image.
    landmark = Path(stdlib_path()[1]) / "os.py"
    files.append((image_path(landmark, roots), landmark))
    for m in measured_files():
        if m.path is None:
            continue
        if m.label == "interpreter:executable":
            files.append((f"usr/bin/python{sys.version_info[0]}", m.path))
        elif m.label == "interpreter:libpython":
            files.append((f"usr/lib/x86_64-linux-gnu/{m.path.name}", m.path))
        else:
            target = image_path(m.path, roots)
            files.append((target, m.path))
            if m.kind == "source":
                sources.append((target, m.path))
    files += distribution_metadata(
        {t.split("/")[4] for t, _ in files if t.count("/") > 4 and "/site-packages/" in t}, roots
    )
    return files, sources


def distribution_metadata(tops: set[str], roots: list[tuple[str, str]]) -> list[tuple[str, Path]]:
    """The ``METADATA`` file of each installed distribution that ships one
    of the top-level names ``tops``: the Keep reads wasmtime's version
    from it (stockade.keep.loading.runtime_name)."""
    import importlib.metadata as md

    out: list[tuple[str, Path]] = []
    for top, dists in sorted(md.packages_distributions().items()):
        if top.split(".")[0] not in tops:
            continue
        for name in sorted(set(dists)):
            dist = md.distribution(name)
            meta = getattr(dist, "_path", None)
            if isinstance(meta, Path) and (meta / "METADATA").is_file() and meta.suffix == ".dist-info":
                out.append((image_path(meta / "METADATA", roots), meta / "METADATA"))
    return sorted(set(out))


def compile_pycs(sources: list[tuple[str, Path]], staging: Path) -> list[tuple[str, Path]]:
    """Compile each source to an unchecked hash-based pyc (PEP 552) whose
    code objects name the image path, in one fresh interpreter, in sorted
    order (marshal output depends on the interpreter's state)."""
    from importlib.util import cache_from_source

    jobs = []
    out: list[tuple[str, Path]] = []
    for target, source in sorted(sources):
        cached = cache_from_source("/" + target)
        staged = staging / cached.lstrip("/")
        jobs.append([str(source), str(staged), "/" + target])
        out.append((cached.lstrip("/"), staged))
    script = (
        "import json, py_compile, sys\n"
        "for src, cfile, dfile in json.load(sys.stdin):\n"
        "    py_compile.compile(src, cfile, dfile, doraise=True,\n"
        "        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", script],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": "0"},
        check=False,
    )
    if proc.returncode != 0:
        raise ImageError(f"compiling the Keep runtime failed: {proc.stderr.strip().splitlines()[-1:]}")
    return out


_LDD_LINE = re.compile(r"^\s*(?:(\S+) => )?(/\S+) \(0x[0-9a-f]+\)$")


def shared_libraries(elves: list[Path]) -> dict[str, Path]:
    """Image path -> host file of every shared library the ELF files need
    (ldd, resolved on this machine), and of the dynamic loader."""
    out: dict[str, Path] = {}
    for elf in sorted(set(elves)):
        proc = subprocess.run(["ldd", str(elf)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            if "not a dynamic executable" in proc.stdout + proc.stderr:
                continue
            raise ImageError(f"ldd {elf} failed: {proc.stderr.strip()}")
        for line in proc.stdout.splitlines():
            if "not found" in line:
                raise ImageError(f"{elf} needs a library this machine lacks: {line.strip()}")
            m = _LDD_LINE.match(line)
            if m is None:
                continue
            soname, path = m.group(1), Path(m.group(2))
            if soname is None:  # the dynamic loader, at its absolute path
                out[str(path).lstrip("/")] = path.resolve()
            elif "libpython" not in soname:  # placed with the interpreter
                out[f"usr/lib/x86_64-linux-gnu/{soname}"] = path.resolve()
    return out


# == kernel modules ==========================================================================================


def module_order(kernel: Kernel) -> list[tuple[str, Path]]:
    """(name, file) of the modules to load, dependencies first."""
    deps: dict[str, list[str]] = {}
    files: dict[str, str] = {}
    for line in (kernel.modules_dir / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        name = Path(target).name.split(".ko")[0].replace("-", "_")
        files[name] = target
        deps[name] = [Path(d).name.split(".ko")[0].replace("-", "_") for d in rest.split()]
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for dep in deps[name]:
            visit(dep)
        order.append(name)

    for name in REQUIRED_MODULES:
        key = name.replace("-", "_")
        if key in deps:
            visit(key)
        elif not _builtin(kernel, name):
            raise ImageError(f"kernel {kernel.release} has no module {name} (needed for virtio-serial)")
    for name in OPTIONAL_MODULES:
        key = name.replace("-", "_")
        if key in deps:
            visit(key)
    out = []
    for name in order:
        path = kernel.modules_dir / files[name]
        if path.suffix != ".ko":
            raise ImageError(f"{path}: compressed kernel modules are not supported (busybox insmod)")
        out.append((name, path))
    return out


def _builtin(kernel: Kernel, name: str) -> bool:
    builtin = kernel.modules_dir / "modules.builtin"
    if not builtin.is_file():
        return False
    wanted = {name.replace("-", "_"), name.replace("_", "-")}
    return any(Path(line).name.split(".ko")[0] in wanted for line in builtin.read_text().splitlines())


# == init ==================================================================================================


def init_script(modules: list[str]) -> str:
    py = f"/usr/bin/python{sys.version_info[0]}"
    loads = "\n".join(f"insmod /lib/modules/{m}.ko || fail 'cannot load module {m}'" for m in modules)
    return f"""#!/bin/busybox sh
# stockade Keep image init (generated by stockade.image.build; part of the
# measured initrd). Mounts the kernel file systems, loads the virtio-serial
# driver, runs the Keep once, and powers the VM off when it ends.
export PATH=/bin
fail() {{ echo "stockade init: $1" >&2; poweroff -f; }}
/bin/busybox --install -s /bin || fail "busybox --install failed"
mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev || fail "mounts failed"
# configfs-tsm reports live in configfs (SEV-SNP and TDX guests, Linux >= 6.7)
[ -d /sys/kernel/config ] && mount -t configfs configfs /sys/kernel/config
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run && mkdir -p {GUEST_SCRATCH} || fail "no /run"
{loads}
{py} -I -B -m stockade.keep --backend vm --scratch {GUEST_SCRATCH}
echo "stockade init: the Keep exited with status $?" >&2
poweroff -f
"""


# == the build ==============================================================================================


def runtime_fingerprint(k: Kernel | None = None) -> str:
    """What a rebuild would change: the measured Keep runtime of this
    installation, this builder, and the kernel an image would boot (default:
    :func:`find_kernel`'s) (recorded in the manifest; ``stockade run
    --backend vm`` rebuilds its image when the two differ)."""
    from stockade.measure.launch import keep_measurement

    k = k or find_kernel()
    st = k.path.stat()
    return hashlib.sha256(
        keep_measurement() + Path(__file__).read_bytes() + f"\0{k.path}\0{st.st_size}\0{k.version}".encode()
    ).hexdigest()


def source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    if not value.isdigit():
        raise ImageError(f"SOURCE_DATE_EPOCH must be a number of seconds, got {value!r}")
    return int(value)


def build(
    out: Path,
    kernel: Path | None = None,
    modules_dir: Path | None = None,
    cmdline: str = DEFAULT_CMDLINE,
    busybox: Path | None = None,
    progress: Progress = _quiet,
) -> Manifest:
    """Build a Keep image into ``out`` (created, or replaced when it holds an
    image); return its manifest."""
    from stockade import __version__
    from stockade.measure.vm import sim_vm_digest_of

    if out.exists() and any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise ImageError(f"{out} exists and is not a Keep image directory; choose an empty or new directory")
    k = find_kernel(kernel, modules_dir)
    bb = find_busybox(busybox)
    mtime = source_date_epoch()
    tree = Tree()
    with tempfile.TemporaryDirectory(prefix="stockade-image-") as tmp:
        files, sources = runtime_files(progress)
        progress(f"compiling {len(sources)} modules")
        pycs = compile_pycs(sources, Path(tmp))
        for target, host in [*files, *pycs]:
            tree.add_file(target, host, strip=True)
        elves = [host for target, host in files if host.suffix == ".so" or ".so." in host.name]
        elves += [host for target, host in files if target.startswith("usr/bin/")]
        progress("collecting shared libraries")
        for target, host in sorted(shared_libraries(elves).items()):
            tree.add_file(target, host, strip=True)
        modules = module_order(k)
        for name, path in modules:
            tree.add_file(f"lib/modules/{name}.ko", path)
        tree.add_file("bin/busybox", bb)
        tree.add(cpio.Entry.file("init", init_script([n for n, _ in modules]).encode(), executable=True))
        for d in ("dev", "proc", "sys", "tmp", "run", "etc"):
            tree.add(cpio.Entry.directory(d))
        tree.add(cpio.Entry.file("etc/stockade-keep-image", f"stockade {__version__}\n".encode()))
        progress(f"writing the initramfs ({len(tree.members)} members)")
        initrd = tree.archive(mtime)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=out))
    try:
        shutil.copyfile(k.path, staging / KERNEL_FILE)
        (staging / INITRD_FILE).write_bytes(initrd)
        (staging / CMDLINE_FILE).write_text(cmdline, encoding="utf-8")
        kernel_c = Component.of(
            staging / KERNEL_FILE,
            KERNEL_FILE,
            {"package": k.package, "version": k.version, "release": k.release},
        )
        # The initrd's digest from the bytes in memory: the file is not read back.
        initrd_c = Component(
            INITRD_FILE, hashlib.sha256(initrd).hexdigest(), len(initrd), {"members": str(len(tree.members))}
        )
        progress("computing launch measurements")
        digest = sim_vm_digest_of(bytes.fromhex(kernel_c.sha256), bytes.fromhex(initrd_c.sha256), cmdline)
        manifest = Manifest(
            format=FORMAT,
            stockade_version=__version__,
            kernel=kernel_c,
            initrd=initrd_c,
            cmdline=cmdline,
            components={**_versions(), "runtime": runtime_fingerprint(k)},
            measurements={"vm": digest.hex()},
        )
        (staging / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
        for name in (KERNEL_FILE, INITRD_FILE, CMDLINE_FILE, MANIFEST_FILE):
            os.chmod(staging / name, 0o644)
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {
        "python": sys.version.split()[0],
        "busybox-static": _dpkg_version("busybox-static"),
    }
    for dist in ("wasmtime", "cryptography", "pyOpenSSL", "cbor2", "cffi"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return versions
