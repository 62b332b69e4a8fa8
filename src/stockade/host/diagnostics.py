"""Pre-flight diagnostics of the untrusted host (``stockade host check``).

Which Keep backends can this machine run, why not, and what to do about it,
in the spirit of ``enarx platform info``. Everything here only *looks*: it
reads files under an injectable root directory (``/`` in production, a fake
tree in tests), asks an injectable access check about permissions, and never
imports wasmtime or opens an attestation device. The one exception is the
configfs-tsm provider: when no report entry exists yet, the kernel tells the
provider only through a fresh entry, so the check creates one
(``stockade-check-<pid>``) and removes it at once, exactly as the attesters
do before asking for a report.

Backends and what makes them usable here:

- ``snp``: an SEV-SNP guest with configfs-tsm (provider ``sev_guest``,
  Linux >= 6.7) or ``/dev/sev-guest`` (Linux >= 5.19) this user may open;
- ``tdx``: a TDX guest with configfs-tsm provider ``tdx_guest`` (the TDX
  attester uses configfs-tsm only; ``/dev/tdx_guest`` is reported too);
- ``sgx``: inside a Gramine enclave with DCAP ``/dev/attestation``, or an
  SGX host (``sgx`` + ``sgx_lc`` CPU flags, ``/dev/sgx_enclave``,
  ``/dev/sgx_provision``) that could launch one;
- ``sim``: any Linux process (Python >= 3.11, wasmtime installed, a writable
  state directory; ``/dev/shm`` preferred for scratch files). It gives NO
  hardware protection;
- ``vm``: QEMU (``qemu-system-x86_64``, or ``$STOCKADE_QEMU``) that boots a
  probe guest; KVM where a guest really runs under it at native speed, TCG
  otherwise (stockade.host.vmprobe). Reports are sim-signed: NO hardware
  protection;
- ``kvm`` (planned, never counted): a host that could launch SNP or TDX
  guests through KVM: CPU, host kernel, kvm_amd / kvm_intel parameters,
  ``/dev/sev`` and the SEV firmware version, the TDX module, the QEMU
  version, each missing piece with its fix.

The ``vm`` check runs QEMU twice (a few seconds; memoised per process).

Only the host layer's own imports are used (host.vmprobe, wire, errors, stdlib).
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from stockade.host import vmprobe

Status = Literal["ok", "warn", "fail", "n/a"]
OK: Status = "ok"
WARN: Status = "warn"
FAIL: Status = "fail"
NA: Status = "n/a"

#: CPU flags (/proc/cpuinfo) that matter to some backend.
RELEVANT_FLAGS = ("sev", "sev_es", "sev_snp", "tdx_host_platform", "tdx_guest", "sgx", "sgx_lc")

TSM_REPORT = "sys/kernel/config/tsm/report"
SEV_GUEST = "dev/sev-guest"
TDX_GUEST = "dev/tdx_guest"
SGX_ENCLAVE = "dev/sgx_enclave"
SGX_PROVISION = "dev/sgx_provision"
GRAMINE_ATTESTATION = "dev/attestation"
AESM_SOCKET = "var/run/aesmd/aesm.socket"
KVM = "dev/kvm"
SHM = "dev/shm"

SNP_PROVIDER = "sev_guest"
TDX_PROVIDER = "tdx_guest"
MIN_PYTHON = (3, 11)

# Kernel releases that brought each interface (mainline).
K_TSM = (6, 7)
K_SEV_GUEST = (5, 19)
K_TDX_GUEST = (6, 2)
K_SGX = (5, 11)
K_KVM_SNP = (6, 11)
K_KVM_TDX = (6, 16)

AccessCheck = Callable[[Path, int], bool]
SpecFinder = Callable[[str], object | None]


def _os_access(path: Path, mode: int) -> bool:
    return os.access(path, mode)


def _find_spec(name: str) -> object | None:
    return importlib.util.find_spec(name)


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Check:
    """One observation: ``status`` is ok, warn (works, but mind this), fail
    (this stops the backend) or n/a (not needed here / informational);
    ``hint`` says what to do when it is not ok."""

    name: str
    status: Status
    detail: str
    hint: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "hint": self.hint}


@dataclass(frozen=True)
class BackendReport:
    """Whether one backend can run here. ``planned`` backends are shown but
    never make a machine usable (stockade cannot drive them yet)."""

    backend: str
    usable: bool
    summary: str
    checks: tuple[Check, ...]
    planned: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "usable": self.usable,
            "planned": self.planned,
            "summary": self.summary,
            "checks": [c.to_json() for c in self.checks],
        }


@dataclass(frozen=True)
class HostReport:
    kernel: str
    cpu_vendor: str
    cpu_flags: tuple[str, ...]
    system: tuple[Check, ...]
    backends: tuple[BackendReport, ...]
    #: The VM side: QEMU (None: not found), the acceleration probe (None: not
    #: run) and SEV-SNP / TDX host support (None: not looked at).
    qemu: vmprobe.QemuInfo | None = None
    accel: vmprobe.AccelProbe | None = None
    tee: vmprobe.TeeSupport | None = None

    @property
    def usable(self) -> tuple[str, ...]:
        """Backends a Keep can use on this machine (planned ones excluded)."""
        return tuple(b.backend for b in self.backends if b.usable and not b.planned)

    def backend(self, name: str) -> BackendReport:
        for b in self.backends:
            if b.backend == name:
                return b
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "cpu_vendor": self.cpu_vendor,
            "cpu_flags": list(self.cpu_flags),
            "system": [c.to_json() for c in self.system],
            "backends": [b.to_json() for b in self.backends],
            "usable": list(self.usable),
            "vm": {
                "qemu": self.qemu.to_json() if self.qemu else None,
                "qemu_install": None if self.qemu else vmprobe.QEMU_INSTALL,
                "accel": self.accel.to_json() if self.accel else None,
                "tee_host": self.tee.to_json() if self.tee else None,
            },
        }


def _python_version() -> tuple[int, int, int]:
    v = sys.version_info
    return (v.major, v.minor, v.micro)


def _user_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        import grp

        return grp.getgrgid(gid).gr_name
    except (ImportError, KeyError):
        return str(gid)


_DISK_PROBE = (
    "import sys, pathlib\n"
    "from stockade.keep import sandbox\n"
    "box = sandbox.enter(pathlib.Path(sys.argv[1]))\n"
    "print('' if box.private else box.reason)\n"
)


def probe_private_disk() -> str | None:
    """None when a Keep can make its private tmpfs here (a size-limited
    tmpfs in its own mount namespace: stockade.keep.sandbox), else why not.
    Tried in a throw-away ``python -I`` child, as a Keep would."""
    import shutil
    import subprocess
    import sys
    import tempfile

    scratch = tempfile.mkdtemp(prefix="stockade-check-")
    try:
        out = subprocess.run(
            [sys.executable, "-I", "-c", _DISK_PROBE, scratch],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the probe did not run ({type(exc).__name__})"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if out.returncode != 0:
        return f"the probe failed (exit status {out.returncode})"
    return out.stdout.strip() or None


@dataclass(frozen=True)
class Environment:
    """What the checks look at. Every path is taken relative to ``root``;
    ``state_dir`` is the stockade state directory as the user gave it (not
    re-rooted). ``access`` answers "may this user open path with mode"
    (``os.access`` semantics; tests inject refusals because they run as
    root)."""

    root: Path = Path("/")
    state_dir: Path | None = None
    access: AccessCheck = _os_access
    find_spec: SpecFinder = _find_spec
    python_version: tuple[int, int, int] = field(default_factory=_python_version)
    user: str = field(default_factory=lambda: _user_name(os.geteuid()))
    #: Create (and remove) a configfs-tsm entry to learn the provider when
    #: none exists yet.
    probe_tsm: bool = True
    #: Whether a Keep gets its private, size-limited tmpfs (None) or why not.
    probe_disk: Callable[[], str | None] = probe_private_disk
    #: QEMU for VM Keeps (stockade.host.vmprobe.find_qemu), and the acceleration
    #: probe run with it (boots a tiny guest under TCG and KVM: a few seconds).
    find_qemu: Callable[[], vmprobe.QemuInfo | None] = vmprobe.find_qemu
    probe_accel: Callable[[str], vmprobe.AccelProbe] = vmprobe.probe_accel
    #: Reads the SEV firmware version from /dev/sev (or says why not).
    sev_reader: vmprobe.SevReader = vmprobe.read_sev_status
    #: The environment whose STOCKADE_QEMU is reported (None: os.environ).
    environ: Mapping[str, str] | None = None

    def path(self, rel: str) -> Path:
        return self.root / rel


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _version_tuple(release: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _v(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


@dataclass(frozen=True)
class _Facts:
    """What is read once and shared by several backends."""

    kernel: str
    kernel_version: tuple[int, int] | None
    vendor: str
    flags: frozenset[str]
    tsm: Check  # configfs-tsm presence and permission, provider-neutral
    tsm_provider: str | None


class _Probe:
    def __init__(self, env: Environment) -> None:
        self.env = env

    # --- facts -----------------------------------------------------------------------------------
    def facts(self) -> _Facts:
        release = (_read_text(self.env.path("proc/sys/kernel/osrelease")) or "").strip()
        vendor, flags = self._cpuinfo()
        tsm, provider = self._tsm()
        return _Facts(
            kernel=release or "unknown",
            kernel_version=_version_tuple(release),
            vendor=vendor,
            flags=flags,
            tsm=tsm,
            tsm_provider=provider,
        )

    def _cpuinfo(self) -> tuple[str, frozenset[str]]:
        text = _read_text(self.env.path("proc/cpuinfo")) or ""
        vendor = ""
        flags: set[str] = set()
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if not sep:
                continue
            key = key.strip()
            if key == "vendor_id" and not vendor:
                vendor = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
        return vendor, frozenset(flags)

    def _tsm(self) -> tuple[Check, str | None]:
        """configfs-tsm: present? may this user create entries? provider?"""
        report = self.env.path(TSM_REPORT)
        shown = f"/{TSM_REPORT}"
        if not report.is_dir():
            config = self.env.path("sys/kernel/config")
            mounts = _read_text(self.env.path("proc/mounts")) or ""
            mounted = any(line.split()[2:3] == ["configfs"] for line in mounts.splitlines()) or (
                config.is_dir() and any(config.iterdir())
            )
            hint = (
                "inside a confidential VM, load the guest driver that registers a TSM provider "
                "(modprobe sev-guest / tdx-guest); the kernel needs CONFIG_TSM_REPORTS"
                if mounted
                else "mount configfs (mount -t configfs none /sys/kernel/config); "
                "the kernel needs CONFIG_TSM_REPORTS"
            )
            return Check("configfs-tsm", FAIL, f"{shown} does not exist", hint), None
        if not self.env.access(report, os.W_OK | os.X_OK):
            return (
                Check(
                    "configfs-tsm",
                    FAIL,
                    f"{shown} exists but {self.env.user} may not create report entries in it",
                    _perm_hint(report, shown, self.env.user, "write (report entries are made with mkdir)"),
                ),
                self._existing_provider(report),
            )
        provider = self._existing_provider(report)
        if provider is None and self.env.probe_tsm:
            provider, failure = self._probe_provider(report)
            if failure:
                return Check("configfs-tsm", FAIL, f"{shown}: {failure}", _NO_PROVIDER_HINT), None
        if provider is None:
            return (
                Check("configfs-tsm", WARN, f"{shown} exists; its provider is unknown", _NO_PROVIDER_HINT),
                None,
            )
        return Check("configfs-tsm", OK, f"{shown} writable, provider {provider}"), provider

    def _existing_provider(self, report: Path) -> str | None:
        try:
            entries = sorted(report.iterdir())
        except OSError:
            return None
        for entry in entries:
            text = _read_text(entry / "provider")
            if text and text.strip():
                return text.strip()
        return None

    def _probe_provider(self, report: Path) -> tuple[str | None, str]:
        entry = report / f"stockade-check-{os.getpid()}"
        try:
            os.mkdir(entry)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return None, "no TSM provider is registered (the kernel refused a report entry: ENXIO)"
            return None, f"cannot create a report entry: {exc.strerror}"
        try:
            text = _read_text(entry / "provider")
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(entry)
        return (text.strip() or None) if text else None, ""

    # --- helpers -----------------------------------------------------------------------------------
    def kernel_note(self, facts: _Facts, need: tuple[int, int], what: str) -> str:
        """What to do about the kernel version, or "" when it is new enough."""
        if facts.kernel_version is None:
            return f"{what} needs Linux >= {_v(need)}"
        if facts.kernel_version < need:
            return f"{what} needs Linux >= {_v(need)}; this kernel is {facts.kernel}: upgrade it"
        return ""  # new enough: the kernel version is not the problem

    def device(self, rel: str, name: str, mode: int, missing_hint: str, *, missing: Status = FAIL) -> Check:
        path = self.env.path(rel)
        shown = f"/{rel}"
        if not os.path.lexists(path):
            return Check(name, missing, f"{shown} does not exist", missing_hint)
        need = _mode_words(mode)
        if not self.env.access(path, mode):
            return Check(
                name,
                FAIL,
                f"{shown} exists but {self.env.user} may not {need} it",
                _perm_hint(path, shown, self.env.user, need),
            )
        return Check(name, OK, f"{shown} ({need} for {self.env.user})")

    def flags_check(
        self, facts: _Facts, wanted: Iterable[str], name: str, absent: Status, hint: str
    ) -> Check:
        wanted = tuple(wanted)
        have = [f for f in wanted if f in facts.flags]
        lacking = [f for f in wanted if f not in facts.flags]
        if not lacking:
            return Check(name, OK, "/proc/cpuinfo lists " + " ".join(have))
        detail = "/proc/cpuinfo does not list " + " ".join(lacking)
        if have:
            detail += " (lists " + " ".join(have) + ")"
        return Check(name, absent, detail, hint)


_NO_PROVIDER_HINT = (
    "load the guest driver that registers a TSM provider (modprobe sev-guest on SEV-SNP, "
    "tdx-guest on TDX); outside a confidential VM there is none"
)


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _mode_words(mode: int) -> str:
    words = []
    if mode & os.R_OK:
        words.append("read")
    if mode & os.W_OK:
        words.append("write")
    return "/".join(words) or "access"


def _perm_hint(path: Path, shown: str, user: str, need: str) -> str:
    try:
        st = path.stat()
        owner = f"owner {_user_name(st.st_uid)}:{_group_name(st.st_gid)}, mode {st.st_mode & 0o7777:o}"
        group = _group_name(st.st_gid)
    except OSError:
        owner, group = "owner unknown", "its group"
    return (
        f"{shown} ({owner}): run stockade as a user who may {need} it, e.g. add {user} to group "
        f"{group} (usermod -aG {group} {user}) or install a udev/tmpfiles rule granting it"
    )


def _interface_alternative(check: Check, other: str) -> Check:
    """A missing interface that another one replaces is not a failure."""
    if check.status == FAIL and "does not exist" in check.detail:
        return Check(check.name, NA, f"{check.detail} ({other} is used instead)")
    return check


def _tsm_for(p: _Probe, f: _Facts, wanted: str, what: str, where: str) -> Check:
    """The shared configfs-tsm check, seen by the backend whose provider is ``wanted``."""
    if f.tsm_provider is not None and f.tsm_provider != wanted:
        return Check(
            f.tsm.name,
            FAIL,
            f"provider is {f.tsm_provider}, not {wanted}: this is not {what}",
            f"run the Keep in {where}",
        )
    if f.tsm.status == FAIL and "does not exist" in f.tsm.detail:
        note = p.kernel_note(f, K_TSM, "configfs-tsm")
        return Check(f.tsm.name, FAIL, f.tsm.detail, _join(note, f.tsm.hint))
    return f.tsm


def _sev_snp(p: _Probe, f: _Facts) -> BackendReport:
    cpu = p.flags_check(
        f,
        ["sev_snp"],
        "cpu flags",
        NA,
        "informational: SEV-SNP guests often do not list sev_snp; the attestation interface decides",
    )
    tsm = _tsm_for(p, f, SNP_PROVIDER, "an SEV-SNP guest", "an SEV-SNP guest VM")
    dev = p.device(
        SEV_GUEST,
        "/dev/sev-guest",
        os.R_OK | os.W_OK,
        _join(
            "the sev-guest driver makes it in SEV-SNP guests (modprobe sev-guest)",
            p.kernel_note(f, K_SEV_GUEST, "/dev/sev-guest"),
        ),
    )
    if tsm.status == OK:
        dev = _interface_alternative(dev, "configfs-tsm")
    elif dev.status == OK and f.tsm_provider in (None, SNP_PROVIDER):
        tsm = _interface_alternative(tsm, "/dev/sev-guest")
    usable = OK in (tsm.status, dev.status)
    if usable:
        via = "configfs-tsm" if tsm.status == OK else "/dev/sev-guest"
        summary = f"SEV-SNP guest: reports through {via}"
    elif f.tsm_provider == TDX_PROVIDER:
        summary = "not an SEV-SNP guest (this is a TDX guest)"
    else:
        summary = "no SEV-SNP guest interface usable by this user"
    return BackendReport("snp", usable, summary, (cpu, tsm, dev))


def _tdx(p: _Probe, f: _Facts) -> BackendReport:
    cpu = p.flags_check(
        f, ["tdx_guest"], "cpu flags", NA, "informational: TDX guests list tdx_guest (Linux >= 5.19)"
    )
    tsm = _tsm_for(p, f, TDX_PROVIDER, "a TDX guest", "a TDX guest (TD)")
    dev = p.device(
        TDX_GUEST,
        "/dev/tdx_guest",
        os.R_OK | os.W_OK,
        _join(
            "the tdx-guest driver makes it in TDX guests (modprobe tdx-guest)",
            p.kernel_note(f, K_TDX_GUEST, "/dev/tdx_guest"),
        ),
        missing=WARN if tsm.status == OK else FAIL,
    )
    if tsm.status == OK and dev.status != OK:
        # stockade's TDX attester reads quotes through configfs-tsm only.
        dev = Check(dev.name, NA, dev.detail + " (not needed: quotes come through configfs-tsm)")
    elif dev.status == OK and tsm.status != OK:
        dev = Check(
            dev.name,
            WARN,
            dev.detail + ", but stockade gets TDX quotes through configfs-tsm only",
            _join("stockade's TDX attester needs configfs-tsm", p.kernel_note(f, K_TSM, "configfs-tsm")),
        )
    usable = tsm.status == OK
    hint_qgs = Check(
        "quote generation",
        NA if not usable else WARN,
        "quotes need a Quote Generation Service on the VM host (not visible from here)",
        "if reports fail with EIO/timeout, ask the host operator for QGS (Intel TDX DCAP)" if usable else "",
    )
    if usable:
        summary = "TDX guest: quotes through configfs-tsm"
    elif f.tsm_provider == SNP_PROVIDER:
        summary = "not a TDX guest (this is an SEV-SNP guest)"
    else:
        summary = "no TDX guest interface usable by this user"
    return BackendReport("tdx", usable, summary, (cpu, tsm, dev, hint_qgs))


def _sgx(p: _Probe, f: _Facts) -> BackendReport:
    att = p.env.path(GRAMINE_ATTESTATION)
    checks: list[Check] = []
    if att.is_dir():
        kind = (_read_text(att / "attestation_type") or "").strip()
        if kind == "dcap":
            enclave = Check("gramine /dev/attestation", OK, "inside a Gramine enclave, attestation type dcap")
        else:
            enclave = Check(
                "gramine /dev/attestation",
                FAIL,
                f"inside a Gramine enclave, attestation type {kind or 'unknown'!r}, not 'dcap'",
                'set sgx.remote_attestation = "dcap" in the Gramine manifest',
            )
        checks.append(enclave)
        if enclave.status == OK:
            return BackendReport("sgx", True, "inside a Gramine SGX enclave: DCAP quotes", tuple(checks))
        return BackendReport("sgx", False, "Gramine enclave without DCAP attestation", tuple(checks))
    checks.append(
        Check(
            "gramine /dev/attestation",
            NA,
            "/dev/attestation does not exist (not inside a Gramine enclave)",
        )
    )
    sgx_hint = (
        "enable SGX (and Flexible Launch Control) in the firmware setup; the in-kernel driver needs both"
    )
    checks.append(p.flags_check(f, ["sgx", "sgx_lc"], "cpu flags", FAIL, sgx_hint))
    checks.append(
        p.device(
            SGX_ENCLAVE,
            "/dev/sgx_enclave",
            os.R_OK | os.W_OK,
            _join(
                "enable SGX with Flexible Launch Control in the firmware; the kernel needs CONFIG_X86_SGX",
                p.kernel_note(f, K_SGX, "the SGX driver"),
            ),
        )
    )
    prov = p.device(
        SGX_PROVISION,
        "/dev/sgx_provision",
        os.R_OK,
        _join("DCAP quoting needs it (CONFIG_X86_SGX)", p.kernel_note(f, K_SGX, "the SGX driver")),
    )
    if prov.status == FAIL and "may not" in prov.detail:
        # Only the quoting enclave's service (aesmd, group sgx_prv) opens it.
        prov = Check(prov.name, WARN, prov.detail, "fine if aesmd runs as a member of its group (sgx_prv)")
    checks.append(prov)
    aesm = p.env.path(AESM_SOCKET)
    checks.append(
        Check("aesmd", OK, f"/{AESM_SOCKET} exists")
        if os.path.lexists(aesm)
        else Check(
            "aesmd",
            WARN,
            f"/{AESM_SOCKET} does not exist",
            "Gramine's DCAP quotes go through aesmd: install and start sgx-aesm-service with the DCAP "
            "plugins (libsgx-dcap-ql)",
        )
    )
    usable = all(c.status != FAIL for c in checks)
    summary = (
        "SGX host: can launch Gramine enclaves (DCAP)" if usable else "no SGX enclave support usable here"
    )
    return BackendReport("sgx", usable, summary, tuple(checks))


def _sim(p: _Probe, f: _Facts) -> BackendReport:
    env = p.env
    checks: list[Check] = []
    py = ".".join(map(str, env.python_version))
    if tuple(env.python_version[:2]) >= MIN_PYTHON:
        checks.append(Check("python", OK, f"Python {py}"))
    else:
        checks.append(Check("python", FAIL, f"Python {py}", f"install Python >= {_v(MIN_PYTHON)}"))
    if env.find_spec("wasmtime") is not None:
        version = _dist_version("wasmtime")
        checks.append(Check("wasmtime", OK, f"importable (version {version or 'unknown'}, not imported)"))
    else:
        checks.append(
            Check(
                "wasmtime",
                FAIL,
                "the wasmtime package is not importable",
                "reinstall stockade with its dependencies (pip install stockade) in this Python",
            )
        )
    checks.append(_state_dir_check(env))
    shm = env.path(SHM)
    if not shm.is_dir():
        checks.append(
            Check(
                "/dev/shm",
                WARN,
                "/dev/shm does not exist: Keep scratch files go to the temporary directory (disk)",
                "mount a tmpfs on /dev/shm so workload files and secrets stay in memory",
            )
        )
    elif not env.access(shm, os.W_OK | os.X_OK):
        checks.append(
            Check(
                "/dev/shm",
                WARN,
                f"/dev/shm is not writable by {env.user}: Keep scratch files go to the temporary directory",
                "make /dev/shm a world-writable sticky tmpfs (mode 1777)",
            )
        )
    else:
        checks.append(Check("/dev/shm", OK, "writable (Keep scratch files stay in memory)"))
    checks.append(_cgroup_check(env))
    checks.append(_disk_check(env))
    usable = all(c.status != FAIL for c in checks)
    summary = (
        "simulated SEV-SNP (also as sim-snp): NO HARDWARE PROTECTION (development only)"
        if usable
        else "sim cannot run here"
    )
    return BackendReport("sim", usable, summary, tuple(checks))


def _sim_tdx(sim: BackendReport) -> BackendReport:
    """The sim TDX flavour: same process, same requirements as ``sim``."""
    summary = (
        "sim-tdx \N{EM DASH} NO HARDWARE PROTECTION (simulated TDX, for development only)"
        if sim.usable
        else "sim-tdx cannot run here"
    )
    return BackendReport("sim-tdx", sim.usable, summary, sim.checks)


def _disk_check(env: Environment) -> Check:
    """The workload disk limit: kernel-enforced in a private tmpfs, or the
    Keep's weaker fallback (docs/limitations.md)."""
    reason = env.probe_disk()
    if reason is None:
        return Check(
            "keep disk",
            OK,
            "private tmpfs per Keep (own mount namespace): the disk limit is kernel-enforced, "
            "workload files and secrets are invisible to the host and vanish with the Keep",
        )
    return Check(
        "keep disk",
        WARN,
        f"no private tmpfs ({reason}): Keeps bound disk use with RLIMIT_FSIZE and a monitor "
        "(weaker), and workload files and secrets sit in the host-visible scratch directory while they run",
        "allow user namespaces (sysctl kernel.unprivileged_userns_clone=1, "
        "user.max_user_namespaces > 0) or run the manager as root",
    )


