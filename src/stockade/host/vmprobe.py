"""What this host can offer a VM Keep: QEMU, a usable acceleration, and
SEV-SNP / TDX host support.

- :func:`find_qemu`: ``qemu-system-x86_64`` from ``$STOCKADE_QEMU`` or
  ``PATH``, with the version its ``--version`` prints.
- :func:`probe_accel`: boots a tiny guest (one 512-byte boot sector built in
  :func:`boot_sector`) under TCG and under KVM, with a wall-clock timeout,
  and says which acceleration to use. KVM counts as usable only when that
  guest really runs under it *at native speed*: on the development machines
  ``/dev/kvm`` opens and creates VMs, yet KVM there is a software
  hypervisor (no VMX/SVM, instructions are emulated) and a Linux guest
  seems to hang at kernel entry. Measured here: the probe guest reaches
  long mode under KVM too, but its loop of 2^24 iterations takes ~9.6 s
  under KVM against ~0.02 s under TCG. So the guest times a fixed loop in
  long mode and KVM is chosen only when it finishes no slower than TCG.
- :func:`host_tee_support`: SEV-SNP and TDX *host* support (CPU flags,
  kvm_amd / kvm_intel parameters, ``/dev/sev`` and the SEV firmware
  version, the TDX module version where the kernel publishes it, the QEMU
  version), each missing piece with a one-line fix. Every path is read
  under an injectable root so tests use a fake tree.

Host code: imports nothing of stockade (import-linter: host imports wire,
measure, errors and procfs only).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import selectors
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

QEMU_BINARY = "qemu-system-x86_64"
QEMU_ENV = "STOCKADE_QEMU"
QEMU_INSTALL = "sudo apt-get install qemu-system-x86"

# QEMU releases that brought the confidential-guest objects.
# sev-snp-guest: qapi/qom.json, SevSnpGuestProperties "Since: 9.1"
# (QEMU commit "i386/sev: Introduce 'sev-snp-guest' object", June 2024).
MIN_QEMU_SNP = (9, 1, 0)
# tdx-guest: merged for QEMU 10.1 (qapi/qom.json TdxGuestProperties; the 9.2
# submission was deferred in review, qemu-devel, "missed the boat ... 10.0").
MIN_QEMU_TDX = (10, 1, 0)
# Host kernels with KVM support for launching the guests (mainline).
K_KVM_SNP = (6, 11)
K_KVM_TDX = (6, 16)
# drivers/crypto/ccp/sev-dev.c: SNP_MIN_API_MAJOR 1, SNP_MIN_API_MINOR 51
# (the kernel refuses SNP_INIT below this firmware API version).
SNP_MIN_FIRMWARE = (1, 51)

Accel = Literal["kvm", "tcg"]


# --- QEMU ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QemuInfo:
    path: str
    version: tuple[int, int, int]
    #: The first line of ``--version``, e.g. "QEMU emulator version 7.2.22 (Debian ...)".
    version_text: str

    @property
    def version_str(self) -> str:
        return ".".join(map(str, self.version))

    def at_least(self, version: tuple[int, int, int]) -> bool:
        return self.version >= version

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "version": self.version_str, "version_text": self.version_text}


_QEMU_VERSION = re.compile(r"QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?")


def parse_qemu_version(text: str) -> tuple[int, int, int] | None:
    m = _QEMU_VERSION.search(text)
    if not m:
        return None
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def qemu_info(path: str, timeout: float = 10.0) -> QemuInfo | None:
    """The QEMU at ``path`` and its version, or None if it is not a QEMU that answers ``--version``."""
    try:
        out = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    version = parse_qemu_version(out.stdout)
    if out.returncode != 0 or version is None:
        return None
    return QemuInfo(path=path, version=version, version_text=out.stdout.strip().splitlines()[0])


def qemu_candidate(environ: Mapping[str, str] | None = None) -> str | None:
    """The path QEMU would be run from: ``$STOCKADE_QEMU`` if set, else ``PATH``."""
    env = os.environ if environ is None else environ
    given = env.get(QEMU_ENV)
    if given:
        return given
    return shutil.which(QEMU_BINARY, path=env.get("PATH", os.defpath))


def find_qemu(environ: Mapping[str, str] | None = None) -> QemuInfo | None:
    """QEMU from ``$STOCKADE_QEMU`` (a path) or ``qemu-system-x86_64`` on ``PATH``."""
    path = qemu_candidate(environ)
    if path is None or not os.access(path, os.X_OK) or os.path.isdir(path):
        return None
    return qemu_info(path)


# --- the probe guest -------------------------------------------------------------------------------

#: What the probe guest writes to COM1, in order: a banner in real mode ("R"),
#: then one letter on reaching protected mode ("P") and long mode ("L"), and
#: "D" once its timed loop is done.
BANNER = b"stockade-probe R"
STAGES = {"R": "real mode", "P": "protected mode", "L": "long mode", "D": "the timed loop"}
#: Written to isa-debug-exit (I/O port 0xf4); QEMU then exits with (value << 1) | 1.
EXIT_VALUE = 0x31
EXIT_STATUS = (EXIT_VALUE << 1) | 1  # 99
#: Iterations of the timed loop (dec ecx / jnz): ~5 ms under TCG, ~1 ms under
#: hardware KVM, ~1.2 s under the emulating KVM of the development machines.
LOOP_ITERATIONS = 1 << 21
LOAD_ADDRESS = 0x7C00  # where the BIOS loads a boot sector (segment 0)


def boot_sector(loop_iterations: int = LOOP_ITERATIONS) -> bytes:
    """A 512-byte x86 boot sector, assembled by hand (checked against GNU as
    2.40 and objdump; Intel SDM vol. 3A 9.9 "Mode switching").

    Real mode: print the banner to COM1 (I/O port 0x3f8; QEMU's 16550 sends a
    byte written to THR at once), build identity page tables for the first
    2 MiB at 0x1000 (PML4), 0x2000 (PDPT), 0x3000 (PD, one 2 MiB page), load a
    GDT, set CR0.PE and far-jump to 32-bit code. Protected mode: print "P",
    set CR4.PAE, CR3, EFER.LME (MSR 0xC0000080), CR0.PG and far-jump to 64-bit
    code. Long mode: print "L", count ECX down from ``loop_iterations`` (the
    timed part), print "D\\n" and write EXIT_VALUE to isa-debug-exit; halt
    forever in case the device is missing.
    """
    if not 0 < loop_iterations < 1 << 32:
        raise ValueError("loop_iterations must fit in 32 bits")
    base = LOAD_ADDRESS
    code = bytearray()

    def emit(*chunks: bytes) -> int:
        start = len(code)
        for chunk in chunks:
            code.extend(chunk)
        return start

    def u16(v: int) -> bytes:
        return struct.pack("<H", v)

    def u32(v: int) -> bytes:
        return struct.pack("<I", v)

    # ---- 16-bit real mode, CS:IP = 0000:7C00 ----
    emit(b"\xfa")  # cli                       no interrupts: there is no IDT for the later modes
    emit(b"\x31\xc0")  # xor ax, ax
    emit(b"\x8e\xd8")  # mov ds, ax                segments to 0: the BIOS leaves them undefined
    emit(b"\x8e\xc0")  # mov es, ax
    emit(b"\x8e\xd0")  # mov ss, ax
    emit(b"\xbc", u16(base))  # mov sp, 0x7c00     stack below the boot sector
    emit(b"\xfc")  # cld                       lodsb/stosw count upwards
    emit(b"\xba", u16(0x3F8))  # mov dx, 0x3f8     COM1 data port, kept in dx throughout
    msg_operand = emit(b"\xbe", u16(0)) + 1  # mov si, BANNER (address patched below)
    loop = emit(b"\xac")  # puts: lodsb             al = [ds:si++]
    emit(b"\x84\xc0")  # test al, al
    emit(b"\x74\x03")  # jz +3                     NUL: done (skip out + jmp)
    emit(b"\xee")  # out dx, al                one banner byte to COM1
    emit(b"\xeb", bytes([(loop - (len(code) + 2)) & 0xFF]))  # jmp puts
    emit(b"\xbf", u16(0x1000))  # mov di, 0x1000    page tables at 0x1000..0x3fff
    emit(b"\xb9", u16(0x1800))  # mov cx, 0x1800    3 pages = 0x1800 words
    emit(b"\x31\xc0")  # xor ax, ax
    emit(b"\xf3\xab")  # rep stosw                 zero them
    emit(
        b"\xc7\x06", u16(0x1000), u16(0x2003)
    )  # mov word [0x1000], 0x2003   PML4[0] -> PDPT, present|writable
    emit(b"\xc7\x06", u16(0x2000), u16(0x3003))  # mov word [0x2000], 0x3003   PDPT[0] -> PD
    emit(b"\xc7\x06", u16(0x3000), u16(0x0083))  # mov word [0x3000], 0x0083   PD[0]: 2 MiB page at 0, PS|W|P
    gdtr_operand = emit(b"\x0f\x01\x16", u16(0)) + 3  # lgdt [gdtr] (address patched below)
    emit(b"\x0f\x20\xc0")  # mov eax, cr0
    emit(b"\x0c\x01")  # or al, 1                  CR0.PE
    emit(b"\x0f\x22\xc0")  # mov cr0, eax
    pm32_operand = emit(b"\xea", u16(0), u16(0x08)) + 1  # jmp 0x08:pm32 (32-bit code segment)
    # ---- 32-bit protected mode ----
    pm32 = emit(b"\x66\xb8", u16(0x10))  # mov ax, 0x10   flat data segment
    emit(b"\x8e\xd8")  # mov ds, eax
    emit(b"\x8e\xc0")  # mov es, eax
    emit(b"\x8e\xd0")  # mov ss, eax
    emit(b"\xb0", b"P")  # mov al, 'P'
    emit(b"\xee")  # out dx, al                reached protected mode
    emit(b"\x0f\x20\xe0")  # mov eax, cr4
    emit(b"\x83\xc8\x20")  # or eax, 0x20          CR4.PAE
    emit(b"\x0f\x22\xe0")  # mov cr4, eax
    emit(b"\xb8", u32(0x1000))  # mov eax, 0x1000    the PML4
    emit(b"\x0f\x22\xd8")  # mov cr3, eax
    emit(b"\xb9", u32(0xC0000080))  # mov ecx, 0xc0000080   IA32_EFER
    emit(b"\x0f\x32")  # rdmsr                     (clobbers edx: dx is reloaded in long mode)
    emit(b"\x0d", u32(0x100))  # or eax, 0x100     EFER.LME
    emit(b"\x0f\x30")  # wrmsr
    emit(b"\x0f\x20\xc0")  # mov eax, cr0
    emit(b"\x0d", u32(0x80000000))  # or eax, 0x80000000   CR0.PG: long mode becomes active
    emit(b"\x0f\x22\xc0")  # mov cr0, eax
    lm64_operand = emit(b"\xea", u32(0), u16(0x18)) + 1  # jmp 0x18:lm64 (64-bit code segment)
    # ---- 64-bit long mode ----
    lm64 = emit(b"\xba", u32(0x3F8))  # mov edx, 0x3f8
    emit(b"\xb0", b"L")  # mov al, 'L'
    emit(b"\xee")  # out dx, al                reached long mode: the timed loop starts
    emit(b"\xb9", u32(loop_iterations))  # mov ecx, loop_iterations
    spin = emit(b"\xff\xc9")  # spin: dec ecx
    emit(b"\x75", bytes([(spin - (len(code) + 2)) & 0xFF]))  # jnz spin
    emit(b"\xb0", b"D")  # mov al, 'D'
    emit(b"\xee")  # out dx, al                the loop is done
    emit(b"\xb0\x0a")  # mov al, 10
    emit(b"\xee")  # out dx, al
    emit(b"\xb0", bytes([EXIT_VALUE]))  # mov al, EXIT_VALUE
    emit(b"\xe6\xf4")  # out 0xf4, al              isa-debug-exit: QEMU exits with EXIT_STATUS
    halt = emit(b"\xf4")  # halt: hlt
    emit(b"\xeb", bytes([(halt - (len(code) + 2)) & 0xFF]))  # jmp halt
    # ---- data ----
    while len(code) % 8:
        code.append(0)
    gdt = emit(
        struct.pack("<Q", 0),  # 0x00 null descriptor
        struct.pack("<Q", 0x00CF9A000000FFFF),  # 0x08 code, 32-bit, base 0, limit 4 GiB
        struct.pack("<Q", 0x00CF92000000FFFF),  # 0x10 data, base 0, limit 4 GiB
        struct.pack("<Q", 0x00AF9A000000FFFF),  # 0x18 code, 64-bit (L=1, D=0)
    )
    gdtr = emit(u16(4 * 8 - 1), u32(base + gdt))  # GDT limit and linear base
    banner = emit(BANNER, b"\0")
    code[msg_operand : msg_operand + 2] = u16(base + banner)
    code[gdtr_operand : gdtr_operand + 2] = u16(base + gdtr)
    code[pm32_operand : pm32_operand + 2] = u16(base + pm32)
    code[lm64_operand : lm64_operand + 4] = u32(base + lm64)
    if len(code) > 510:
        raise AssertionError("the probe guest outgrew its boot sector")
    return bytes(code) + bytes(510 - len(code)) + b"\x55\xaa"


def guest_command(qemu: str, accel: Accel, image: Path) -> list[str]:
    """The QEMU command line of one probe run (no network, no display, 16 MiB)."""
    return [
        qemu,
        "-accel",
        accel,
        "-nodefaults",
        "-nographic",
        "-no-user-config",
        "-m",
        "16",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-drive",
        f"file={image},format=raw,if=ide",
    ]


@dataclass(frozen=True)
class GuestRun:
    """One run of the probe guest under one accelerator."""

    accel: Accel
    #: The guest printed every stage and QEMU exited with EXIT_STATUS.
    completed: bool
    #: The stage letters seen, in order (a prefix of "RPLD").
    stages: str
    #: Wall-clock seconds between "L" and "D" as they reached us (the timed loop).
    loop_seconds: float | None
    seconds: float
    timed_out: bool
    exit_status: int | None
    #: The last line QEMU wrote to stderr (why it failed), "" if none.
    error: str

    def reached(self) -> str:
        return STAGES[self.stages[-1]] if self.stages else "nothing (not even the banner)"


def run_guest(qemu: str, accel: Accel, timeout: float, image: Path) -> GuestRun:
    """Boot the probe guest once; kill and reap QEMU (its whole process
    group) when ``timeout`` seconds of wall-clock time have passed."""
    start = time.monotonic()
    deadline = start + timeout
    try:
        proc = subprocess.Popen(
            guest_command(qemu, accel, image),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        return GuestRun(accel, False, "", None, 0.0, False, None, f"cannot run {qemu}: {exc.strerror}")
    assert proc.stdout is not None and proc.stderr is not None
    out = bytearray()
    err = bytearray()
    marks: dict[str, float] = {}
    timed_out = False
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 4096)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf: bytearray = key.data
                if len(buf) < 65536:
                    buf.extend(chunk)
                if buf is out:
                    now = time.monotonic()
                    seen = _stages(bytes(out))
                    for letter in "LD":
                        if letter in seen and letter not in marks:
                            marks[letter] = now
    status: int | None = None
    if not timed_out:
        try:
            status = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    if timed_out:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    stages = _stages(bytes(out))
    loop = marks["D"] - marks["L"] if "L" in marks and "D" in marks else None
    lines = [ln.strip() for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "warning:" not in ln] or lines
    return GuestRun(
        accel=accel,
        completed=stages == "RPLD" and status == EXIT_STATUS,
        stages=stages,
        loop_seconds=loop,
        seconds=time.monotonic() - start,
        timed_out=timed_out,
        exit_status=status,
        error=errors[-1][:300] if errors else "",
    )


def _stages(out: bytes) -> str:
    """The stage letters in the guest's output (those after the banner)."""
    at = out.find(BANNER)
    if at < 0:
        return ""
    tail = out[at + len(BANNER) :]
    seen = "R"
    for letter in "PLD":
        if letter.encode() in tail:
            seen += letter
        else:
            break
    return seen


