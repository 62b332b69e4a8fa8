"""VM keep loader: a Keep as a QEMU virtual machine booting a Keep image.

Backends:

- ``vm``: a plain VM (KVM where it works, TCG otherwise) booting the Keep
  image directly (``-kernel``/``-initrd``/``-append``). No TEE: the sim PSP
  signs SNP-shaped reports whose MEASUREMENT the loader computed from the
  exact kernel, initrd and command line it boots (stockade.measure.vm).
  NO HARDWARE PROTECTION: labelled like sim.
- ``snp`` and ``tdx``: the QEMU configuration of an SEV-SNP guest and of a
  TD (:func:`qemu_argv`); the guest's evidence then comes from the
  hardware (stockade.keep.vmguest). No machine here has either: these
  command lines are generated and checked against QEMU's documentation,
  never run (docs/vm-hardware.md).

The VM has no network and no disk: the Keep's only byte streams are two
virtio-serial ports (stockade.wire.vmports) backed by the host sockets the
loader hands QEMU as inherited descriptors (``-chardev socket,fd=N``), and
the serial console, appended to the Keep's host-side log (its lines are the
Keep runtime's own log, never workload data). The host relays the conn
port exactly as it relays a process Keep's socket.
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from stockade.errors import ImageError
from stockade.host.loader import (
    DEFAULT_LIMITS,
    VM_BACKENDS,
    KeepProcess,
    PopenSpawner,
    ResourceLimits,
    child_env,
)
from stockade.image.manifest import Image
from stockade.wire.vmports import CONN_PORT, PSP_PORT

#: Defaults of a VM Keep, fixed per VM: the initramfs unpacks into RAM
#: (~75 MB), the Keep runtime uses ~60 MB, and the workload's memory and
#: disk (a tmpfs: RAM too) must fit beside them with a reserve: the default
#: limits (256 MiB each) need about 1 GiB (the Keep refuses limits that do
#: not fit: stockade.keep.vmguest.ram_budget). QEMU allocates guest pages
#: only when the guest touches them.
DEFAULT_MEMORY_MIB = 1024
DEFAULT_VCPUS = 1
#: TCG's translation cache (MiB): QEMU's default for system emulation is
#: 1 GiB per VM, too much for a host running many small Keeps.
TCG_TB_SIZE_MIB = 64


@dataclass(frozen=True)
class VmConfig:
    """How to run VM Keeps on this host."""

    image: Image
    accel: str = "tcg"  # "kvm" or "tcg" (stockade.host.vmprobe chooses)
    memory_mib: int = DEFAULT_MEMORY_MIB
    vcpus: int = DEFAULT_VCPUS
    qemu: str = "qemu-system-x86_64"
    #: Firmware for snp (an AmdSev OVMF build) and tdx (TDVF); unused by vm.
    firmware: Path | None = None
    #: QEMU's seccomp sandbox (-sandbox on,...), when QEMU is built with it.
    sandbox: bool = True

    def __post_init__(self) -> None:
        if self.accel not in ("kvm", "tcg"):
            raise ImageError(f"acceleration must be kvm or tcg, got {self.accel!r}")
        if not 128 <= self.memory_mib <= 1 << 20:
            raise ImageError(f"VM memory must be 128 MiB or more, got {self.memory_mib} MiB")
        if not 1 <= self.vcpus <= 64:
            raise ImageError(f"vCPUs must be 1 to 64, got {self.vcpus}")

    def measurement(self) -> bytes:
        """The sim launch digest of this image (from its checked manifest's
        digests: no file is read)."""
        return self.image.vm_measurement()


def qemu_argv(
    cfg: VmConfig, backend: str, conn_fd: int, psp_fd: int | None, console: str = "/proc/self/fd/2"
) -> list[str]:
    """The QEMU command line of one VM Keep.

    ``conn_fd``/``psp_fd`` are connected sockets QEMU inherits;
    ``console`` is where the serial console is appended (default: QEMU's
    own stderr, the Keep's log)."""
    if backend not in VM_BACKENDS:
        raise ValueError(f"not a VM backend: {backend!r}")
    image = cfg.image
    argv = [
        cfg.qemu,
        "-name", "stockade-keep",
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-m", f"{cfg.memory_mib}M",
        "-smp", str(cfg.vcpus),
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", image.cmdline,
        "-nic", "none",
        "-chardev", f"file,id=console,path={console},append=on",
        "-serial", "chardev:console",
        # romfile= (none): no PCI option ROM, which TDVF/OVMF would measure.
        "-device", "virtio-serial-pci,id=vs0,max_ports=4,romfile=",
        "-chardev", f"socket,id=conn,fd={conn_fd}",
        "-device", f"virtserialport,bus=vs0.0,nr=1,chardev=conn,name={CONN_PORT}",
    ]  # fmt: skip
    if cfg.sandbox:
        # QEMU's seccomp filter: no spawning, no privilege changes, no
        # obsolete system calls (qemu-options.hx, -sandbox).
        argv += ["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
    if backend == "vm":
        if psp_fd is None:
            raise ValueError("backend vm needs the sim PSP's socket")
        argv += [
            "-chardev", f"socket,id=psp,fd={psp_fd}",
            "-device", f"virtserialport,bus=vs0.0,nr=2,chardev=psp,name={PSP_PORT}",
        ]  # fmt: skip
        if cfg.accel == "kvm":
            argv += ["-machine", "q35,accel=kvm", "-cpu", "host"]
        else:
            argv += ["-machine", "q35", "-accel", f"tcg,tb-size={TCG_TB_SIZE_MIB}", "-cpu", "max"]
        return argv
    if cfg.firmware is None:
        raise ImageError(
            f"backend {backend} needs its firmware (--firmware: an AmdSev OVMF for snp, TDVF for tdx)"
        )
    if backend == "snp":
        # QEMU >= 9.1, docs/system/i386/amd-memory-encryption.rst: an SNP
        # guest's memory comes from a memfd backend (guest_memfd for the
        # private part), the sev-snp-guest object is the machine's
        # confidential-guest-support, and kernel-hashes=on makes QEMU put the
        # SEV hashes table of -kernel/-initrd/-append into the measured
        # firmware area (OVMF checks them: stockade.measure.snp computes the
        # resulting launch digest offline). cbitpos 51 / reduced-phys-bits 1
        # are those of EPYC Milan, Genoa and Turin (CPUID 0x8000001F).
        argv += [
            "-machine", "q35,accel=kvm,confidential-guest-support=sev0,memory-backend=ram0",
            "-cpu", "EPYC-v4",
            "-object", f"memory-backend-memfd,id=ram0,size={cfg.memory_mib}M,share=true,prealloc=false",
            "-object", "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on",
            "-bios", str(cfg.firmware),
        ]  # fmt: skip
        return argv
    # tdx: QEMU >= 10.1, docs/system/i386/tdx.rst: a tdx-guest object as
    # confidential-guest-support, split IRQ chip (the TDX module virtualises
    # the local APIC), TDVF as -bios; the kernel, initrd and command line are
    # measured into RTMRs by TDVF (stockade.measure.tdx).
    argv += [
        "-machine", "q35,accel=kvm,kernel-irqchip=split,confidential-guest-support=tdx0,memory-backend=ram0",
        "-cpu", "host",
        "-object", f"memory-backend-memfd,id=ram0,size={cfg.memory_mib}M,share=true,prealloc=false",
        "-object", "tdx-guest,id=tdx0",
        "-bios", str(cfg.firmware),
    ]  # fmt: skip
    return argv


def choose_accel(mode: str, state_dir: Path | None = None) -> tuple[str, str]:
    """("kvm" or "tcg", why) for ``mode`` ("auto", "kvm", "tcg"). auto
    boots a test guest under both and takes KVM only where it runs and is
    not slower than TCG (stockade.host.vmprobe; cached in the state
    directory per QEMU, kernel and boot)."""
    if mode in ("kvm", "tcg"):
        return mode, "chosen with --accel"
    from stockade.host.vmprobe import auto_accel

    cache = state_dir / "accel-probe.json" if state_dir is not None else None
    accel, probe = auto_accel(cache_file=cache)
    return accel, probe.reason if probe is not None else "no QEMU found"


class VmSpawner:
    """Starts VM Keeps (QEMU) and their sim PSPs; a Spawner for
    stockade.host.loader.start_keep. ``die_with_parent`` (local runs):
    QEMU gets SIGKILL when the process that started it dies (util-linux
    ``setpriv --pdeathsig``, which keeps the setting across exec)."""

    def __init__(
        self, cfg: VmConfig, limits: ResourceLimits = DEFAULT_LIMITS, die_with_parent: bool = False
    ) -> None:
        self.cfg = cfg
        self.limits = limits
        self.die_with_parent = die_with_parent
        self._psp = PopenSpawner(self.limits)
        if shutil.which(cfg.qemu) is None:
            raise ImageError(f"{cfg.qemu} not found; install it: apt-get install qemu-system-x86")
        if die_with_parent and shutil.which("setpriv") is None:
            raise ImageError("setpriv (util-linux) not found; it ties a local VM Keep's life to its client")

    def keep(
        self,
        keep_id: str,
        backend: str,
        log_fd: int,
        conn_fd: int,
        psp_fd: int,
        scratch: Path | None,
        compile_cache: Path | None = None,  # a VM Keep has no host storage: no compile cache
    ) -> KeepProcess:
        argv = qemu_argv(self.cfg, backend, conn_fd, psp_fd if backend == "vm" else None)
        if self.die_with_parent:
            argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
        proc = subprocess.Popen(
            argv,
            pass_fds=tuple(fd for fd in (conn_fd, psp_fd) if fd >= 0),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_fd,
            env=child_env(),
            close_fds=True,
        )
        # rlimits as for process Keeps, but for the descriptors QEMU needs.
        for res, value in (
            (resource.RLIMIT_CORE, 0),
            (resource.RLIMIT_NOFILE, max(self.limits.nofile, 1024)),
        ):
            with contextlib.suppress(OSError):
                resource.prlimit(proc.pid, res, (value, value))
        return proc

    def psp(
        self, state_dir: Path, log_fd: int, channel_fd: int, measurement: bytes, flavour: str = "snp"
    ) -> KeepProcess:
        return self._psp.psp(state_dir, log_fd, channel_fd, measurement, flavour)

    def measurement(self) -> bytes:
        return self.cfg.measurement()