def _cgroup_check(env: Environment) -> Check:
    """Per-Keep cgroup v2 limits (memory.max, pids.max) of the keep manager."""
    from stockade.host import cgroups

    try:
        base = cgroups.detect(
            env.path("sys/fs/cgroup"), _read_text(env.path("proc/self/cgroup")) or "", env.access
        )
    except cgroups.CgroupUnavailable as exc:
        return Check(
            "keep limits",
            WARN,
            f"per-Keep cgroup limits unavailable: {exc}; Keeps get rlimits only",
            "run the manager with a delegated cgroup v2 subtree "
            "(systemd: Delegate=memory pids, see contrib/stockade-host.service)",
        )
    return Check("keep limits", OK, f"cgroup v2 delegated at {base}: memory.max and pids.max per Keep")


def _state_dir_check(env: Environment) -> Check:
    sdir = env.state_dir
    if sdir is None:
        return Check("state dir", NA, "no state directory given")
    if sdir.is_dir():
        if env.access(sdir, os.W_OK | os.X_OK):
            return Check("state dir", OK, f"{sdir} writable")
        return Check(
            "state dir",
            FAIL,
            f"{sdir} is not writable by {env.user}",
            "choose another with --state-dir or STOCKADE_STATE_DIR, or fix its owner",
        )
    if sdir.exists():
        return Check("state dir", FAIL, f"{sdir} is not a directory", "choose another with --state-dir")
    parent = sdir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.is_dir() and env.access(parent, os.W_OK | os.X_OK):
        return Check("state dir", OK, f"{sdir} will be created (in {parent}, writable)")
    return Check(
        "state dir",
        FAIL,
        f"{sdir} does not exist and {parent} is not writable by {env.user}",
        "choose another with --state-dir or STOCKADE_STATE_DIR",
    )


