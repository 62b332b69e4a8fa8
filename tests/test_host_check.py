"""``stockade host check``: pre-flight diagnostics of the untrusted host, on
fake machine trees (stockade.host.diagnostics reads every path under an
injectable root) and, through the CLI, on this real machine."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stockade.host import vmprobe
from stockade.host.diagnostics import Check, Environment, HostReport, check_host
from stockade.host.vmprobe import AccelProbe, QemuInfo, SevStatus

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "contrib" / "stockade-host.service"

AMD = "AuthenticAMD"
INTEL = "GenuineIntel"


def cpuinfo(vendor: str, flags: str) -> str:
    cpu = f"processor\t: {{n}}\nvendor_id\t: {vendor}\nflags\t\t: fpu vme de pse {flags}\n\n"
    return "".join(cpu.format(n=n) for n in range(2))


def make_tree(
    root: Path,
    *,
    vendor: str = AMD,
    flags: str = "",
    kernel: str = "6.8.0-51-generic",
    files: dict[str, str] | None = None,
    dirs: tuple[str, ...] = (),
    shm: bool = True,
) -> Path:
    """A fake machine: /proc, /dev/shm, plus the given files and directories."""
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/osrelease").write_text(kernel + "\n")
    (root / "proc/cpuinfo").write_text(cpuinfo(vendor, flags))
    (root / "dev").mkdir()
    if shm:
        (root / "dev/shm").mkdir()
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for rel, text in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def tsm_files(provider: str) -> dict[str, str]:
    # An existing report entry tells the provider without creating one.
    return {"sys/kernel/config/tsm/report/entry0/provider": provider + "\n"}


def deny(*denied: str) -> Callable[[Path, int], bool]:
    """An access check that refuses the given paths (tests run as root)."""

    def access(path: Path, mode: int) -> bool:
        if any(str(path).endswith(d) for d in denied):
            return False
        return os.access(path, mode)

    return access


def no_qemu() -> QemuInfo | None:
    return None


def run_check(root: Path, tmp_path: Path, **kw: Any) -> HostReport:
    kw.setdefault("probe_disk", lambda: None)
    kw.setdefault("find_qemu", no_qemu)  # the real QEMU is probed once, in the CLI tests
    kw.setdefault("environ", {})
    env = Environment(root=root, state_dir=tmp_path / "state", user="keeper", **kw)
    return check_host(env)


def by_name(checks: tuple[Check, ...], name: str) -> Check:
    (found,) = [c for c in checks if c.name == name]
    return found


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def test_snp_guest_with_configfs_tsm(root: Path, tmp_path: Path) -> None:
    make_tree(root, flags="sev sev_es sev_snp", files={**tsm_files("sev_guest"), "dev/sev-guest": ""})
    report = run_check(root, tmp_path)
    assert report.usable == ("snp", "sim", "sim-tdx")
    snp = report.backend("snp")
    assert "configfs-tsm" in snp.summary
    assert by_name(snp.checks, "configfs-tsm").status == "ok"
    assert by_name(snp.checks, "/dev/sev-guest").status == "ok"
    assert by_name(snp.checks, "cpu flags").status == "ok"
    tdx = report.backend("tdx")
    assert not tdx.usable
    assert "SEV-SNP guest" in tdx.summary
    assert "sev_guest" in by_name(tdx.checks, "configfs-tsm").detail
    assert report.cpu_flags == ("sev", "sev_es", "sev_snp")
    assert report.kernel == "6.8.0-51-generic"


def test_snp_guest_with_only_the_device_on_an_old_kernel(root: Path, tmp_path: Path) -> None:
    make_tree(root, kernel="6.1.0-28-amd64", files={"dev/sev-guest": ""})
    snp = run_check(root, tmp_path).backend("snp")
    assert snp.usable
    assert "/dev/sev-guest" in snp.summary
    # configfs-tsm is not needed when the device works.
    tsm = by_name(snp.checks, "configfs-tsm")
    assert tsm.status == "n/a"
    assert "used instead" in tsm.detail
    # A guest that hides the flag is still an SNP guest: the flag is informational.
    assert by_name(snp.checks, "cpu flags").status == "n/a"


def test_tdx_guest(root: Path, tmp_path: Path) -> None:
    make_tree(root, vendor=INTEL, flags="tdx_guest", files={**tsm_files("tdx_guest"), "dev/tdx_guest": ""})
    report = run_check(root, tmp_path)
    assert report.usable == ("tdx", "sim", "sim-tdx")
    tdx = report.backend("tdx")
    assert by_name(tdx.checks, "configfs-tsm").status == "ok"
    assert by_name(tdx.checks, "/dev/tdx_guest").status == "ok"
    assert by_name(tdx.checks, "cpu flags").status == "ok"
    snp = report.backend("snp")
    assert not snp.usable
    assert "TDX guest" in snp.summary
    assert "not an SEV-SNP guest" in by_name(snp.checks, "configfs-tsm").detail


def test_tdx_device_without_configfs_tsm_is_not_enough(root: Path, tmp_path: Path) -> None:
    make_tree(root, vendor=INTEL, flags="tdx_guest", kernel="6.5.0", files={"dev/tdx_guest": ""})
    tdx = run_check(root, tmp_path).backend("tdx")
    assert not tdx.usable
    tsm = by_name(tdx.checks, "configfs-tsm")
    assert tsm.status == "fail"
    assert "needs Linux >= 6.7" in tsm.hint and "6.5.0" in tsm.hint
    dev = by_name(tdx.checks, "/dev/tdx_guest")
    assert dev.status == "warn"
    assert "configfs-tsm only" in dev.detail


def test_sgx_host(root: Path, tmp_path: Path) -> None:
    make_tree(
        root,
        vendor=INTEL,
        flags="sgx sgx_lc",
        files={"dev/sgx_enclave": "", "dev/sgx_provision": "", "var/run/aesmd/aesm.socket": ""},
    )
    report = run_check(root, tmp_path)
    assert report.usable == ("sgx", "sim", "sim-tdx")
    sgx = report.backend("sgx")
    assert all(c.status in ("ok", "n/a") for c in sgx.checks), sgx.checks
    assert by_name(sgx.checks, "gramine /dev/attestation").status == "n/a"


def test_sgx_without_flc_or_aesmd(root: Path, tmp_path: Path) -> None:
    make_tree(root, vendor=INTEL, flags="sgx", files={"dev/sgx_enclave": "", "dev/sgx_provision": ""})
    sgx = run_check(root, tmp_path).backend("sgx")
    assert not sgx.usable
    flags = by_name(sgx.checks, "cpu flags")
    assert flags.status == "fail"
    assert "sgx_lc" in flags.detail and "Flexible Launch Control" in flags.hint
    aesm = by_name(sgx.checks, "aesmd")
    assert aesm.status == "warn" and "aesm" in aesm.hint


def test_inside_a_gramine_enclave(root: Path, tmp_path: Path) -> None:
    make_tree(
        root, vendor=INTEL, files={"dev/attestation/attestation_type": "dcap\n", "dev/attestation/quote": ""}
    )
    sgx = run_check(root, tmp_path).backend("sgx")
    assert sgx.usable
    assert "Gramine" in sgx.summary


def test_gramine_enclave_without_dcap(root: Path, tmp_path: Path) -> None:
    make_tree(root, vendor=INTEL, files={"dev/attestation/attestation_type": "none\n"})
    sgx = run_check(root, tmp_path).backend("sgx")
    assert not sgx.usable
    assert "remote_attestation" in by_name(sgx.checks, "gramine /dev/attestation").hint


def test_plain_machine_has_only_sim(root: Path, tmp_path: Path) -> None:
    mounts = "sysfs /sys sysfs rw 0 0\nconfigfs /sys/kernel/config configfs rw 0 0\n"
    make_tree(root, dirs=("sys/kernel/config",), files={"proc/mounts": mounts})
    report = run_check(root, tmp_path)
    assert report.usable == ("sim", "sim-tdx")
    for name in ("snp", "tdx", "sgx"):
        b = report.backend(name)
        assert not b.usable
        failing = [c for c in b.checks if c.status == "fail"]
        assert failing, name
        assert all(c.hint for c in failing), failing
    sim = report.backend("sim")
    assert "NO HARDWARE PROTECTION" in sim.summary
    assert {c.name: c.status for c in sim.checks} == {
        "python": "ok",
        "wasmtime": "ok",
        "state dir": "ok",
        "/dev/shm": "ok",
        "keep limits": "warn",  # no cgroup v2 in the fake tree: rlimits only
        "keep disk": "ok",
    }
    assert "Delegate=" in by_name(sim.checks, "keep limits").hint
    kvm = report.backend("kvm")
    assert kvm.planned and not kvm.usable
    assert by_name(kvm.checks, "/dev/kvm").status == "fail"
    # An empty configfs means the guest driver is missing, not configfs itself.
    tsm = by_name(report.backend("snp").checks, "configfs-tsm")
    assert "modprobe" in tsm.hint and "mount -t configfs" not in tsm.hint


CGROUP_V2 = {
    "sys/fs/cgroup/cgroup.controllers": "cpu memory pids\n",
    "sys/fs/cgroup/system.slice/stockade.service/cgroup.controllers": "memory pids\n",
    "sys/fs/cgroup/system.slice/stockade.service/cgroup.procs": "",
    "proc/self/cgroup": "0::/system.slice/stockade.service\n",
}


def test_delegated_cgroup_v2_gives_per_keep_limits(root: Path, tmp_path: Path) -> None:
    make_tree(root, files=CGROUP_V2)
    check = by_name(run_check(root, tmp_path).backend("sim").checks, "keep limits")
    assert check.status == "ok"
    assert "system.slice/stockade.service" in check.detail


def test_undelegated_cgroup_v2_is_a_warning(root: Path, tmp_path: Path) -> None:
    make_tree(root, files=CGROUP_V2)
    refuse = lambda path, mode: "stockade.service" not in str(path)  # noqa: E731
    report = run_check(root, tmp_path, access=refuse)
    check = by_name(report.backend("sim").checks, "keep limits")
    assert check.status == "warn" and "not writable" in check.detail
    assert report.backend("sim").usable  # limits are a warning, not a failure


def test_cgroup_v1_is_a_warning(root: Path, tmp_path: Path) -> None:
    make_tree(root, files={"proc/self/cgroup": "4:memory:/x\n0::/\n"})
    check = by_name(run_check(root, tmp_path).backend("sim").checks, "keep limits")
    assert check.status == "warn" and "cgroup v1 or hybrid" in check.detail


def test_keep_disk_without_namespaces_is_a_warning(root: Path, tmp_path: Path) -> None:
    make_tree(root)
    report = run_check(root, tmp_path, probe_disk=lambda: "unshare(CLONE_NEWNS): Operation not permitted")
    check = by_name(report.backend("sim").checks, "keep disk")
    assert check.status == "warn"
    assert "Operation not permitted" in check.detail and "weaker" in check.detail
    assert "user namespaces" in check.hint
    assert report.backend("sim").usable


def test_keep_disk_probe_on_this_machine() -> None:
    from stockade.host.diagnostics import probe_private_disk

    assert probe_private_disk() is None  # CI runs as root or with user namespaces


def test_no_configfs_mounted(root: Path, tmp_path: Path) -> None:
    make_tree(root)
    tsm = by_name(run_check(root, tmp_path).backend("snp").checks, "configfs-tsm")
    assert "mount -t configfs" in tsm.hint


def test_sim_requirements(root: Path, tmp_path: Path) -> None:
    make_tree(root, shm=False)
    report = check_host(
        Environment(
            root=root,
            state_dir=tmp_path / "state",
            user="keeper",
            python_version=(3, 10, 12),
            find_spec=lambda name: None,
            find_qemu=no_qemu,
        )
    )
    assert report.usable == ()
    sim = report.backend("sim")
    assert not sim.usable
    assert by_name(sim.checks, "python").status == "fail"
    wasmtime = by_name(sim.checks, "wasmtime")
    assert wasmtime.status == "fail" and wasmtime.hint
    # Without /dev/shm the loader falls back to the temporary directory.
    assert by_name(sim.checks, "/dev/shm").status == "warn"


def test_wasmtime_is_looked_up_not_imported(root: Path, tmp_path: Path) -> None:
    make_tree(root)
    asked: list[str] = []

    def find_spec(name: str) -> object | None:
        asked.append(name)
        return object()

    report = run_check(root, tmp_path, find_spec=find_spec)
    assert asked == ["wasmtime"]
    assert by_name(report.backend("sim").checks, "wasmtime").status == "ok"


def test_state_dir_not_writable(root: Path, tmp_path: Path) -> None:
    make_tree(root)
    state = tmp_path / "state"
    state.mkdir()
    report = run_check(root, tmp_path, access=deny("/state"))
    check = by_name(report.backend("sim").checks, "state dir")
    assert check.status == "fail"
    assert "keeper" in check.detail and "--state-dir" in check.hint
    assert report.usable == ()


def test_device_not_accessible(root: Path, tmp_path: Path) -> None:
    make_tree(root, files={"dev/sev-guest": ""})
    report = run_check(root, tmp_path, access=deny("dev/sev-guest"))
    snp = report.backend("snp")
    assert not snp.usable
    dev = by_name(snp.checks, "/dev/sev-guest")
    assert dev.status == "fail"
    assert "may not read/write" in dev.detail
    assert "usermod -aG" in dev.hint and "keeper" in dev.hint


def test_configfs_tsm_not_writable(root: Path, tmp_path: Path) -> None:
    make_tree(root, files={**tsm_files("sev_guest"), "dev/sev-guest": ""})
    report = run_check(root, tmp_path, access=deny("tsm/report", "dev/sev-guest"))
    snp = report.backend("snp")
    assert not snp.usable
    tsm = by_name(snp.checks, "configfs-tsm")
    assert tsm.status == "fail" and "mkdir" in tsm.hint


def test_sgx_provision_only_for_aesmd(root: Path, tmp_path: Path) -> None:
    make_tree(
        root,
        vendor=INTEL,
        flags="sgx sgx_lc",
        files={"dev/sgx_enclave": "", "dev/sgx_provision": "", "var/run/aesmd/aesm.socket": ""},
    )
    sgx = run_check(root, tmp_path, access=deny("sgx_provision")).backend("sgx")
    assert sgx.usable
    assert by_name(sgx.checks, "/dev/sgx_provision").status == "warn"
    sgx = run_check(root, tmp_path, access=deny("sgx_enclave")).backend("sgx")
    assert not sgx.usable


def test_configfs_provider_probe_creates_and_removes_an_entry(root: Path, tmp_path: Path) -> None:
    # A fake configfs does not fill the new entry, so the provider stays unknown;
    # what matters is that the probe leaves nothing behind.
    make_tree(root, dirs=("sys/kernel/config/tsm/report",))
    report = run_check(root, tmp_path)
    tsm = by_name(report.backend("snp").checks, "configfs-tsm")
    assert tsm.status == "warn" and "unknown" in tsm.detail
    assert list((root / "sys/kernel/config/tsm/report").iterdir()) == []
    assert not report.backend("snp").usable


SNP_HOST = {
    "dev/kvm": "",
    "dev/sev": "",
    "sys/module/kvm_amd/parameters/sev": "Y\n",
    "sys/module/kvm_amd/parameters/sev_es": "Y\n",
    "sys/module/kvm_amd/parameters/sev_snp": "Y\n",
}
QEMU_91 = QemuInfo("/opt/qemu/bin/qemu-system-x86_64", (9, 1, 0), "QEMU emulator version 9.1.0")
TCG_ONLY = AccelProbe(
    "tcg", False, "the KVM guest did not finish within 5 s (it reached protected mode)", 5.1
)
FW = SevStatus(1, 55, 21, 1, snp=True)


def test_kvm_host_is_planned_and_never_counts(root: Path, tmp_path: Path) -> None:
    make_tree(root, flags="sev sev_es sev_snp", kernel="6.11.0", files=SNP_HOST)
    report = run_check(
        root,
        tmp_path,
        find_spec=lambda name: None,
        find_qemu=lambda: QEMU_91,
        probe_accel=lambda path: TCG_ONLY,
        sev_reader=lambda dev: FW,
    )
    kvm = report.backend("kvm")
    assert kvm.usable and kvm.planned
    assert all(c.status == "ok" for c in kvm.checks if c.name.startswith("SEV-SNP")), kvm.checks
    assert by_name(kvm.checks, "SEV-SNP firmware").detail.startswith("SNP firmware API 1.55 build 21")
    assert "SEV-SNP" in kvm.summary
    # Not an Intel host: TDX is one informational line, not a list of failures.
    assert by_name(kvm.checks, "TDX host").status == "n/a"
    # sim fails here (no wasmtime), kvm does not count; vm runs under TCG.
    assert report.usable == ("vm",)


def test_kvm_host_lists_each_missing_snp_piece_with_its_fix(root: Path, tmp_path: Path) -> None:
    files = {**SNP_HOST, "sys/module/kvm_amd/parameters/sev_snp": "N\n"}
    make_tree(root, flags="sev sev_es sev_snp", kernel="6.1.0-28-cloud-amd64", files=files)
    kvm = run_check(
        root,
        tmp_path,
        find_qemu=lambda: None,
        sev_reader=lambda dev: "cannot open /dev/sev: Permission denied",
    ).backend("kvm")
    assert not kvm.usable
    failing = {c.name: c.hint for c in kvm.checks if c.status == "fail"}
    assert set(failing) == {"SEV-SNP host kernel", "SEV-SNP kvm_amd", "SEV-SNP QEMU"}
    assert ">= 6.11" in failing["SEV-SNP host kernel"]
    assert "kvm_amd.sev_snp=1" in failing["SEV-SNP kvm_amd"]
    assert "9.1" in failing["SEV-SNP QEMU"]
    fw = by_name(kvm.checks, "SEV-SNP firmware")
    assert fw.status == "warn" and "Permission denied" in fw.detail


def test_vm_backend_under_tcg(root: Path, tmp_path: Path) -> None:
    make_tree(root, files={"dev/kvm": ""})
    report = run_check(root, tmp_path, find_qemu=lambda: QEMU_91, probe_accel=lambda path: TCG_ONLY)
    vm = report.backend("vm")
    assert vm.usable and not vm.planned
    assert "vm" in report.usable
    assert "TCG" in vm.summary and "NO HARDWARE PROTECTION" in vm.summary
    assert by_name(vm.checks, "qemu").status == "ok"
    kvm = by_name(vm.checks, "kvm")
    assert kvm.status == "warn" and "did not finish within 5 s" in kvm.detail and "TCG" in kvm.hint
    assert by_name(vm.checks, "acceleration").detail.startswith("tcg:")
    doc = report.to_json()["vm"]
    assert doc["qemu"]["version"] == "9.1.0" and doc["qemu_install"] is None
    assert doc["accel"]["accel"] == "tcg" and doc["accel"]["kvm_usable"] is False
    assert doc["tee_host"]["snp"]["supported"] is False


def test_vm_backend_with_kvm(root: Path, tmp_path: Path) -> None:
    make_tree(root, files={"dev/kvm": ""})
    fast = AccelProbe("kvm", True, "a KVM guest reached long mode and ran the timed loop in 0.001 s", 0.2)
    vm = run_check(root, tmp_path, find_qemu=lambda: QEMU_91, probe_accel=lambda path: fast).backend("vm")
    assert vm.usable and "KVM" in vm.summary
    assert by_name(vm.checks, "kvm").status == "ok"
    assert by_name(vm.checks, "acceleration").detail.startswith("kvm:")


def test_vm_backend_without_qemu(root: Path, tmp_path: Path) -> None:
    make_tree(root)
    report = run_check(root, tmp_path)
    vm = report.backend("vm")
    assert not vm.usable and "vm" not in report.usable
    qemu = by_name(vm.checks, "qemu")
    assert qemu.status == "fail" and "apt-get install qemu-system-x86" in qemu.hint
    assert by_name(vm.checks, "/dev/kvm").status == "warn"  # TCG would do without it
    assert report.to_json()["vm"]["qemu_install"] == vmprobe.QEMU_INSTALL
    # $STOCKADE_QEMU naming something that is no QEMU is said so.
    env_qemu = run_check(root, tmp_path, environ={vmprobe.QEMU_ENV: "/opt/nothing"}).backend("vm")
    assert "STOCKADE_QEMU=/opt/nothing" in by_name(env_qemu.checks, "qemu").detail


def test_vm_backend_when_qemu_boots_nothing(root: Path, tmp_path: Path) -> None:
    make_tree(root)
    broken = AccelProbe("tcg", False, "QEMU could not start a KVM guest: x", 0.1, tcg_usable=False)
    vm = run_check(root, tmp_path, find_qemu=lambda: QEMU_91, probe_accel=lambda path: broken).backend("vm")
    assert not vm.usable
    acc = by_name(vm.checks, "acceleration")
    assert acc.status == "fail" and "reinstall qemu-system-x86" in acc.hint


def test_report_is_frozen_and_json_ready(root: Path, tmp_path: Path) -> None:
    make_tree(root)
    report = run_check(root, tmp_path)
    with pytest.raises(AttributeError):
        report.kernel = "x"  # type: ignore[misc]
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["usable"] == ["sim", "sim-tdx"]
    assert [b["backend"] for b in doc["backends"]] == ["snp", "tdx", "sgx", "sim", "sim-tdx", "vm", "kvm"]
    for b in doc["backends"]:
        for c in b["checks"]:
            assert c["status"] in ("ok", "warn", "fail", "n/a")


# --- the CLI on this real machine ---------------------------------------------------------------


def stockade(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stockade", "host", "check", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "STOCKADE_STATE_DIR": str(state), "COLUMNS": "160"},
    )


def test_cli_json_on_this_machine(tmp_path: Path) -> None:
    proc = stockade("--json", state=tmp_path / "state")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == 0
    assert "sim" in doc["usable"]
    backends = {b["backend"]: b for b in doc["backends"]}
    assert backends["sim"]["usable"] is True
    assert "NO HARDWARE PROTECTION" in backends["sim"]["summary"]
    # This CI machine is no confidential guest: hardware backends fail with hints.
    for name in ("snp", "tdx", "sgx"):
        if backends[name]["usable"]:
            pytest.skip(f"this machine supports {name}")
        failing = [c for c in backends[name]["checks"] if c["status"] == "fail"]
        assert failing and all(c["hint"] for c in failing), name
    assert not (tmp_path / "state").exists()  # the check creates nothing
    # The VM side: QEMU, the acceleration probe's verdict and why, SNP/TDX host support.
    vm = doc["vm"]
    assert set(vm["tee_host"]) == {"snp", "tdx"}
    if vm["qemu"] is None:
        assert vm["qemu_install"] == "sudo apt-get install qemu-system-x86"
        assert not backends["vm"]["usable"]
    else:
        accel = vm["accel"]
        assert accel["tcg_usable"] is True, accel  # TCG must boot the probe guest here
        assert accel["accel"] in ("kvm", "tcg") and accel["reason"]
        assert backends["vm"]["usable"] is True and "vm" in doc["usable"]
        checks = {c["name"]: c for c in backends["vm"]["checks"]}
        assert checks["kvm"]["status"] == ("ok" if accel["kvm_usable"] else "warn")


def test_cli_table_and_exit_status_1_without_backends(tmp_path: Path) -> None:
    proc = stockade(state=tmp_path / "state")
    assert proc.returncode == 0
    assert "acceleration:" in proc.stdout or "QEMU: not found" in proc.stdout
    assert "usable backends: sim" in proc.stdout or "usable backends:" in proc.stdout
    # A state directory that is a file makes sim unusable; on a machine without
    # hardware backends nothing is left: exit 1.
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = stockade("--json", "--state-dir", str(blocker / "state"), state=tmp_path / "state")
    doc = json.loads(proc.stdout)
    assert proc.returncode == doc["exit_code"] == (0 if doc["usable"] else 1)
    if not doc["usable"]:
        assert proc.returncode == 1


def test_cli_on_a_fake_snp_tree(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "root", files={**tsm_files("sev_guest"), "dev/sev-guest": ""})
    proc = stockade("--json", "--root", str(root), state=tmp_path / "state")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["usable"][0] == "snp"


def test_cli_help_documents_the_exit_status() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stockade", "host", "check", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0
    assert "Exit status" in proc.stdout and "--json" in proc.stdout
    assert "--root" not in proc.stdout  # hidden, for tests


# --- the systemd unit -----------------------------------------------------------------------------


class _MultiDict(dict[str, Any]):
    """Keeps every value of a repeated key (systemd allows DeviceAllow= many times)."""

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, list) and key in self:
            super().__getitem__(key).extend(value)
        else:
            super().__setitem__(key, value)


def load_unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, dict_type=_MultiDict, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_file_settings() -> None:
    unit = load_unit()
    svc = unit["Service"]
    assert svc["ExecStart"].split()[1:] == ["host", "serve", "--listen", "127.0.0.1:8470"]
    assert svc["User"] == "stockade"
    assert svc["StateDirectory"] == "stockade"
    assert svc["Environment"] == "STOCKADE_STATE_DIR=/var/lib/stockade"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "DevicePolicy": "closed",
        "MemoryDenyWriteExecute": "no",  # wasmtime JIT
    }.items():
        assert svc[key] == value, key
    assert set(svc["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    devices = [line.split()[0] for line in svc["DeviceAllow"].splitlines()]
    assert {"/dev/sev-guest", "/dev/tdx_guest", "/dev/sgx_enclave", "/dev/sgx_provision"} <= set(devices)
    assert "/dev/kvm" not in devices  # only for a future host that launches guests
    assert svc["CapabilityBoundingSet"] == ""
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_unit_file_says_it_is_not_usable_yet() -> None:
    text = UNIT.read_text()
    assert "host init" in text and "host check" in text
