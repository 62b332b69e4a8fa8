"""The QEMU command lines of VM Keeps (stockade.host.vm.qemu_argv).

The vm backend's command line runs in tests/test_vm.py. The snp and tdx
command lines cannot run here (no SEV-SNP or TDX hardware, and Debian 12's
QEMU 7.2 predates the sev-snp-guest (9.1) and tdx-guest objects): they are
checked against the options QEMU documents (docs/system/i386/
amd-memory-encryption.rst, docs/system/i386/tdx.rst) and, for every object
and device the installed QEMU has, against the properties it reports; a
manager started with ``--backend snp`` starts exactly that command line
(a stand-in QEMU records it).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from manager_support import running_server
from stockade.errors import ImageError
from stockade.host.vm import VmConfig, qemu_argv
from stockade.image.manifest import load

QEMU = shutil.which("qemu-system-x86_64")


def _opts(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def _props(spec: str) -> dict[str, str]:
    kind, _, rest = spec.partition(",")
    out = {"": kind}
    for item in rest.split(","):
        key, _, value = item.partition("=")
        out[key] = value
    return out


@pytest.fixture(scope="module")
def image(keep_image: Path):
    return load(keep_image)


def test_vm_command_line(image) -> None:
    argv = qemu_argv(VmConfig(image), "vm", conn_fd=7, psp_fd=8)
    for flag in ("-nodefaults", "-no-user-config", "-nographic", "-no-reboot"):
        assert flag in argv
    assert _opts(argv, "-nic") == ["none"]
    assert _opts(argv, "-kernel") == [str(image.kernel)] and _opts(argv, "-initrd") == [str(image.initrd)]
    assert _opts(argv, "-append") == [image.cmdline]
    chardevs = [_props(c) for c in _opts(argv, "-chardev")]
    assert {"": "socket", "id": "conn", "fd": "7"} in chardevs and {
        "": "socket",
        "id": "psp",
        "fd": "8",
    } in chardevs
    ports = {
        p["name"]: p["chardev"] for p in map(_props, _opts(argv, "-device")) if p[""] == "virtserialport"
    }
    assert ports == {"stockade.conn": "conn", "stockade.psp": "psp"}
    assert _opts(argv, "-sandbox") == [
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
    ]
    assert _opts(argv, "-accel") == ["tcg,tb-size=64"] and _opts(argv, "-cpu") == ["max"]
    kvm = qemu_argv(VmConfig(image, accel="kvm"), "vm", conn_fd=7, psp_fd=8)
    assert _opts(kvm, "-machine") == ["q35,accel=kvm"] and _opts(kvm, "-cpu") == ["host"]
    with pytest.raises(ValueError, match="sim PSP"):
        qemu_argv(VmConfig(image), "vm", conn_fd=7, psp_fd=None)


def test_snp_command_line(image, tmp_path: Path) -> None:
    ovmf = tmp_path / "OVMF.amdsev.fd"
    argv = qemu_argv(VmConfig(image, firmware=ovmf, memory_mib=1024), "snp", conn_fd=7, psp_fd=None)
    machine = _props(_opts(argv, "-machine")[0])
    assert machine == {
        "": "q35",
        "accel": "kvm",
        "confidential-guest-support": "sev0",
        "memory-backend": "ram0",
    }
    objects = {o[""]: o for o in map(_props, _opts(argv, "-object"))}
    assert objects["sev-snp-guest"] == {
        "": "sev-snp-guest",
        "id": "sev0",
        "cbitpos": "51",
        "reduced-phys-bits": "1",
        "kernel-hashes": "on",
    }
    assert (
        objects["memory-backend-memfd"]["id"] == "ram0" and objects["memory-backend-memfd"]["size"] == "1024M"
    )
    assert _opts(argv, "-bios") == [str(ovmf)]
    assert "psp" not in " ".join(argv)  # the guest asks its own firmware
    assert any("romfile=" in d for d in _opts(argv, "-device"))  # no option ROM to measure


def test_tdx_command_line(image, tmp_path: Path) -> None:
    tdvf = tmp_path / "OVMF.tdx.fd"
    argv = qemu_argv(VmConfig(image, firmware=tdvf), "tdx", conn_fd=7, psp_fd=None)
    machine = _props(_opts(argv, "-machine")[0])
    assert machine["kernel-irqchip"] == "split" and machine["confidential-guest-support"] == "tdx0"
    assert {"": "tdx-guest", "id": "tdx0"} in [_props(o) for o in _opts(argv, "-object")]
    assert _opts(argv, "-bios") == [str(tdvf)] and _opts(argv, "-cpu") == ["host"]
    assert "-net" not in argv and "-tpmdev" not in argv and "-shim" not in argv  # unmeasured extras


def test_hardware_backends_need_firmware(image) -> None:
    for backend in ("snp", "tdx"):
        with pytest.raises(ImageError, match="needs its firmware"):
            qemu_argv(VmConfig(image), backend, conn_fd=7, psp_fd=None)
    with pytest.raises(ImageError, match="vCPUs"):
        VmConfig(image, vcpus=0)
    with pytest.raises(ImageError, match="acceleration"):
        VmConfig(image, accel="hvf")


def _qemu_help(*args: str) -> str:
    assert QEMU is not None
    proc = subprocess.run([QEMU, *args], capture_output=True, text=True, timeout=30, check=False)
    return proc.stdout + proc.stderr


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
@pytest.mark.parametrize("backend", ["vm", "snp", "tdx"])
def test_every_object_and_device_property_is_one_the_installed_qemu_knows(image, backend: str) -> None:
    argv = qemu_argv(VmConfig(image, firmware=Path("/dev/null")), backend, conn_fd=7, psp_fd=8)
    known_objects = _qemu_help("-object", "help")
    missing = []
    for spec in [*_opts(argv, "-object"), *_opts(argv, "-device")]:
        props = _props(spec)
        kind = props.pop("")
        flag = "-device" if spec in _opts(argv, "-device") else "-object"
        if flag == "-object" and f"  {kind}\n" not in known_objects and kind not in known_objects.split():
            missing.append(kind)
            continue
        reported = _qemu_help(flag, f"{kind},help")
        for prop in props:
            if prop not in ("id", "bus"):  # generic qdev properties, not listed per type
                assert f"{prop}=" in reported or f" {prop} " in reported, f"{kind} has no property {prop}"
    if missing:
        version = _qemu_help("--version").splitlines()[0]
        pytest.skip(f"{version} has no {', '.join(missing)} (sev-snp-guest: QEMU >= 9.1; tdx-guest: >= 10.1)")


def test_a_manager_starts_snp_keeps_with_that_command_line(
    state_dir: Path, tmp_path_factory: pytest.TempPathFactory, keep_image: Path, tmp_path: Path
) -> None:
    """With a stand-in QEMU that records its arguments (no SNP hardware here)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "argv"
    fake = bindir / "qemu-system-x86_64"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\nsleep 0.2\nexit 1\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    ovmf = tmp_path / "OVMF.amdsev.fd"
    ovmf.write_bytes(b"\0" * 4096)
    env_path = f"{bindir}:{os.environ['PATH']}"
    old = os.environ["PATH"]
    os.environ["PATH"] = env_path  # the server inherits it
    try:
        with running_server(
            state_dir,
            tmp_path_factory,
            serve_args=("--backend", "snp", "--image", str(keep_image), "--firmware", str(ovmf)),
        ) as server:
            import cbor2

            headers = {"authorization": f"Bearer {server.token}", "content-type": "application/cbor"}
            resp = httpx.post(
                f"{server.url}/v1/keeps", headers=headers, content=cbor2.dumps({"backend": "snp"})
            )
            assert resp.status_code == 201, resp.text
            deadline = time.monotonic() + 10
            while not record.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            argv = record.read_text().splitlines()
            assert "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on" in argv
            assert _opts(argv, "-bios") == [str(ovmf)]
            resp = httpx.post(
                f"{server.url}/v1/keeps", headers=headers, content=cbor2.dumps({"backend": "vm"})
            )
            assert resp.status_code == 422  # not enabled on this manager
    finally:
        os.environ["PATH"] = old


def test_snp_serve_and_deploy_refuse_what_they_cannot_do(stockade, keep_image: Path) -> None:
    proc = stockade("host", "serve", "--backend", "snp", "--image", str(keep_image))
    assert proc.returncode == 2 and b"needs --firmware" in proc.stderr
    proc = stockade(
        "deploy", "--host", "http://127.0.0.1:9", "--backend", "snp", "x.wasm", env={"STOCKADE_TOKEN": "t"}
    )
    assert proc.returncode == 2 and b"needs --policy" in proc.stderr