def _qemu_check(env: Environment, qemu: vmprobe.QemuInfo | None) -> Check:
    if qemu is not None:
        return Check("qemu", OK, f"{vmprobe.QEMU_BINARY} {qemu.version_str} at {qemu.path}")
    given = env.environ.get(vmprobe.QEMU_ENV) if env.environ is not None else os.environ.get(vmprobe.QEMU_ENV)
    if given:
        return Check(
            "qemu",
            FAIL,
            f"{vmprobe.QEMU_ENV}={given} is not a QEMU that answers --version",
            f"point {vmprobe.QEMU_ENV} at qemu-system-x86_64, or unset it and {vmprobe.QEMU_INSTALL}",
        )
    return Check(
        "qemu",
        FAIL,
        f"no {vmprobe.QEMU_BINARY} on PATH",
        f"{vmprobe.QEMU_INSTALL} (or set {vmprobe.QEMU_ENV} to its path)",
    )


def _vm(p: _Probe, qemu: vmprobe.QemuInfo | None, accel: vmprobe.AccelProbe | None) -> BackendReport:
    """VM Keeps: QEMU booting the Keep image, KVM where a guest really runs
    under it, TCG otherwise (stockade.host.vmprobe decides)."""
    checks = [_qemu_check(p.env, qemu)]
    checks.append(
        p.device(
            KVM,
            "/dev/kvm",
            os.R_OK | os.W_OK,
            "VM Keeps run under TCG without it; on a bare-metal host enable VMX/SVM in the firmware "
            "and load kvm_intel or kvm_amd",
            missing=WARN,
        )
    )
    if checks[-1].status == FAIL:  # exists but not accessible: TCG still works
        checks[-1] = Check(checks[-1].name, WARN, checks[-1].detail, checks[-1].hint)
    if accel is None:
        checks.append(Check("kvm", NA, "not probed (no QEMU)"))
        checks.append(Check("acceleration", FAIL, "none: QEMU is missing", vmprobe.QEMU_INSTALL))
    else:
        kvm_hint = (
            "VM Keeps boot under TCG (seconds per boot; the warm pool hides it); for KVM run the "
            "manager on a host with hardware virtualisation (VMX/SVM) exposed"
        )
        checks.append(
            Check("kvm", OK, accel.reason)
            if accel.kvm_usable
            else Check("kvm", WARN, f"unusable: {accel.reason}", kvm_hint)
        )
        if accel.kvm_usable or accel.tcg_usable:
            how = "KVM" if accel.accel == "kvm" else "TCG (software emulation)"
            checks.append(Check("acceleration", OK, f"{accel.accel}: VM Keeps run under {how}"))
        else:
            checks.append(
                Check(
                    "acceleration",
                    FAIL,
                    "QEMU ran the probe guest neither under KVM nor under TCG",
                    "check the QEMU installation: reinstall qemu-system-x86 "
                    "(qemu-system-x86_64 -accel tcg must boot a guest)",
                )
            )
    checks.append(_state_dir_check(p.env))
    usable = all(c.status != FAIL for c in checks)
    if usable and qemu is not None and accel is not None:
        summary = (
            f"VM Keeps under QEMU {qemu.version_str} with {accel.accel.upper()}: sim-signed reports, "
            "NO HARDWARE PROTECTION"
        )
    else:
        summary = "VM Keeps cannot run here"
    return BackendReport("vm", usable, summary, tuple(checks))


