"""Keep images (stockade.image): reproducible, complete, checked on load.

Issue 15, item 1: building twice (different directories, umask, time zone)
gives identical bytes; the manifest names every component; the initramfs is
exactly the measured Keep runtime (nothing of the client, host or CLI); a
changed byte of the initrd or the command line changes the launch
measurement; an image changed after its build is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from stockade.errors import ImageError
from stockade.image import cpio
from stockade.image.build import DEFAULT_CMDLINE, find_kernel, init_script, module_order
from stockade.image.manifest import CMDLINE_FILE, INITRD_FILE, KERNEL_FILE, MANIFEST_FILE, load
from stockade.measure.vm import sim_vm_digest

FILES = (KERNEL_FILE, INITRD_FILE, CMDLINE_FILE, MANIFEST_FILE)


def _digests(directory: Path) -> dict[str, str]:
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in FILES}


def _members(image: Path) -> dict[str, tuple[int, bytes]]:
    return {name: (mode, data) for name, mode, data in cpio.read_names((image / INITRD_FILE).read_bytes())}


# == cpio ==================================================================================================


def test_cpio_round_trip_and_fixed_fields() -> None:
    entries = [
        cpio.Entry.directory("bin"),
        cpio.Entry.file("bin/tool", b"#!/bin/sh\n", executable=True),
        cpio.Entry.symlink("lib", "usr/lib"),
        cpio.Entry.file("odd", b"x" * 5),
    ]
    buf = io.BytesIO()
    n = cpio.write(buf, entries, mtime=1234)
    data = buf.getvalue()
    assert n == len(data) and len(data) % 4 == 0
    assert [(m[0], m[1]) for m in cpio.read_names(data)] == [(e.name, e.mode) for e in entries]
    assert cpio.read_names(data)[1][2] == b"#!/bin/sh\n"
    # Every header: owner 0, mtime as given, no device numbers.
    pos = 0
    for entry in entries:
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        assert fields[2:4] == [0, 0] and fields[5] == 1234 and fields[7:11] == [0, 0, 0, 0]
        namesize, size = fields[11], fields[6]
        pos += 110 + namesize
        pos += -pos % 4
        pos += size + (-size % 4)
        assert entry.name
    again = io.BytesIO()
    cpio.write(again, entries, mtime=1234)
    assert again.getvalue() == data


@pytest.mark.parametrize(
    "entries,message",
    [
        ([cpio.Entry.file("a", b""), cpio.Entry.file("a", b"")], "duplicate"),
        ([cpio.Entry.file("/abs", b"")], "relative"),
        ([cpio.Entry.file("", b"")], "relative"),
    ],
)
def test_cpio_refuses_bad_names(entries: list[cpio.Entry], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cpio.write(io.BytesIO(), entries)


def test_cpio_reader_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="bad magic"):
        cpio.read_names(b"070702" + b"0" * 200)


# == the image ==============================================================================================


def test_build_is_reproducible(keep_image: Path, tmp_path: Path) -> None:
    """A second build in another directory, with another umask and time
    zone, in a fresh interpreter, gives the same four files byte for byte."""
    other = tmp_path / "elsewhere" / "img"
    script = (
        "import os, sys; from pathlib import Path; os.umask(0o077);"
        "from stockade.image.build import build; build(Path(sys.argv[1]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    env["TZ"] = "Pacific/Chatham"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(other)], capture_output=True, env=env, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert _digests(other) == _digests(keep_image)


def test_manifest_names_every_component(keep_image: Path) -> None:
    doc = json.loads((keep_image / MANIFEST_FILE).read_text())
    kernel = find_kernel()
    assert doc["format"] == "stockade-keep-image/1"
    assert doc["kernel"]["package"] == f"linux-image-{kernel.release}"
    assert doc["kernel"]["version"] == kernel.version != "unknown"
    for part, name in (("kernel", KERNEL_FILE), ("initrd", INITRD_FILE)):
        data = (keep_image / name).read_bytes()
        assert doc[part]["sha256"] == hashlib.sha256(data).hexdigest()
        assert doc[part]["size"] == len(data)
    assert doc["cmdline"] == (keep_image / CMDLINE_FILE).read_text() == DEFAULT_CMDLINE
    assert doc["components"]["python"] == sys.version.split()[0]
    assert {"wasmtime", "cryptography", "busybox-static", "runtime"} <= set(doc["components"])
    image = load(keep_image)
    from_files = sim_vm_digest(image.kernel, image.initrd, image.cmdline)
    assert doc["measurements"]["vm"] == from_files.hex()
    # From the checked manifest's digests, and (unchecked) from the files: the same.
    assert image.checked and image.vm_measurement() == from_files
    assert load(keep_image, check=False).vm_measurement() == from_files
    # Nothing of the build machine's time or place.
    text = (keep_image / MANIFEST_FILE).read_text()
    assert str(keep_image) not in text and str(Path.cwd()) not in text


def test_initramfs_is_the_keep_runtime_and_nothing_of_the_client_or_host(keep_image: Path) -> None:
    members = _members(keep_image)
    site = f"usr/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
    for needed in (
        "init",
        "bin/busybox",
        f"usr/bin/python{sys.version_info[0]}",
        f"{site}/stockade/keep/__main__.py",
        f"{site}/stockade/keep/vmguest.py",
        f"{site}/stockade/evidence/sim/attester.py",
        f"{site}/wasmtime/linux-x86_64/_libwasmtime.so",
        "lib/modules/virtio_console.ko",
        "lib64/ld-linux-x86-64.so.2",
    ):
        assert needed in members, needed
    for name in members:
        for forbidden in (
            "stockade/client/",
            "stockade/host/",
            "stockade/commands/",
            "stockade/cli.py",
            "stockade/testing/",
        ):
            assert forbidden not in name, name
    # Owner root, fixed modes, one mtime: read from the raw headers.
    for name, (mode, _data) in members.items():
        assert stat.S_IMODE(mode) in (0o644, 0o755, 0o777), name
    assert members["init"][0] & 0o111


def test_pycs_are_unchecked_hash_based_and_name_image_paths(keep_image: Path) -> None:
    members = _members(keep_image)
    pycs = {n: d for n, (_m, d) in members.items() if n.endswith(".pyc")}
    assert len(pycs) > 100
    root = str(Path(__file__).resolve().parent.parent)
    for name, data in pycs.items():
        flags = int.from_bytes(data[4:8], "little")
        assert flags == 0b01, f"{name}: PEP 552 flags {flags:#b} (want hash-based, unchecked)"
        assert root.encode() not in data, f"{name} names the build checkout"
        source = name.replace("__pycache__/", "").rsplit(".", 2)[0] + ".py"
        assert source in members, f"{name} has no source beside it"


def test_elf_files_carry_no_debug_sections(keep_image: Path) -> None:
    members = _members(keep_image)
    libpython = next(d for n, (_m, d) in members.items() if "libpython" in n)
    assert libpython[:4] == b"\x7fELF"
    assert b".debug_info" not in libpython


def test_init_loads_modules_dependencies_first() -> None:
    from conftest import need_vm

    need_vm()
    kernel = find_kernel()
    names = [n for n, _ in module_order(kernel)]
    assert (
        names.index("virtio_ring")
        < names.index("virtio")
        < names.index("virtio_pci")
        < names.index("virtio_console")
    )
    script = init_script(names)
    assert script.startswith("#!/bin/busybox sh\n")
    assert script.index("insmod /lib/modules/virtio_ring.ko") < script.index(
        "insmod /lib/modules/virtio_console.ko"
    )
    assert "-m stockade.keep --backend vm" in script and "poweroff -f" in script


@pytest.mark.parametrize("where", ["kernel", "initrd-first", "initrd-last", "cmdline"])
def test_a_changed_byte_changes_the_launch_measurement(keep_image: Path, tmp_path: Path, where: str) -> None:
    kernel, initrd = tmp_path / KERNEL_FILE, tmp_path / INITRD_FILE
    shutil.copyfile(keep_image / KERNEL_FILE, kernel)
    shutil.copyfile(keep_image / INITRD_FILE, initrd)
    cmdline = (keep_image / CMDLINE_FILE).read_text()
    before = sim_vm_digest(kernel, initrd, cmdline)
    if where == "cmdline":
        cmdline = cmdline.replace("quiet", "quiEt")
    else:
        path = kernel if where == "kernel" else initrd
        data = bytearray(path.read_bytes())
        data[-1 if where.endswith("last") else 200] ^= 1
        path.write_bytes(bytes(data))
    after = sim_vm_digest(kernel, initrd, cmdline)
    assert len(after) == 48 and after != before


def test_an_image_changed_after_its_build_is_refused(keep_image: Path, tmp_path: Path) -> None:
    copy = tmp_path / "img"
    shutil.copytree(keep_image, copy)
    load(copy)  # intact
    data = bytearray((copy / INITRD_FILE).read_bytes())
    data[1000] ^= 0x40
    (copy / INITRD_FILE).write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"initrd\.img does not match the image manifest"):
        load(copy)
    shutil.copyfile(keep_image / INITRD_FILE, copy / INITRD_FILE)
    (copy / CMDLINE_FILE).write_text(DEFAULT_CMDLINE + " init=/bin/sh")
    with pytest.raises(ImageError, match="cmdline does not match"):
        load(copy)
    (copy / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ImageError, match="malformed Keep image manifest"):
        load(copy)
    with pytest.raises(ImageError, match="no Keep image in"):
        load(tmp_path / "nothing-here")


def test_image_cli_build_show_and_errors(stockade, keep_image: Path, tmp_path: Path) -> None:
    proc = stockade("image", "show", "--json", str(keep_image))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["measurements"]["vm"]
    bad = tmp_path / "bad"
    shutil.copytree(keep_image, bad)
    (bad / CMDLINE_FILE).write_text("console=ttyS0 init=/bin/sh")
    proc = stockade("image", "show", str(bad))
    assert proc.returncode == 121 and b"does not match the image manifest" in proc.stderr
    assert b"Traceback" not in proc.stderr
    not_a_kernel = tmp_path / "vmlinuz-0-cloud-amd64"
    not_a_kernel.write_bytes(b"\0" * 4096)
    proc = stockade("image", "build", "-q", "-o", str(tmp_path / "o"), "--kernel", str(not_a_kernel))
    assert proc.returncode == 121 and b"not a Linux x86 kernel image" in proc.stderr
    other = tmp_path / "occupied"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    proc = stockade("image", "build", "-q", "-o", str(other))
    assert proc.returncode == 121 and b"is not a Keep image directory" in proc.stderr
    assert (other / "precious.txt").read_text() == "keep me"


def test_build_with_a_kernel_named_otherwise_and_its_modules(tmp_path: Path) -> None:
    """--kernel FILE --modules DIR: a kernel whose file name names no release
    builds with the modules directory given (the runtime fingerprint uses
    the same kernel, not a second lookup that needs a release)."""
    from conftest import need_vm
    from stockade.image.build import build

    need_vm()
    kernel = find_kernel()
    bzimage = tmp_path / "bzImage"
    shutil.copyfile(kernel.path, bzimage)
    manifest = build(tmp_path / "img", kernel=bzimage, modules_dir=kernel.modules_dir)
    assert manifest.kernel.sha256 == hashlib.sha256(kernel.path.read_bytes()).hexdigest()
    assert manifest.kernel.about["package"] == "unknown" and manifest.components["runtime"]
    with pytest.raises(ImageError, match="give its modules directory"):
        build(tmp_path / "img2", kernel=bzimage)
