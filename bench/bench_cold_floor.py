"""A lower bound for a cold ``stockade run`` on this machine, against bare
wasmtime-py, measured in one run (issue 18, item 1).

A cold run must, by design (ADR 0013, docs/architecture.md), do at least
what bare wasmtime-py does (an interpreter, ``import wasmtime``, compile,
run) plus:

* a second interpreter: the client and the Keep are separate processes;
* the launch measurement: SHA-256 of every byte of every file the Keep
  loads (the measured set of ``stockade.measure.keep_modules``), on every
  cold run, before the sim PSP signs anything;
* the Keep's attested-TLS stack: cryptography's X.509 and pyOpenSSL;
* the client's verifier: at the least, cryptography's X.509 and CBOR.

This bench measures each of these alone, in fresh processes, alternating
with the bare run, and adds their CPU. On a machine with N cores no
schedule can finish that CPU in less than CPU / N of wall time, and the
Keep cannot answer before its interpreter, its imports and the
measurement are done, so::

    floor = max(sum of CPU / cores, the Keep's critical chain)

is a lower bound of the cold run's wall time that leaves out everything
else the run does (CLI parsing, the sim PSP, key generation, the TLS
handshake, the verification itself, process exits). The ratio floor / bare
says how close any implementation of this design can come to the 1.5x
goal here. Not a pass/fail gate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_e2e import BARE, HELLO  # noqa: E402

#: Only the hashing of the measured files, in the Keep runtime's own way
#: (stockade.measure.launch: two threads, hashlib.file_digest); the paths
#: are resolved first and not timed, so this is the bytes alone.
HASH = r"""
import resource, sys, time
from stockade.measure import launch
paths = [str(f.path) for f in launch.measured_files() if f.path is not None]
launch.clear_cache()
r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()
launch._hash_all(paths, 2)
r1 = resource.getrusage(resource.RUSAGE_SELF); t1 = time.perf_counter()
cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) * 1e3
size = sum(__import__("os").path.getsize(p) for p in paths)
print(f"{(t1 - t0) * 1e3:.3f} {cpu:.3f} {len(paths)} {size}")
"""

#: Imports the Keep needs beyond bare wasmtime-py (attested TLS, CBOR).
KEEP_STACK = "import cryptography.x509, OpenSSL.SSL, cbor2"
#: The least the client imports to verify evidence at all: X.509 and CBOR
#: (not even stockade's own verifier code: this is a floor).
CLIENT_STACK = "import cryptography.x509, cbor2"


def run(cmd: list[str]) -> tuple[float, float, bytes]:
    """Wall ms and CPU ms (user + system of the child) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, check=True)
    wall = (time.perf_counter() - t0) * 1e3
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1e3
    return wall, cpu, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    py = sys.executable
    cores = len(os.sched_getaffinity(0))
    lines = {
        "bare": [py, "-c", BARE, str(HELLO), "Alice"],
        "interpreter": [py, "-I", "-c", "pass"],
        "keep_stack": [py, "-I", "-c", KEEP_STACK],
        "client_stack": [py, "-c", CLIENT_STACK],
    }
    wall: dict[str, list[float]] = {k: [] for k in [*lines, "hash"]}
    cpu: dict[str, list[float]] = {k: [] for k in [*lines, "hash"]}
    files = size = 0
    for cmd in lines.values():  # warm the page cache
        run(cmd)
    for _ in range(args.runs):
        for name, cmd in lines.items():
            w, c, _ = run(cmd)
            wall[name].append(w)
            cpu[name].append(c)
        _, _, out = run([py, "-c", HASH])
        w_s, c_s, n_s, size_s = out.split()
        wall["hash"].append(float(w_s))
        cpu["hash"].append(float(c_s))
        files, size = int(n_s), int(size_s)
    med = {k: statistics.median(v) for k, v in wall.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    interp = cmed["interpreter"]
    # Beyond an interpreter each: what the stacks add.
    keep_extra = max(cmed["keep_stack"] - interp, 0.0)
    client_extra = max(cmed["client_stack"] - interp, 0.0)
    total_cpu = cmed["bare"] + interp + keep_extra + client_extra + cmed["hash"]
    # The Keep's chain: bare's work (interpreter, wasmtime, compile, run) plus its TLS
    # stack, in sequence; the hashing may overlap it on the other core(s).
    chain = med["bare"] + keep_extra
    floor = max(total_cpu / cores, chain)
    result = {
        "runs": args.runs,
        "cores": cores,
        "bare_ms": round(med["bare"], 1),
        "bare_cpu_ms": round(cmed["bare"], 1),
        "interpreter_cpu_ms": round(interp, 1),
        "keep_stack_extra_cpu_ms": round(keep_extra, 1),
        "client_stack_extra_cpu_ms": round(client_extra, 1),
        "measurement_hash_cpu_ms": round(cmed["hash"], 1),
        "measurement_hash_wall_ms": round(med["hash"], 1),
        "measured_files": files,
        "measured_bytes": size,
        "floor_ms": round(floor, 1),
        "floor_ratio": round(floor / med["bare"], 2),
        "target_ratio": 1.5,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"bare wasmtime-py, fresh process   : {med['bare']:7.1f} ms wall, {cmed['bare']:6.1f} ms CPU")
    print(f"second interpreter (python -I)    :            {interp:6.1f} ms CPU")
    print(f"Keep's TLS stack beyond it        :            {keep_extra:6.1f} ms CPU")
    print(f"client's verifier stack beyond it :            {client_extra:6.1f} ms CPU")
    print(
        f"launch measurement, hashing only  : {med['hash']:7.1f} ms wall, {cmed['hash']:6.1f} ms CPU "
        f"({files} files, {size / 1e6:.1f} MB)"
    )
    print(
        f"sum of CPU / {cores} cores           : {total_cpu / cores:7.1f} ms; the Keep's chain {chain:.1f} ms"
    )
    print(
        f"floor / bare                      : {floor / med['bare']:7.2f}x "
        f"(goal 1.5x = {1.5 * med['bare']:.1f} ms)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