_REQ_STATUS: dict[vmprobe.ReqStatus, Status] = {"ok": OK, "missing": FAIL, "unknown": WARN}


def _tee_checks(host: vmprobe.TeeHost, prefix: str, vendor_matches: bool) -> tuple[Check, ...]:
    if not vendor_matches:
        (cpu,) = [r for r in host.requirements if r.name == "CPU"]
        return (Check(f"{prefix} host", NA, cpu.detail, cpu.fix),)
    return tuple(
        Check(f"{prefix} {r.name}", _REQ_STATUS[r.status], r.detail, r.fix) for r in host.requirements
    )


def _kvm(p: _Probe, f: _Facts, tee: vmprobe.TeeSupport) -> BackendReport:
    """Confidential VM launch (SEV-SNP, TDX) through KVM: the host's side."""
    dev = p.device(
        KVM,
        "/dev/kvm",
        os.R_OK | os.W_OK,
        "load kvm_amd or kvm_intel with virtualization enabled in the firmware",
    )
    amd = f.vendor in ("AuthenticAMD", "")
    intel = f.vendor in ("GenuineIntel", "")
    checks = (dev, *_tee_checks(tee.snp, "SEV-SNP", amd), *_tee_checks(tee.tdx, "TDX", intel))
    kinds = " and ".join(
        k for k, h, match in (("SEV-SNP", tee.snp, amd), ("TDX", tee.tdx, intel)) if match and h.supported
    )
    can = dev.status == OK and bool(kinds)
    summary = (
        f"planned: the host side of {kinds} guests is in place (stockade generates their QEMU "
        "configuration; never run on such hardware in CI)"
        if can
        else "planned: no SEV-SNP or TDX host support here (what is missing, and the fix, below)"
    )
    return BackendReport("kvm", can, summary, checks, planned=True)


