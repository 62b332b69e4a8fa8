"""VM Keeps (issue 15): image, boot-to-attested, memory, warm-pool deploys.

Every figure has its baseline measured in the same run; the ratios are the
result, the absolute numbers are printed for information (they depend on
the machine and on what else runs on it):

1. image: ``stockade image build`` into a fresh directory (cold), then
   again into another fresh directory from the same inputs; size of the
   kernel and the initrd; the two builds must be byte-identical (the bench
   fails if not).
2. local: ``stockade run --backend vm --image DIR --accel tcg --allow-sim
   -q hello.wasm`` against ``stockade run --allow-sim -q`` (a process
   Keep), alternated; wall time of the command, and from the CLI's own
   progress phases (stockade.client.progress): boot (QEMU or the Keep
   process started) to the Keep's first evidence request, and boot to
   attested and verified (the client has checked the evidence).
3. memory: RSS, PSS and USS (/proc/PID/smaps_rollup) of the idle pooled
   QEMU processes of a live ``stockade host serve --backend vm --vm-pool
   N`` (and of the sim PSP process each one has), against idle sim Keeps
   (Keep + sim PSP) from the fork server of the same manager.
4. deploys: ``stockade deploy --backend vm`` to that manager once its pool
   is booted and idle (warm), to a second manager with ``--vm-pool 0``
   (cold: the VM boots on create), and ``stockade deploy`` of a sim Keep;
   wall time and create-to-verified (progress phases) p50 and ratios.
   Every deploy waits until the pool is full and idle again, so no deploy
   competes with an earlier deploy's replacement boot; a warm deploy still
   competes with the replacement boot its own create starts (reported).
5. KVM: one ``--accel kvm`` run with a time limit. On the nested
   development machines a guest hangs at kernel entry under KVM: the bench
   says so and measures TCG only; where KVM works, the local runs are
   measured under KVM too.

The phases are read by running the CLI with a hook that appends each phase
the CLI's Progress records (name, its CLOCK_MONOTONIC start) to a file; the
code under test is unchanged. Not a pass/fail gate.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stockade.procfs import cpu_seconds, memory_mib, read_stat

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"
IMAGE_FILES = ("vmlinuz", "initrd.img", "cmdline", "manifest.json")
#: The line a VM Keep's console log shows once it waits for its hello (its
#: attester chosen: stockade.keep.vmguest.attester; printed after the
#: "workload disk" line, once the conn port is open).
READY_MARK = b"keep: no TEE in this VM"
#: A pooled QEMU is idle when it used less than this share of a CPU over
#: IDLE_WINDOW_S (an idle guest under TCG: ~1-2 %; booting: ~100 %).
IDLE_CPU_SHARE = 0.1
IDLE_WINDOW_S = 0.5

#: Runs the stockade CLI (argv[2:]) and appends "phase monotonic" to the
#: file argv[1] each time its Progress enters a phase (os.write: the CLI
#: ends with os._exit, which skips atexit and buffered files).
HOOK = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
os.write(fd, f"start {time.monotonic()!r}\n".encode())
from stockade.client import progress as _progress
_enter = _progress.Progress.enter
def enter(self, phase):
    _enter(self, phase)
    last = self.phases[-1:]
    if last and last[0][0] is phase:
        os.write(fd, f"{phase.value} {last[0][1]!r}\n".encode())
_progress.Progress.enter = enter
sys.argv = ["stockade", *sys.argv[2:]]
from stockade.cli import main
main(prog_name="stockade")
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def mean_mib(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.fmean(r[k] for r in rows), 1) if rows else 0.0 for k in ("rss", "pss", "uss")}


def children(parent: int) -> dict[int, bytes]:
    """pid -> cmdline of the live direct children of ``parent``."""
    found: dict[int, bytes] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = read_stat(int(entry.name))
        if fields is None or fields[0] == "Z" or int(fields[1]) != parent:
            continue
        with contextlib.suppress(OSError):
            found[int(entry.name)] = (entry / "cmdline").read_bytes()
    return found


def descendants(root: int) -> set[int]:
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for parent in frontier for pid in children(parent)} - found
        found |= frontier
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cli:
    """The stockade CLI in fresh processes, with its progress phases."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work = work
        self.env = env
        self._n = 0

    def run(self, args: list[str], timeout: float = 300, expect: bytes = b"Hello, Bob!") -> dict[str, Any]:
        """Wall ms of ``stockade ARGS`` and the phases' offsets (ms) from
        the process start; fails (SystemExit) unless it exits 0 and prints
        ``expect``."""
        self._n += 1
        phases_file = self.work / f"phases-{self._n}"
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", HOOK, str(phases_file), *args],
            capture_output=True,
            env=self.env,
            timeout=timeout,
            check=False,
            cwd=self.work,
        )
        wall = (time.monotonic() - t0) * 1000
        if proc.returncode != 0 or expect not in proc.stdout:
            raise SystemExit(
                f"stockade {' '.join(args)} failed (exit {proc.returncode}):\n"
                f"{proc.stdout.decode(errors='replace')}{proc.stderr.decode(errors='replace')}"
            )
        return {"wall_ms": wall, "phases_ms": {"spawn": 0.0, **read_phases(phases_file, t0)}}