@dataclass(frozen=True)
class AccelProbe:
    """Which acceleration a VM Keep should use here, and why."""

    accel: Accel
    kvm_usable: bool
    #: One line: why KVM is (not) used.
    reason: str
    #: Wall-clock seconds the probe took (both runs).
    seconds: float
    #: The probe guest ran under TCG: QEMU itself works.
    tcg_usable: bool = True
    tcg_loop_seconds: float | None = None
    kvm_loop_seconds: float | None = None
    #: Read from the cache file rather than measured now.
    cached: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> AccelProbe:
        accel = doc["accel"]
        if accel not in ("kvm", "tcg"):
            raise ValueError(f"bad accel {accel!r}")

        def opt(name: str) -> float | None:
            value = doc.get(name)
            return None if value is None else float(value)

        return cls(
            accel=accel,
            kvm_usable=bool(doc["kvm_usable"]),
            reason=str(doc["reason"]),
            seconds=float(doc["seconds"]),
            tcg_usable=bool(doc["tcg_usable"]),
            tcg_loop_seconds=opt("tcg_loop_seconds"),
            kvm_loop_seconds=opt("kvm_loop_seconds"),
        )


def _why_failed(run: GuestRun, timeout: float) -> str:
    if run.timed_out:
        return (
            f"the {run.accel.upper()} guest did not finish within {timeout:g} s (it reached {run.reached()})"
        )
    if run.exit_status is not None and run.exit_status != EXIT_STATUS and not run.stages:
        return f"QEMU could not start a {run.accel.upper()} guest: {run.error or f'exit status {run.exit_status}'}"
    return (
        f"the {run.accel.upper()} guest stopped after {run.reached()} "
        f"(exit status {run.exit_status}){': ' + run.error if run.error else ''}"
    )