def check_host(env: Environment | None = None) -> HostReport:
    """Run every check and return the report (never raises for what it finds)."""
    env = env or Environment()
    probe = _Probe(env)
    facts = probe.facts()
    system = (
        Check(
            "kernel",
            OK if facts.kernel_version else WARN,
            f"Linux {facts.kernel}",
            "" if facts.kernel_version else "cannot read /proc/sys/kernel/osrelease",
        ),
        Check(
            "cpu",
            OK if facts.vendor else WARN,
            facts.vendor or "vendor unknown",
            "" if facts.vendor else "cannot read /proc/cpuinfo",
        ),
        Check("user", OK, env.user),
    )
    sim = _sim(probe, facts)
    qemu = env.find_qemu()
    accel = env.probe_accel(qemu.path) if qemu is not None else None
    tee = vmprobe.host_tee_support(env.root, qemu=qemu, sev_reader=env.sev_reader, access=env.access)
    backends = (
        _sev_snp(probe, facts),
        _tdx(probe, facts),
        _sgx(probe, facts),
        sim,
        _sim_tdx(sim),
        _vm(probe, qemu, accel),
        _kvm(probe, facts, tee),
    )
    return HostReport(
        kernel=facts.kernel,
        cpu_vendor=facts.vendor,
        cpu_flags=tuple(f for f in RELEVANT_FLAGS if f in facts.flags),
        system=system,
        backends=backends,
        qemu=qemu,
        accel=accel,
        tee=tee,
    )