def read_phases(path: Path, t0: float) -> dict[str, float]:
    """Phase -> ms after ``t0`` (its first entry: a phase is recorded once)."""
    phases: dict[str, float] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            name, _, at = line.partition(" ")
            phases.setdefault(name, (float(at) - t0) * 1000)
    return phases


def span(phases: dict[str, float], start: str, end: str) -> float | None:
    if start in phases and end in phases:
        return phases[end] - phases[start]
    return None


def summarise(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """p50 (and min/max) of wall time and of the phase spans."""

    def stats(values: list[float]) -> dict[str, float] | None:
        if not values:
            return None
        return {
            "p50": round(statistics.median(values), 1),
            "min": round(min(values), 1),
            "max": round(max(values), 1),
        }

    spans = {
        # "spawn" is when the bench started the CLI; "booting" when the CLI
        # is about to start the Keep (run: QEMU or the Keep process is
        # spawned right after; deploy: the create request is sent).
        "spawn_to_boot_ms": ("spawn", "booting"),  # interpreter, imports, options, image check
        "boot_to_evidence_request_ms": ("booting", "attesting"),  # local Keeps only
        "boot_to_verified_ms": ("booting", "loading"),  # evidence checked, policy accepted
        "verified_to_done_ms": ("loading", "done"),  # load, identity, compile, run
    }
    out: dict[str, Any] = {"runs": len(samples), "wall_ms": stats([s["wall_ms"] for s in samples])}
    for key, (a, b) in spans.items():
        values = [v for s in samples if (v := span(s["phases_ms"], a, b)) is not None]
        out[key] = stats(values)
    return out


def p50(doc: dict[str, Any], key: str) -> float | None:
    value = doc.get(key)
    return value["p50"] if isinstance(value, dict) else None


# == 1. image ===============================================================================================


def image_digests(directory: Path) -> dict[str, str]:
    return {f: hashlib.sha256((directory / f).read_bytes()).hexdigest() for f in IMAGE_FILES}


def same_builds(a: Path, b: Path) -> dict[str, str]:
    """The files' SHA-256 of two image builds; SystemExit unless they are identical."""
    da, db = image_digests(a), image_digests(b)
    if da != db:
        differing = sorted(f for f in IMAGE_FILES if da[f] != db[f])
        raise SystemExit(f"the two image builds differ: {', '.join(differing)} (not reproducible)")
    return da


def bench_image(work: Path, env: dict[str, str]) -> tuple[dict[str, Any], Path]:
    builds = []
    for name in ("image-cold", "image-again"):
        out = work / name
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "stockade", "image", "build", "-q", "-o", str(out)],
            env=env,
            check=False,
            capture_output=True,
        )
        seconds = time.monotonic() - t0
        if proc.returncode != 0:
            raise SystemExit(f"stockade image build failed (exit {proc.returncode}):\n{proc.stderr.decode()}")
        builds.append((out, seconds))
    (first, cold_s), (again, again_s) = builds
    d1 = same_builds(first, again)
    kernel = (first / "vmlinuz").stat().st_size
    initrd = (first / "initrd.img").stat().st_size
    manifest = json.loads((first / "manifest.json").read_text())
    return {
        "kernel_bytes": kernel,
        "initrd_bytes": initrd,
        "kernel_plus_initrd_mib": round((kernel + initrd) / 2**20, 1),
        "initrd_members": int(manifest["initrd"]["members"]),
        "kernel_package": f"{manifest['kernel']['package']} {manifest['kernel']['version']}",
        "build_cold_s": round(cold_s, 2),
        "build_again_s": round(again_s, 2),
        "identical": True,
        "sha256": d1,
    }, first