def decide(tcg: GuestRun, kvm: GuestRun, timeout: float) -> AccelProbe:
    """The acceleration to use, from one TCG and one KVM run of the probe guest."""
    seconds = tcg.seconds + kvm.seconds

    def verdict(accel: Accel, reason: str) -> AccelProbe:
        return AccelProbe(
            accel,
            accel == "kvm",
            reason,
            seconds,
            tcg_usable=tcg.completed,
            tcg_loop_seconds=tcg.loop_seconds,
            kvm_loop_seconds=kvm.loop_seconds,
        )

    if not kvm.completed:
        return verdict("tcg", _why_failed(kvm, timeout))
    assert kvm.loop_seconds is not None
    if tcg.completed:
        assert tcg.loop_seconds is not None
        if kvm.loop_seconds > tcg.loop_seconds:
            ratio = kvm.loop_seconds / max(tcg.loop_seconds, 1e-4)
            return verdict(
                "tcg",
                f"the KVM guest runs but {ratio:.0f}x slower than under TCG "
                f"(timed loop {kvm.loop_seconds:.3f} s against {tcg.loop_seconds:.3f} s): KVM emulates "
                "instructions here (nested virtualisation without VMX/SVM), so a Linux guest would "
                "seem to hang",
            )
        reason = (
            f"a KVM guest reached long mode and ran the timed loop in {kvm.loop_seconds:.3f} s "
            f"(TCG: {tcg.loop_seconds:.3f} s)"
        )
    else:
        reason = f"a KVM guest ran the timed loop in {kvm.loop_seconds:.3f} s (TCG failed: {_why_failed(tcg, timeout)})"
    return verdict("kvm", reason)


