"""stockade.host.vmprobe: finding QEMU, the KVM/TCG probe (fake QEMU scripts
and one real probe with the installed QEMU), and SEV-SNP / TDX host support
on fake machine trees."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade.host import vmprobe
from stockade.host.vmprobe import AccelProbe, GuestRun, QemuInfo, SevStatus

AMD = "AuthenticAMD"
INTEL = "GenuineIntel"


@pytest.fixture(autouse=True)
def _fresh_memo() -> Iterator[None]:
    vmprobe.clear_memo()
    yield
    vmprobe.clear_memo()


# --- the probe guest -------------------------------------------------------------------------------


def test_boot_sector_layout() -> None:
    sector = vmprobe.boot_sector()
    assert len(sector) == 512 and sector.endswith(b"\x55\xaa")
    assert vmprobe.BANNER + b"\0" in sector
    # mov ecx, LOOP_ITERATIONS (b9 imm32) then dec ecx (ff c9) / jnz back (75 fc)
    loop = b"\xb9" + struct.pack("<I", vmprobe.LOOP_ITERATIONS) + b"\xff\xc9\x75\xfc"
    assert loop in sector
    # isa-debug-exit: mov al, EXIT_VALUE; out 0xf4, al
    assert bytes([0xB0, vmprobe.EXIT_VALUE, 0xE6, 0xF4]) in sector
    # the GDT: null, 32-bit code, data, 64-bit code
    gdt = struct.pack("<4Q", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF, 0x00AF9A000000FFFF)
    at = sector.index(gdt)
    assert at % 8 == 0
    # lgdt operand -> the GDTR right after the GDT, whose base is the GDT's linear address
    gdtr = at + len(gdt)
    assert struct.unpack_from("<HI", sector, gdtr) == (31, vmprobe.LOAD_ADDRESS + at)
    assert b"\x0f\x01\x16" + struct.pack("<H", vmprobe.LOAD_ADDRESS + gdtr) in sector
    assert vmprobe.boot_sector(7) != sector
    for bad in (0, 1 << 32):
        with pytest.raises(ValueError):
            vmprobe.boot_sector(bad)


def test_stages_are_read_after_the_banner() -> None:
    assert vmprobe._stages(b"") == ""
    assert vmprobe._stages(b"noise PLD") == ""
    assert vmprobe._stages(b"SeaBIOS\nstockade-probe R") == "R"
    assert vmprobe._stages(b"stockade-probe RP") == "RP"
    assert vmprobe._stages(b"stockade-probe RPLD\n") == "RPLD"
    assert vmprobe._stages(b"stockade-probe RLD") == "R"  # no protected mode: nothing after counts


def test_parse_qemu_version() -> None:
    assert vmprobe.parse_qemu_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)") == (7, 2, 22)
    assert vmprobe.parse_qemu_version("QEMU emulator version 10.1.0\nCopyright") == (10, 1, 0)
    assert vmprobe.parse_qemu_version("QEMU emulator version 9.1") == (9, 1, 0)
    assert vmprobe.parse_qemu_version("qemu-img version 7.2.0") is None
    assert vmprobe.parse_qemu_version("") is None


# --- fake QEMU scripts -----------------------------------------------------------------------------

FAKE = """#!/bin/sh
# A fake qemu-system-x86_64 for the probe tests.
[ "$1" = "--version" ] && {{ echo "QEMU emulator version {version} (fake)"; exit 0; }}
accel=$2
echo "$accel $$" >> "{log}"
if [ "$accel" = kvm ]; then
{kvm}
else
{tcg}
fi
"""
GOOD = '  printf "stockade-probe RPL"; printf "D\\n"; exit 99'
SLOW = '  printf "stockade-probe RPL"; sleep 0.4; printf "D\\n"; exit 99'
HANG = "  printf 'stockade-probe RP'; exec sleep 60"
NO_KVM = '  echo "Could not access KVM kernel module: No such file or directory" >&2; echo "failed to initialize kvm: No such file or directory" >&2; exit 1'


def fake_qemu(
    tmp_path: Path,
    *,
    kvm: str = GOOD,
    tcg: str = GOOD,
    version: str = "7.2.22",
    name: str = "qemu-system-x86_64",
) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    script = bindir / name
    script.write_text(FAKE.format(version=version, log=tmp_path / "runs.log", kvm=kvm, tcg=tcg))
    script.chmod(0o755)
    return script


def runs(tmp_path: Path) -> list[str]:
    log = tmp_path / "runs.log"
    return log.read_text().split("\n")[:-1] if log.exists() else []


def test_find_qemu_on_path_and_in_the_environment(tmp_path: Path) -> None:
    script = fake_qemu(tmp_path, version="9.1.2")
    found = vmprobe.find_qemu({"PATH": str(script.parent)})
    assert found == QemuInfo(str(script), (9, 1, 2), "QEMU emulator version 9.1.2 (fake)")
    assert found.at_least(vmprobe.MIN_QEMU_SNP) and not found.at_least(vmprobe.MIN_QEMU_TDX)
    (tmp_path / "other").mkdir()
    other = fake_qemu(tmp_path / "other", version="10.1.0")
    env = {"PATH": str(script.parent), vmprobe.QEMU_ENV: str(other)}
    found = vmprobe.find_qemu(env)
    assert found is not None and found.path == str(other) and found.version == (10, 1, 0)
    assert vmprobe.find_qemu({"PATH": str(tmp_path / "empty")}) is None
    # $STOCKADE_QEMU wins over PATH, even when it names nothing usable.
    assert vmprobe.find_qemu({"PATH": str(script.parent), vmprobe.QEMU_ENV: str(tmp_path / "nope")}) is None
    notqemu = tmp_path / "notqemu"
    notqemu.write_text("#!/bin/sh\necho hello\n")
    notqemu.chmod(0o755)
    assert vmprobe.find_qemu({vmprobe.QEMU_ENV: str(notqemu)}) is None
    plain = tmp_path / "plain"
    plain.write_text("not executable")
    assert vmprobe.find_qemu({vmprobe.QEMU_ENV: str(plain)}) is None


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_a_kvm_guest_that_hangs_is_killed_and_reaped(tmp_path: Path) -> None:
    qemu = fake_qemu(tmp_path, kvm=HANG)
    start = time.monotonic()
    probe = vmprobe.probe_accel(str(qemu), timeout=1.0)
    took = time.monotonic() - start
    assert probe.accel == "tcg" and not probe.kvm_usable and probe.tcg_usable
    assert "did not finish within 1 s" in probe.reason and "protected mode" in probe.reason
    assert took < 4.0 and probe.seconds < 4.0
    (kvm_run,) = [r for r in runs(tmp_path) if r.startswith("kvm ")]
    pid = int(kvm_run.split()[1])  # the shell exec'd sleep: same pid
    assert _gone(pid), "the hanging QEMU was left running"


def test_kvm_slower_than_tcg_is_not_used(tmp_path: Path) -> None:
    probe = vmprobe.probe_accel(str(fake_qemu(tmp_path, kvm=SLOW)), timeout=5.0)
    assert probe.accel == "tcg" and not probe.kvm_usable
    assert "slower than under TCG" in probe.reason
    assert probe.kvm_loop_seconds is not None and probe.kvm_loop_seconds >= 0.3
    assert probe.tcg_loop_seconds is not None and probe.tcg_loop_seconds < probe.kvm_loop_seconds


def test_kvm_at_least_as_fast_as_tcg_is_chosen(tmp_path: Path) -> None:
    probe = vmprobe.probe_accel(str(fake_qemu(tmp_path, tcg=SLOW)), timeout=5.0)
    assert probe.accel == "kvm" and probe.kvm_usable and probe.tcg_usable
    assert "reached long mode" in probe.reason


def test_kvm_that_qemu_cannot_open_says_why(tmp_path: Path) -> None:
    probe = vmprobe.probe_accel(str(fake_qemu(tmp_path, kvm=NO_KVM)), timeout=5.0)
    assert probe.accel == "tcg" and not probe.kvm_usable
    assert "QEMU could not start a KVM guest" in probe.reason
    assert "failed to initialize kvm" in probe.reason


def test_a_guest_that_stops_early_is_not_counted(tmp_path: Path) -> None:
    # Right exit status but the guest never reached long mode: not a completed run.
    qemu = fake_qemu(tmp_path, kvm='  printf "stockade-probe RP"; exit 99', tcg="  exit 3")
    probe = vmprobe.probe_accel(str(qemu), timeout=5.0)
    assert not probe.kvm_usable and not probe.tcg_usable
    assert "stopped after protected mode" in probe.reason


def test_kvm_alone_is_used_when_tcg_fails(tmp_path: Path) -> None:
    probe = vmprobe.probe_accel(str(fake_qemu(tmp_path, tcg="  exit 1")), timeout=5.0)
    assert probe.accel == "kvm" and probe.kvm_usable and not probe.tcg_usable
    assert "TCG failed" in probe.reason


def test_probe_is_memoised_per_process(tmp_path: Path) -> None:
    qemu = str(fake_qemu(tmp_path))
    first = vmprobe.probe_accel(qemu, timeout=5.0)
    second = vmprobe.probe_accel(qemu, timeout=5.0)
    assert first is second
    assert len(runs(tmp_path)) == 2  # one TCG and one KVM run, once
    vmprobe.clear_memo()
    vmprobe.probe_accel(qemu, timeout=5.0)
    assert len(runs(tmp_path)) == 4


def test_probe_cache_file_is_keyed_by_qemu_version(tmp_path: Path) -> None:
    qemu = fake_qemu(tmp_path, kvm=SLOW)
    cache = tmp_path / "cache" / "accel.json"
    first = vmprobe.probe_accel(str(qemu), timeout=5.0, cache_file=cache)
    assert cache.exists() and not first.cached
    vmprobe.clear_memo()
    again = vmprobe.probe_accel(str(qemu), timeout=5.0, cache_file=cache)
    assert again.cached and again.accel == first.accel and again.reason == first.reason
    assert len(runs(tmp_path)) == 2
    # A different QEMU version invalidates it.
    fake_qemu(tmp_path, kvm=SLOW, version="8.0.0")
    vmprobe.clear_memo()
    fresh = vmprobe.probe_accel(str(qemu), timeout=5.0, cache_file=cache)
    assert not fresh.cached and len(runs(tmp_path)) == 4
    # A damaged cache is ignored, not trusted.
    cache.write_text('{"key": 1, "probe": {"accel": "kvm"}}')
    vmprobe.clear_memo()
    assert not vmprobe.probe_accel(str(qemu), timeout=5.0, cache_file=cache).cached


def test_auto_accel(tmp_path: Path) -> None:
    assert vmprobe.auto_accel({"PATH": str(tmp_path / "none")}) == ("tcg", None)
    qemu = fake_qemu(tmp_path, tcg=SLOW)
    accel, probe = vmprobe.auto_accel({vmprobe.QEMU_ENV: str(qemu)}, cache_file=tmp_path / "accel.json")
    assert accel == "kvm" and probe is not None and probe.kvm_usable
    assert (tmp_path / "accel.json").exists()


def test_decide_from_runs() -> None:
    def run(accel: vmprobe.Accel, loop: float | None, *, done: bool = True) -> GuestRun:
        return GuestRun(accel, done, "RPLD" if done else "RPL", loop, 0.5, not done, 99 if done else None, "")

    assert vmprobe.decide(run("tcg", 0.01), run("kvm", 0.001), 5).accel == "kvm"
    assert vmprobe.decide(run("tcg", 0.01), run("kvm", 0.01), 5).accel == "kvm"
    slow = vmprobe.decide(run("tcg", 0.004), run("kvm", 1.1), 5)
    assert slow.accel == "tcg" and "275x slower" in slow.reason
    hung = vmprobe.decide(run("tcg", 0.01), run("kvm", None, done=False), 5)
    assert hung.accel == "tcg" and "did not finish within 5 s (it reached long mode)" in hung.reason
    assert hung.seconds == 1.0
    assert AccelProbe.from_json(slow.to_json()) == slow
    with pytest.raises(ValueError):
        AccelProbe.from_json({**slow.to_json(), "accel": "hvf"})


@pytest.mark.skipif(vmprobe.find_qemu() is None, reason="qemu-system-x86_64 is not installed")
def test_real_probe_with_the_installed_qemu() -> None:
    """TCG must boot the probe guest here; KVM may or may not (this CI machine
    has a /dev/kvm whose guests run emulated): only ask that the probe returns
    within its timeouts and says why."""
    qemu = vmprobe.find_qemu()
    assert qemu is not None
    timeout = 5.0
    start = time.monotonic()
    probe = vmprobe.probe_accel(qemu.path, timeout=timeout)
    assert time.monotonic() - start < 2 * timeout + 3
    assert probe.tcg_usable, probe.reason
    assert probe.tcg_loop_seconds is not None and probe.tcg_loop_seconds < timeout
    assert probe.reason
    if probe.kvm_usable:
        assert probe.accel == "kvm" and probe.kvm_loop_seconds is not None
    else:
        assert probe.accel == "tcg"


# --- SEV-SNP / TDX host support --------------------------------------------------------------------


def tree(
    root: Path,
    *,
    vendor: str,
    flags: str = "",
    kernel: str = "6.12.0-1-amd64",
    files: dict[str, str] | None = None,
) -> Path:
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/osrelease").write_text(kernel + "\n")
    (root / "proc/cpuinfo").write_text(f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: fpu {flags}\n\n")
    for rel, text in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


SNP_HOST = {
    "sys/module/kvm_amd/parameters/sev": "Y\n",
    "sys/module/kvm_amd/parameters/sev_es": "Y\n",
    "sys/module/kvm_amd/parameters/sev_snp": "Y\n",
    "dev/sev": "",
}
TDX_HOST = {
    "sys/module/kvm_intel/parameters/tdx": "Y\n",
    "sys/firmware/tdx/tdx_module/major_version": "1\n",
    "sys/firmware/tdx/tdx_module/minor_version": "5\n",
    "sys/firmware/tdx/tdx_module/build_num": "0x2f0\n",
}
QEMU_7 = QemuInfo("/usr/bin/qemu-system-x86_64", (7, 2, 22), "QEMU emulator version 7.2.22")
QEMU_91 = QemuInfo("/opt/qemu/bin/qemu-system-x86_64", (9, 1, 0), "QEMU emulator version 9.1.0")
QEMU_101 = QemuInfo("/opt/qemu/bin/qemu-system-x86_64", (10, 1, 0), "QEMU emulator version 10.1.0")
FW_155 = SevStatus(api_major=1, api_minor=55, build=21, state=1, snp=True, current_tcb=0xDB18000000000004)


def by(host: vmprobe.TeeHost, name: str) -> vmprobe.Requirement:
    (found,) = [r for r in host.requirements if r.name == name]
    return found


def test_a_complete_snp_host(tmp_path: Path) -> None:
    root = tree(tmp_path, vendor=AMD, flags="sev sev_es sev_snp", files=SNP_HOST)
    tee = vmprobe.host_tee_support(root, qemu=QEMU_91, sev_reader=lambda dev: FW_155)
    assert tee.snp.supported, tee.snp.missing
    assert tee.snp.firmware == "1.55 build 21"
    assert "current TCB 0xdb18000000000004" in by(tee.snp, "firmware").detail
    assert by(tee.snp, "QEMU").status == "ok"
    assert not tee.tdx.supported
    assert by(tee.tdx, "CPU").detail == "AuthenticAMD: not an Intel CPU"
    doc = tee.to_json()
    assert doc["snp"]["supported"] is True and doc["tdx"]["supported"] is False


@pytest.mark.parametrize(
    ("change", "name", "fix"),
    [
        ({"flags": "sev sev_es"}, "CPU", "SEV-SNP enabled in the BIOS"),
        ({"kernel": "6.1.0-28-cloud-amd64"}, "host kernel", ">= 6.11"),
        (
            {"files": {**SNP_HOST, "sys/module/kvm_amd/parameters/sev_snp": "N\n"}},
            "kvm_amd",
            "kvm_amd.sev_snp=1",
        ),
        ({"files": {k: v for k, v in SNP_HOST.items() if "kvm_amd" not in k}}, "kvm_amd", "modprobe kvm_amd"),
        (
            {"files": {k: v for k, v in SNP_HOST.items() if k != "dev/sev"}},
            "/dev/sev",
            "CONFIG_CRYPTO_DEV_SP_PSP",
        ),
        ({"qemu": QEMU_7}, "QEMU", "QEMU >= 9.1"),
        ({"qemu": None}, "QEMU", "install QEMU >= 9.1"),
        ({"firmware": SevStatus(1, 49, 3, 0, snp=False)}, "firmware", "firmware API >= 1.51"),
    ],
)
def test_each_missing_snp_piece_names_its_fix(
    tmp_path: Path, change: dict[str, object], name: str, fix: str
) -> None:
    flags = change.get("flags", "sev sev_es sev_snp")
    kernel = change.get("kernel", "6.12.0-1-amd64")
    files = change.get("files", SNP_HOST)
    assert isinstance(flags, str) and isinstance(kernel, str) and isinstance(files, dict)
    root = tree(tmp_path, vendor=AMD, flags=flags, kernel=kernel, files=files)
    qemu = change.get("qemu", QEMU_91)
    assert qemu is None or isinstance(qemu, QemuInfo)
    firmware = change.get("firmware", FW_155)
    assert isinstance(firmware, SevStatus)
    tee = vmprobe.host_tee_support(root, qemu=qemu, sev_reader=lambda dev: firmware)
    assert not tee.snp.supported
    assert [r.name for r in tee.snp.missing] == [name]
    assert fix in by(tee.snp, name).fix


def test_unreadable_sev_firmware_is_unknown_not_missing(tmp_path: Path) -> None:
    root = tree(tmp_path, vendor=AMD, flags="sev_snp", files=SNP_HOST)
    tee = vmprobe.host_tee_support(
        root, qemu=QEMU_91, sev_reader=lambda dev: f"cannot open {dev}: Permission denied"
    )
    fw = by(tee.snp, "firmware")
    assert fw.status == "unknown" and "Permission denied" in fw.detail and "root" in fw.fix
    assert tee.snp.supported and tee.snp.firmware is None


def test_sev_device_qemu_may_not_open(tmp_path: Path) -> None:
    root = tree(tmp_path, vendor=AMD, flags="sev_snp", files=SNP_HOST)
    tee = vmprobe.host_tee_support(
        root,
        qemu=QEMU_91,
        sev_reader=lambda dev: FW_155,
        access=lambda path, mode: not str(path).endswith("dev/sev"),
    )
    dev = by(tee.snp, "/dev/sev")
    assert dev.status == "missing" and "udev" in dev.fix


def test_a_complete_tdx_host_and_its_missing_pieces(tmp_path: Path) -> None:
    root = tree(tmp_path / "ok", vendor=INTEL, flags="tdx_host_platform", kernel="6.16.3", files=TDX_HOST)
    tee = vmprobe.host_tee_support(root, qemu=QEMU_101)
    assert tee.tdx.supported, tee.tdx.missing
    assert tee.tdx.firmware == "1.5 build 752"
    assert by(tee.snp, "CPU").detail == "GenuineIntel: not an AMD CPU"
    # QEMU 9.1 has no tdx-guest; an old kernel; tdx=N; no module version in sysfs (unknown only).
    files = {**TDX_HOST, "sys/module/kvm_intel/parameters/tdx": "N\n"}
    files = {k: v for k, v in files.items() if "firmware" not in k}
    root = tree(tmp_path / "bad", vendor=INTEL, flags="", kernel="6.8.0", files=files)
    tee = vmprobe.host_tee_support(root, qemu=QEMU_91)
    assert [r.name for r in tee.tdx.missing] == ["CPU", "host kernel", "kvm_intel", "QEMU"]
    assert "kvm_intel.tdx=1" in by(tee.tdx, "kvm_intel").fix
    assert ">= 6.16" in by(tee.tdx, "host kernel").fix
    assert "QEMU >= 10.1" in by(tee.tdx, "QEMU").fix
    assert by(tee.tdx, "module").status == "unknown"


def test_sev_status_structures() -> None:
    snp = struct.pack("<BBBBIIIQQ", 1, 55, 1, 1, 21, 0, 2, 0x1234, 0x1200)
    assert len(snp) == 32
    assert vmprobe.parse_snp_status(snp) == SevStatus(1, 55, 21, 1, snp=True, current_tcb=0x1234)
    sev = struct.pack("<BBBIBI", 0, 24, 2, 0x100, 15, 0)
    assert len(sev) == 12
    assert vmprobe.parse_sev_status(sev) == SevStatus(0, 24, 15, 2, snp=False)
    # SEV_ISSUE_CMD = _IOWR('S', 0, struct sev_issue_cmd) with a 16-byte packed struct
    assert vmprobe._SEV_ISSUE_CMD == 0xC0105300


def test_read_sev_status_on_what_is_not_the_psp(tmp_path: Path) -> None:
    assert "cannot open" in str(vmprobe.read_sev_status(tmp_path / "missing"))
    plain = tmp_path / "sev"
    plain.write_text("")
    said = vmprobe.read_sev_status(plain)
    assert isinstance(said, str) and "platform-status" in said