# == 5. KVM probe ===========================================================================================


def probe_kvm(cli: Cli, image: Path, timeout: float) -> dict[str, Any]:
    """One ``--accel kvm`` run; usable only if it prints the greeting in time."""
    if timeout <= 0:
        return {"probed": False, "usable": False, "detail": "not probed (--kvm-timeout 0)"}
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return {"probed": False, "usable": False, "detail": "/dev/kvm missing or not accessible"}
    phases = cli.work / "phases-kvm-probe"
    t0 = time.monotonic()
    args = ["run", "--backend", "vm", "--image", str(image), "--accel", "kvm", "--allow-sim", "-q"]
    proc = subprocess.Popen(
        [sys.executable, "-c", HOOK, str(phases), *args, str(HELLO), "Bob"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli.env,
        cwd=cli.work,
        start_new_session=True,  # its QEMU (setpriv --pdeathsig) goes with its group
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        reached = read_phases(phases, t0)
        stuck = (
            "booting: no evidence request yet" if "attesting" not in reached else "past its evidence request"
        )
        return {
            "probed": True,
            "usable": False,
            "detail": f"the guest hung under KVM: killed after {timeout:g} s, still {stuck}; expected on these development machines, VMs whose KVM has no VMX/SVM underneath "
            "(a guest hangs at kernel entry): TCG only",
        }
    wall = (time.monotonic() - t0) * 1000
    if proc.returncode != 0 or b"Hello, Bob!" not in out:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
        return {
            "probed": True,
            "usable": False,
            "detail": f"--accel kvm failed (exit {proc.returncode}): {last[0]}",
        }
    return {"probed": True, "usable": True, "detail": f"a KVM guest ran the workload in {wall:.0f} ms"}


# == 2. local runs ==========================================================================================


def bench_local(cli: Cli, image: Path, runs: int, kvm: bool) -> dict[str, Any]:
    hello = [str(HELLO), "Bob"]
    vm = ["run", "--backend", "vm", "--image", str(image), "--allow-sim", "-q"]
    kinds = {"process": ["run", "--allow-sim", "-q", *hello], "vm_tcg": [*vm, "--accel", "tcg", *hello]}
    if kvm:
        kinds["vm_kvm"] = [*vm, "--accel", "kvm", *hello]
    for args in kinds.values():
        cli.run(args)  # warm-up: the sim chip, the page cache
    samples: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for _ in range(runs):
        for kind, args in kinds.items():
            samples[kind].append(cli.run(args))
    result: dict[str, Any] = {kind: summarise(s) for kind, s in samples.items()}
    for vm in ("vm_tcg", "vm_kvm"):
        if vm in result:
            result[f"ratio_{vm}_over_process"] = {
                key: ratio(p50(result[vm], key), p50(result["process"], key))
                for key in ("wall_ms", "boot_to_evidence_request_ms", "boot_to_verified_ms")
            }
    return result


# == 3, 4. keep managers ====================================================================================


class Manager:
    """A live ``stockade host serve`` on loopback, its own state dir."""

    def __init__(self, base: Path, chip: Path, image: Path, args: list[str]) -> None:
        self.state = base / "state"
        self.state.mkdir(parents=True, mode=0o700)
        shutil.copytree(chip / "sim", self.state / "sim")
        stockade = [sys.executable, "-m", "stockade"]
        init = subprocess.run(
            [*stockade, "host", "init", "--state-dir", str(self.state), "--quota", "32"],
            capture_output=True,
            check=True,
        )
        self.token = init.stdout.decode().strip()
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = base / "server.log"
        argv = [*stockade, "host", "serve", "--listen", f"127.0.0.1:{port}", "--state-dir", str(self.state)]
        argv += ["--image", str(image), "--accel", "tcg", *args]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.started = time.monotonic()

    def wait_up(self, timeout: float = 60) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            self._check(deadline, "come up")
            time.sleep(0.05)

    def _check(self, deadline: float, what: str) -> None:
        if self.proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the manager did not {what}:\n{self.log.read_text(errors='replace')[-4000:]}")

    def qemus(self) -> list[int]:
        return [pid for pid, cmd in children(self.proc.pid).items() if cmd.startswith(b"qemu-system")]

    def vm_psps(self) -> list[int]:
        return [pid for pid, cmd in children(self.proc.pid).items() if b"stockade.evidence.sim.psp" in cmd]

    def pooled_ready(self) -> int:
        """Pooled VM Keeps whose log shows them waiting for a hello."""
        count = 0
        for log in (self.state / "logs").glob("keep-pool*.log"):
            with contextlib.suppress(OSError):
                count += READY_MARK in log.read_bytes()
        return count

    def wait_pool_idle(self, size: int, timeout: float = 180) -> float:
        """Wait until ``size`` pooled Keeps are booted and every QEMU of
        this manager is idle; returns the seconds waited."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            if self.pooled_ready() >= size:
                pids = self.qemus()
                before = {p: cpu_seconds(p) for p in pids}
                time.sleep(IDLE_WINDOW_S)
                busy = [p for p in pids if cpu_seconds(p) - before[p] > IDLE_CPU_SHARE * IDLE_WINDOW_S]
                if not busy and len(self.qemus()) >= size:
                    return time.monotonic() - t0
            else:
                time.sleep(0.1)
            self._check(deadline, f"boot its {size} pooled VM Keeps")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def idle_sim_keeps(mgr: Manager, count: int) -> dict[str, Any]:
    """Mean memory of ``count`` sim Keeps from the fork server, created but
    never connected (as idle as a pooled VM Keep: no hello yet). The
    manager runs with ``--keep-pool 0`` (ADR 0031), so every new process
    under it is one of these Keeps or its sim PSP."""
    from stockade.client.remote import ManagerClient

    before = descendants(mgr.proc.pid)
    with ManagerClient(mgr.url, mgr.token, timeout=120) as client:
        made = [client.create("sim") for _ in range(count)]
        keeps = {int(k["pid"]) for k in made}
        # Settled: RSS of every new process unchanged for a second (at most 30 s).
        last: dict[int, float] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(1.0)
            new = descendants(mgr.proc.pid) - before
            now = {p: m["rss"] if (m := memory_mib(p)) else 0.0 for p in new}
            if now == last:
                break
            last = now
        new = descendants(mgr.proc.pid) - before
        keep_rows = [m for p in new & keeps if (m := memory_mib(p))]
        psp_rows = [m for p in new - keeps if (m := memory_mib(p))]
        for k in made:
            client.kill(k["id"])
    keep, psp = mean_mib(keep_rows), mean_mib(psp_rows)
    return {
        "measured": {"keeps": len(keep_rows), "psps": len(psp_rows)},
        "keep_mib": keep,
        "psp_mib": psp,
        "per_keep_mib": {k: round(keep[k] + psp[k], 1) for k in keep},
    }


def qemu_memory_option(pid: int) -> int | None:
    """The guest RAM (MiB) of a QEMU: its ``-m NM`` option."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    for flag, value in itertools.pairwise(argv):
        if flag == b"-m" and value.endswith(b"M") and value[:-1].isdigit():
            return int(value[:-1])
    return None


def qemu_rss_parts(pid: int, vm_memory: int, initrd: Path) -> dict[str, float] | None:
    """Where a QEMU's RSS is (MiB, /proc/PID/smaps): the guest's RAM (the
    anonymous mapping of its -m size), the initrd file QEMU keeps mapped
    (page cache, shared by the QEMUs of one image), and the rest (QEMU
    itself, its TCG translation cache, device buffers)."""
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return None
    parts = {"guest_ram": 0, "initrd_file": 0, "other": 0}
    size_mib, name = 0, ""
    for line in text.splitlines():
        head = line.split()
        if not head:
            continue
        if "-" in head[0] and not head[0].endswith(
            ":"
        ):  # a mapping: "start-end perms offset dev inode [path]"
            start, _, end = head[0].partition("-")
            size_mib = (int(end, 16) - int(start, 16)) >> 20
            name = head[5] if len(head) > 5 else ""
        elif head[0] == "Rss:":
            if name == str(initrd.resolve()):
                part = "initrd_file"
            elif not name and size_mib == vm_memory:
                part = "guest_ram"
            else:
                part = "other"
            parts[part] += int(head[1])
    return {k: v / 1024 for k, v in parts.items()}


def pooled_vm_keeps(mgr: Manager, image: Path) -> dict[str, Any]:
    qemus = mgr.qemus()
    sizes = {qemu_memory_option(p) for p in qemus}
    if len(sizes) != 1 or None in sizes:
        raise SystemExit(f"cannot tell the guest RAM of the pooled QEMUs (their -m: {sizes})")
    vm_memory = next(iter(sizes))
    qemu_rows = [m for p in qemus if (m := memory_mib(p))]
    part_rows = [m for p in qemus if (m := qemu_rss_parts(p, vm_memory, image / "initrd.img"))]
    psp_rows = [m for p in mgr.vm_psps() if (m := memory_mib(p))]
    qemu, psp = mean_mib(qemu_rows), mean_mib(psp_rows)
    return {
        "measured": {"qemus": len(qemu_rows), "psps": len(psp_rows)},
        "vm_memory_mib": vm_memory,
        "qemu_mib": qemu,
        "qemu_rss_parts_mib": {
            k: round(statistics.fmean(r[k] for r in part_rows), 1) if part_rows else 0.0
            for k in ("guest_ram", "initrd_file", "other")
        },
        "psp_mib": psp,
        "per_keep_mib": {k: round(qemu[k] + psp[k], 1) for k in qemu},
    }


def bench_managers(
    cli: Cli, work: Path, image: Path, runs: int, pool: int, vm_memory: int | None, sim_keeps: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    from stockade.evidence.sim.chip import ensure_chip, sim_root

    chip = work / "chip"
    ensure_chip(chip)
    root = work / "sim-root.der"
    root.write_bytes(sim_root(chip))
    mem = ["--vm-memory", str(vm_memory)] if vm_memory is not None else []
    warm = Manager(
        work / "mgr-warm",
        chip,
        image,
        ["--backend", "vm", "--backend", "sim", "--vm-pool", str(pool), "--keep-pool", "0", *mem],
    )
    cold = Manager(work / "mgr-cold", chip, image, ["--backend", "vm", "--vm-pool", "0", *mem])
    try:
        warm.wait_up()
        cold.wait_up()
        warm.wait_pool_idle(pool)
        first_boot_s = time.monotonic() - warm.started  # from the manager's start
        memory = {
            "vm_pool": pool,
            "pooled_vm_keep": pooled_vm_keeps(warm, image),
            "idle_sim_keep": idle_sim_keeps(warm, sim_keeps),
        }
        vm_per, sim_per = memory["pooled_vm_keep"]["per_keep_mib"], memory["idle_sim_keep"]["per_keep_mib"]
        memory["ratio_vm_over_sim"] = {k: ratio(vm_per[k], sim_per[k]) for k in ("rss", "pss", "uss")}

        hello = [str(HELLO), "Bob"]
        common = ["deploy", "--allow-sim", "--sim-root", str(root), "-q"]
        vm = ["--backend", "vm", "--image", str(image)]
        samples: dict[str, list[dict[str, Any]]] = {"sim": [], "vm_warm": [], "vm_cold": []}
        refill_s: list[float] = []
        cli.env["STOCKADE_TOKEN"] = warm.token
        cli.run([*common, "--host", warm.url, *hello])  # warm-up (client imports, page cache)
        for _ in range(runs):
            warm.wait_pool_idle(pool)
            cli.env["STOCKADE_TOKEN"] = warm.token
            samples["vm_warm"].append(cli.run([*common, "--host", warm.url, *vm, *hello]))
            t0 = time.monotonic()
            warm.wait_pool_idle(pool)  # the replacement is booted: nothing competes below
            refill_s.append(time.monotonic() - t0 + samples["vm_warm"][-1]["wall_ms"] / 1000)
            cli.env["STOCKADE_TOKEN"] = cold.token
            samples["vm_cold"].append(cli.run([*common, "--host", cold.url, *vm, *hello]))
            cli.env["STOCKADE_TOKEN"] = warm.token
            samples["sim"].append(cli.run([*common, "--host", warm.url, *hello]))
        deploy: dict[str, Any] = {kind: summarise(s) for kind, s in samples.items()}
        for doc in deploy.values():
            doc.pop("boot_to_evidence_request_ms", None)  # remote: the client cannot see it
            doc["create_to_verified_ms"] = doc.pop("boot_to_verified_ms")
        deploy["pool_first_boot_s"] = round(first_boot_s, 1)
        deploy["pool_refill_s_p50"] = round(statistics.median(refill_s), 1) if refill_s else None
        deploy["ratios"] = {
            f"{a}_over_{b}_{key}": ratio(p50(deploy[a], key), p50(deploy[b], key))
            for a, b in (("vm_warm", "sim"), ("vm_cold", "sim"), ("vm_warm", "vm_cold"))
            for key in ("wall_ms", "create_to_verified_ms")
        }
        deploy["note"] = (
            "deploys are spaced: each waits until the pool is full and idle again; a warm deploy "
            "still shares the CPUs with the replacement boot its own create starts (TCG)"
        )
    finally:
        warm.stop()
        cold.stop()
    return memory, deploy


# == report =================================================================================================


def fmt(doc: dict[str, Any] | None, key: str) -> str:
    value = doc.get(key) if doc else None
    if not isinstance(value, dict):
        return "-"
    return f"{value['p50']:.0f} ({value['min']:.0f}-{value['max']:.0f})"


def table(title: str, rows: dict[str, dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    print(title)
    print(f"  {'':10s}" + "".join(f"{label:>22s}" for label, _ in columns))
    for kind, doc in rows.items():
        print(f"  {kind:10s}" + "".join(f"{fmt(doc, key):>22s}" for _, key in columns))


def print_report(r: dict[str, Any]) -> None:
    i, loc, m, d, k = r["image"], r["local"], r["memory"], r["deploy"], r["kvm"]
    print(
        f"VM Keeps: {r['date']}, {r['cpus']} CPUs, load {r['loadavg_start']} at start, {r['runs']} runs each"
    )
    print("\n1. image (stockade image build)")
    print(
        f"  kernel + initrd  {i['kernel_plus_initrd_mib']} MiB (kernel {i['kernel_bytes']} B, "
        f"initrd {i['initrd_bytes']} B, {i['initrd_members']} members; {i['kernel_package']})"
    )
    print(
        f"  build            fresh directory {i['build_cold_s']} s, again from the same inputs "
        f"{i['build_again_s']} s; byte-identical: {'yes' if i['identical'] else 'NO'}"
    )
    print(f"\n5. KVM: {'usable' if k['usable'] else 'not usable'}: {k['detail']}")
    local_rows = {kind: loc[kind] for kind in ("process", "vm_tcg", "vm_kvm") if kind in loc}
    table(
        "\n2. stockade run hello.wasm, local Keep; ms, p50 (min-max)",
        local_rows,
        [
            ("wall", "wall_ms"),
            ("spawn->boot", "spawn_to_boot_ms"),
            ("boot->evidence req", "boot_to_evidence_request_ms"),
            ("boot->verified", "boot_to_verified_ms"),
            ("verified->done", "verified_to_done_ms"),
        ],
    )
    for key in ("ratio_vm_tcg_over_process", "ratio_vm_kvm_over_process"):
        if key in loc:
            print(f"  {key}: " + ", ".join(f"{n} {v}x" for n, v in loc[key].items()))
    print(
        f"\n3. memory per idle Keep, MiB (VM pool of {m['vm_pool']}, {m['pooled_vm_keep']['vm_memory_mib']} MiB of guest RAM each)"
    )
    v, s = m["pooled_vm_keep"], m["idle_sim_keep"]
    for label, row in (
        ("pooled VM: QEMU", v["qemu_mib"]),
        ("pooled VM: its sim PSP", v["psp_mib"]),
        ("pooled VM: total", v["per_keep_mib"]),
        ("sim, fork server: Keep", s["keep_mib"]),
        ("sim, fork server: PSP", s["psp_mib"]),
        ("sim, fork server: total", s["per_keep_mib"]),
    ):
        print(f"  {label:24s} RSS {row['rss']:7.1f}  PSS {row['pss']:7.1f}  USS {row['uss']:7.1f}")
    q = v["qemu_rss_parts_mib"]
    print(
        f"  QEMU RSS: guest RAM {q['guest_ram']}, initrd file mapping {q['initrd_file']} (page cache, "
        f"shared by the image's QEMUs), QEMU and its TCG translation cache {q['other']}"
    )
    print("  ratio VM / sim: " + ", ".join(f"{n.upper()} {x}x" for n, x in m["ratio_vm_over_sim"].items()))
    table(
        "\n4. stockade deploy hello.wasm to a live manager; ms, p50 (min-max)",
        {kind: d[kind] for kind in ("sim", "vm_warm", "vm_cold")},
        [
            ("wall", "wall_ms"),
            ("spawn->create", "spawn_to_boot_ms"),
            ("create->verified", "create_to_verified_ms"),
            ("verified->done", "verified_to_done_ms"),
        ],
    )
    print("  ratios: " + ", ".join(f"{n} {x}x" for n, x in d["ratios"].items()))
    print(
        f"  pool: {m['vm_pool']} booted and idle {d['pool_first_boot_s']} s after the manager started; "
        f"a replacement booted and idle {d['pool_refill_s_p50']} s after a warm deploy began (p50)"
    )
    print(f"  note: {d['note']}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="measured runs of each kind")
    parser.add_argument("--vm-pool", type=int, default=2, help="warm pool size of the VM manager")
    parser.add_argument("--vm-memory", type=int, help="MiB per VM Keep (default: the manager's)")
    parser.add_argument("--sim-keeps", type=int, default=4, help="idle sim Keeps measured")
    parser.add_argument("--kvm-timeout", type=float, default=20.0, help="KVM probe limit, s (0: skip)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.runs < 1 or args.vm_pool < 1 or args.sim_keeps < 1:
        parser.error("--runs, --vm-pool and --sim-keeps must be at least 1")

    work = Path(tempfile.mkdtemp(prefix="stockade-bench-vm-"))
    env = {
        **os.environ,
        "STOCKADE_STATE_DIR": str(work / "client-state"),
        "STOCKADE_WARM": "0",
    }  # cold (ADR 0022)
    env.pop("STOCKADE_TOKEN", None)
    env.pop("STOCKADE_HOST", None)
    cli = Cli(work, env)
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "loadavg_start": round(os.getloadavg()[0], 2),
        "runs": args.runs,
    }
    try:
        result["image"], image = bench_image(work, env)
        result["kvm"] = probe_kvm(cli, image, args.kvm_timeout)
        result["local"] = bench_local(cli, image, args.runs, result["kvm"]["usable"])
        result["memory"], result["deploy"] = bench_managers(
            cli, work, image, args.runs, args.vm_pool, args.vm_memory, args.sim_keeps
        )
        result["loadavg_end"] = round(os.getloadavg()[0], 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