_MEMO: dict[tuple[str, int, int, float], AccelProbe] = {}


def clear_memo() -> None:
    """Forget the probes of this process (tests)."""
    _MEMO.clear()


def _kernel_release(root: Path = Path("/")) -> str:
    try:
        return (root / "proc/sys/kernel/osrelease").read_text().strip()
    except OSError:
        return "unknown"


def _cache_key(qemu: str) -> dict[str, str]:
    info = qemu_info(qemu)
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = ""
    return {
        "qemu": os.path.realpath(qemu),
        "qemu_version": info.version_text if info else "unknown",
        "kernel": _kernel_release(),
        "boot_id": boot_id,
    }


def _read_cache(cache_file: Path, key: Mapping[str, str]) -> AccelProbe | None:
    try:
        doc = json.loads(cache_file.read_text())
        if doc.get("key") != dict(key):
            return None
        probe = AccelProbe.from_json(doc["probe"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return AccelProbe(**{**asdict(probe), "cached": True})


def _write_cache(cache_file: Path, key: Mapping[str, str], probe: AccelProbe) -> None:
    with contextlib.suppress(OSError):
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"key": dict(key), "probe": probe.to_json()}, indent=2))
        os.replace(tmp, cache_file)


def probe_accel(qemu: str, timeout: float = 5.0, *, cache_file: Path | None = None) -> AccelProbe:
    """Boot the probe guest under TCG, then under KVM (each within ``timeout``
    seconds of wall-clock time) and choose: KVM only if its guest completed
    and ran the timed loop no slower than TCG's.

    Memoised per process (by QEMU path, its mtime and size, and the timeout).
    With ``cache_file``, the verdict is also kept there, keyed by the QEMU
    version, the kernel release and the boot id, and reused while they stay
    the same.
    """
    try:
        st = os.stat(qemu)
        memo_key = (os.path.realpath(qemu), st.st_mtime_ns, st.st_size, timeout)
    except OSError:
        memo_key = (qemu, 0, 0, timeout)
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    key = _cache_key(qemu) if cache_file is not None else {}
    if cache_file is not None:
        cached = _read_cache(cache_file, key)
        if cached is not None:
            _MEMO[memo_key] = cached
            return cached
    with tempfile.TemporaryDirectory(prefix="stockade-accel-") as scratch:
        image = Path(scratch) / "probe.img"
        image.write_bytes(boot_sector())
        tcg = run_guest(qemu, "tcg", timeout, image)
        kvm = run_guest(qemu, "kvm", timeout, image)
    probe = decide(tcg, kvm, timeout)
    _MEMO[memo_key] = probe
    if cache_file is not None:
        _write_cache(cache_file, key, probe)
    return probe


def auto_accel(
    environ: Mapping[str, str] | None = None, *, timeout: float = 5.0, cache_file: Path | None = None
) -> tuple[Accel, AccelProbe | None]:
    """The acceleration for ``--accel auto``: the probe's choice with the QEMU
    :func:`find_qemu` finds, or TCG (and no probe) when there is none (the
    loader then reports the missing QEMU itself)."""
    qemu = find_qemu(environ)
    if qemu is None:
        return "tcg", None
    probe = probe_accel(qemu.path, timeout, cache_file=cache_file)
    return probe.accel, probe


# --- SEV-SNP and TDX host support ------------------------------------------------------------------

ReqStatus = Literal["ok", "missing", "unknown"]


@dataclass(frozen=True)
class Requirement:
    """One piece a confidential-VM host needs: ``missing`` blocks it,
    ``unknown`` could not be read here (it does not block); ``fix`` says what
    to do when it is not ok."""

    name: str
    status: ReqStatus
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


@dataclass(frozen=True)
class TeeHost:
    platform: Literal["SEV-SNP", "TDX"]
    requirements: tuple[Requirement, ...]
    #: The firmware (SEV) or TDX module version, when it could be read.
    firmware: str | None = None

    @property
    def supported(self) -> bool:
        return all(r.status != "missing" for r in self.requirements)

    @property
    def missing(self) -> tuple[Requirement, ...]:
        return tuple(r for r in self.requirements if r.status == "missing")

    def to_json(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "supported": self.supported,
            "firmware": self.firmware,
            "requirements": [r.to_json() for r in self.requirements],
        }


@dataclass(frozen=True)
class TeeSupport:
    snp: TeeHost
    tdx: TeeHost

    def to_json(self) -> dict[str, Any]:
        return {"snp": self.snp.to_json(), "tdx": self.tdx.to_json()}


@dataclass(frozen=True)
class SevStatus:
    """SNP_PLATFORM_STATUS (or, on older kernels, SEV PLATFORM_STATUS)."""

    api_major: int
    api_minor: int
    build: int
    state: int
    snp: bool
    #: CURRENT_TCB of the SNP firmware (0 for the SEV command).
    current_tcb: int = 0

    @property
    def version(self) -> str:
        return f"{self.api_major}.{self.api_minor} build {self.build}"


# include/uapi/linux/psp-sev.h: struct sev_issue_cmd {u32 cmd; u64 data; u32 error} __packed,
# SEV_ISSUE_CMD = _IOWR('S', 0x0, struct sev_issue_cmd); commands SEV_PLATFORM_STATUS = 1,
# SNP_PLATFORM_STATUS = 9 (after SEV_GET_ID2 = 8).
_SEV_ISSUE_CMD_FMT = "<IQI"
_SEV_ISSUE_CMD = (3 << 30) | (struct.calcsize(_SEV_ISSUE_CMD_FMT) << 16) | (ord("S") << 8) | 0
SEV_PLATFORM_STATUS = 1
SNP_PLATFORM_STATUS = 9
# struct sev_user_data_snp_status (32 bytes, packed): api_major u8, api_minor u8, state u8,
# is_rmp_initialized:1 u8, build_id u32, feature bits u32, guest_count u32,
# current_tcb_version u64, reported_tcb_version u64.
_SNP_STATUS_FMT = "<BBBBIIIQQ"
# struct sev_user_data_status (12 bytes, packed): api_major u8, api_minor u8, state u8,
# flags u32, build u8, guest_count u32.
_SEV_STATUS_FMT = "<BBBIBI"


def parse_snp_status(data: bytes) -> SevStatus:
    major, minor, state, _rmp, build, _flags, _guests, tcb, _reported = struct.unpack(_SNP_STATUS_FMT, data)
    return SevStatus(major, minor, build, state, snp=True, current_tcb=tcb)


def parse_sev_status(data: bytes) -> SevStatus:
    major, minor, state, _flags, build, _guests = struct.unpack(_SEV_STATUS_FMT, data)
    return SevStatus(major, minor, build, state, snp=False)


def _sev_ioctl(fd: int, command: int, size: int) -> bytes:
    out = ctypes.create_string_buffer(size)
    cmd = bytearray(struct.pack(_SEV_ISSUE_CMD_FMT, command, ctypes.addressof(out), 0))
    fcntl.ioctl(fd, _SEV_ISSUE_CMD, cmd, True)
    return out.raw


def read_sev_status(device: Path) -> SevStatus | str:
    """The SEV firmware version through the PSP driver (``/dev/sev``), or why
    not. Only the platform-status commands are issued; they need the device
    open for reading, which is usually root's (or the kvm group's) only."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot open {device}: {exc.strerror}"
    try:
        try:
            return parse_snp_status(_sev_ioctl(fd, SNP_PLATFORM_STATUS, struct.calcsize(_SNP_STATUS_FMT)))
        except OSError as snp_exc:
            try:
                return parse_sev_status(_sev_ioctl(fd, SEV_PLATFORM_STATUS, struct.calcsize(_SEV_STATUS_FMT)))
            except OSError as exc:
                if snp_exc.errno == errno.ENOTTY:
                    return f"{device} answers no SEV platform-status command ({os.strerror(exc.errno or 0)})"
                return f"the platform-status commands failed ({os.strerror(snp_exc.errno or 0)})"
    finally:
        os.close(fd)


def _read(root: Path, rel: str) -> str | None:
    try:
        return (root / rel).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _cpuinfo(root: Path) -> tuple[str, frozenset[str]]:
    vendor, flags = "", frozenset[str]()
    for line in (_read(root, "proc/cpuinfo") or "").splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        if key.strip() == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = frozenset(value.split())
    return vendor, flags


def _kernel(root: Path) -> tuple[str, tuple[int, int] | None]:
    release = _read(root, "proc/sys/kernel/osrelease") or ""
    m = re.match(r"(\d+)\.(\d+)", release)
    return release or "unknown", ((int(m.group(1)), int(m.group(2))) if m else None)


def _param(root: Path, module: str, name: str) -> str | None:
    """A module parameter as the kernel prints it ("Y", "N", "1", "0"), or None."""
    return _read(root, f"sys/module/{module}/parameters/{name}")


def _on(value: str | None) -> bool:
    return value in ("Y", "y", "1")


def _cpu_req(vendor: str, flags: frozenset[str], flag: str, maker: tuple[str, str], bios: str) -> Requirement:
    """The CPU requirement: /proc/cpuinfo lists ``flag``; else why not
    (another vendor than ``maker`` (vendor id, name), or the flag is
    missing), with what the BIOS must enable."""
    if flag in flags:
        return Requirement("CPU", "ok", f"{vendor}, /proc/cpuinfo lists {flag}")
    if vendor and vendor != maker[0]:
        return Requirement("CPU", "missing", f"{vendor}: not an {maker[1]} CPU", bios)
    return Requirement("CPU", "missing", f"/proc/cpuinfo does not list {flag}", bios)


def _kernel_req(
    release: str, version: tuple[int, int] | None, need: tuple[int, int], what: str
) -> Requirement:
    shown = f"{need[0]}.{need[1]}"
    if version is not None and version >= need:
        return Requirement("host kernel", "ok", f"Linux {release} (>= {shown})")
    return Requirement(
        "host kernel",
        "missing",
        f"Linux {release}",
        f"{what} needs a host kernel >= {shown} (Debian 13, or bookworm-backports 6.12)",
    )


def _qemu_req(qemu: QemuInfo | None, need: tuple[int, int, int], obj: str) -> Requirement:
    shown = ".".join(map(str, need[:2]))
    if qemu is None:
        return Requirement(
            "QEMU", "missing", "no qemu-system-x86_64 found", f"install QEMU >= {shown} ({obj})"
        )
    if qemu.at_least(need):
        return Requirement("QEMU", "ok", f"QEMU {qemu.version_str} has the {obj} object (>= {shown})")
    return Requirement(
        "QEMU",
        "missing",
        f"QEMU {qemu.version_str} has no {obj} object",
        f"QEMU >= {shown} is needed for {obj} (a newer distribution's package or a source build) "
        f"and point {QEMU_ENV} at it",
    )


SevReader = Callable[[Path], "SevStatus | str"]


def host_tee_support(
    root: Path = Path("/"),
    *,
    qemu: QemuInfo | None = None,
    sev_reader: SevReader = read_sev_status,
    access: Callable[[Path, int], bool] = os.access,
) -> TeeSupport:
    """SEV-SNP and TDX host support of the machine under ``root``."""
    vendor, flags = _cpuinfo(root)
    release, kversion = _kernel(root)
    return TeeSupport(
        snp=_snp_host(root, vendor, flags, release, kversion, qemu, sev_reader, access),
        tdx=_tdx_host(root, vendor, flags, release, kversion, qemu),
    )


def _snp_host(
    root: Path,
    vendor: str,
    flags: frozenset[str],
    release: str,
    kversion: tuple[int, int] | None,
    qemu: QemuInfo | None,
    sev_reader: SevReader,
    access: Callable[[Path, int], bool],
) -> TeeHost:
    reqs: list[Requirement] = []
    bios = (
        "needs an AMD EPYC 7003 (Milan) or newer with SEV-SNP enabled in the BIOS "
        "(SMEE, SEV-SNP, SNP memory coverage / RMP table, IOMMU on)"
    )
    reqs.append(_cpu_req(vendor, flags, "sev_snp", ("AuthenticAMD", "AMD"), bios))
    reqs.append(_kernel_req(release, kversion, K_KVM_SNP, "KVM SEV-SNP host support"))
    module_fix = (
        "boot with kvm_amd.sev=1 kvm_amd.sev_es=1 kvm_amd.sev_snp=1 (or put "
        "'options kvm_amd sev_snp=1' in /etc/modprobe.d/); it stays N when the BIOS did not enable SNP"
    )
    if not (root / "sys/module/kvm_amd").is_dir():
        reqs.append(
            Requirement(
                "kvm_amd", "missing", "the kvm_amd module is not loaded", "modprobe kvm_amd; " + module_fix
            )
        )
    else:
        values = {n: _param(root, "kvm_amd", n) for n in ("sev", "sev_es", "sev_snp")}
        shown = " ".join(f"{n}={v or '?'}" for n, v in values.items())
        ok = all(_on(v) for v in values.values())
        reqs.append(
            Requirement("kvm_amd", "ok" if ok else "missing", f"kvm_amd {shown}", "" if ok else module_fix)
        )
    dev = root / "dev/sev"
    firmware: str | None = None
    if not os.path.lexists(dev):
        reqs.append(
            Requirement(
                "/dev/sev",
                "missing",
                "/dev/sev does not exist",
                "the PSP driver creates it (ccp module, CONFIG_CRYPTO_DEV_SP_PSP) once the firmware has SEV enabled",
            )
        )
        reqs.append(Requirement("firmware", "unknown", "not readable without /dev/sev"))
    else:
        if access(dev, os.R_OK | os.W_OK):
            reqs.append(Requirement("/dev/sev", "ok", "/dev/sev (read/write for QEMU's user)"))
        else:
            reqs.append(
                Requirement(
                    "/dev/sev",
                    "missing",
                    "/dev/sev exists but this user may not open it read/write (QEMU needs to)",
                    'run QEMU as root or give its user the device (udev: KERNEL=="sev", GROUP="kvm", MODE="0660")',
                )
            )
        status = sev_reader(dev)
        if isinstance(status, str):
            reqs.append(
                Requirement(
                    "firmware",
                    "unknown",
                    status,
                    "run as root (or with read access to /dev/sev) to read the firmware version; "
                    "the kernel log also names it (dmesg | grep -i 'SEV API')",
                )
            )
        else:
            firmware = status.version
            need = f"{SNP_MIN_FIRMWARE[0]}.{SNP_MIN_FIRMWARE[1]}"
            what = "SNP" if status.snp else "SEV"
            detail = f"{what} firmware API {status.version}"
            if status.snp:
                detail += f", current TCB 0x{status.current_tcb:016x}"
            if (status.api_major, status.api_minor) >= SNP_MIN_FIRMWARE:
                reqs.append(Requirement("firmware", "ok", f"{detail} (>= {need})"))
            else:
                reqs.append(
                    Requirement(
                        "firmware",
                        "missing",
                        detail,
                        f"SEV-SNP needs firmware API >= {need}: update the BIOS (or load a newer "
                        "SEV firmware, /lib/firmware/amd/amd_sev_*.sbin)",
                    )
                )
    reqs.append(_qemu_req(qemu, MIN_QEMU_SNP, "sev-snp-guest"))
    return TeeHost("SEV-SNP", tuple(reqs), firmware)


# Out-of-tree TDX host kernels published the module's version here (ABI doc
# sysfs-firmware-tdx, "/sys/firmware/tdx/", KernelVersion 5.17, never merged);
# mainline prints it in the kernel log only.
TDX_MODULE_SYSFS = "sys/firmware/tdx/tdx_module"


def _tdx_host(
    root: Path,
    vendor: str,
    flags: frozenset[str],
    release: str,
    kversion: tuple[int, int] | None,
    qemu: QemuInfo | None,
) -> TeeHost:
    reqs: list[Requirement] = []
    bios = (
        "needs a 4th-gen Xeon Scalable (Sapphire Rapids) or newer with TDX enabled in the BIOS "
        "(TME, TME-MT, TDX, SEAM loader, TDX key split > 0)"
    )
    reqs.append(_cpu_req(vendor, flags, "tdx_host_platform", ("GenuineIntel", "Intel"), bios))
    reqs.append(_kernel_req(release, kversion, K_KVM_TDX, "KVM TDX host support"))
    module_fix = "boot with kvm_intel.tdx=1 (host kernel built with CONFIG_INTEL_TDX_HOST)"
    if not (root / "sys/module/kvm_intel").is_dir():
        reqs.append(
            Requirement(
                "kvm_intel",
                "missing",
                "the kvm_intel module is not loaded",
                "modprobe kvm_intel; " + module_fix,
            )
        )
    else:
        tdx = _param(root, "kvm_intel", "tdx")
        ok = _on(tdx)
        reqs.append(
            Requirement(
                "kvm_intel",
                "ok" if ok else "missing",
                f"kvm_intel tdx={tdx or '?'}",
                "" if ok else module_fix,
            )
        )
    module = root / TDX_MODULE_SYSFS
    firmware: str | None = None
    major, minor = (
        _read(root, f"{TDX_MODULE_SYSFS}/major_version"),
        _read(root, f"{TDX_MODULE_SYSFS}/minor_version"),
    )
    if module.is_dir() and major is not None and minor is not None:
        build = _read(root, f"{TDX_MODULE_SYSFS}/build_num")
        firmware = f"{_int(major)}.{_int(minor)}" + (f" build {_int(build)}" if build else "")
        reqs.append(Requirement("module", "ok", f"TDX module {firmware}"))
    else:
        reqs.append(
            Requirement(
                "module",
                "unknown",
                "the kernel does not publish the TDX module version in sysfs",
                "the kernel log names it once KVM initialised TDX (dmesg | grep -i tdx)",
            )
        )
    reqs.append(_qemu_req(qemu, MIN_QEMU_TDX, "tdx-guest"))
    return TeeHost("TDX", tuple(reqs), firmware)


def _int(text: str | None) -> int | str:
    if text is None:
        return "?"
    try:
        return int(text, 0)
    except ValueError:
        return text
