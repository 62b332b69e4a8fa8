"""End-to-end deploy time against bare wasmtime-py, measured in one run.

Alternates the two so that machine noise hits both alike, and reports the
ratio of medians plus a per-step breakdown of the stockade run (from the
``--json`` timing of the client and the Keep), and the CPU time (user +
system) of each run's processes: on a 2-core machine the two interpreters of
a stockade run (client, Keep) and the loader's hashing share the cores, so
CPU time bounds how far overlapping them can go. Not a pass/fail gate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"

BARE = r"""
import sys, wasmtime
engine = wasmtime.Engine()
module = wasmtime.Module.from_file(engine, sys.argv[1])
linker = wasmtime.Linker(engine)
linker.define_wasi()
store = wasmtime.Store(engine)
wasi = wasmtime.WasiConfig()
wasi.argv = ["hello.wasm", *sys.argv[2:]]
wasi.inherit_stdout()
store.set_wasi(wasi)
instance = linker.instantiate(store, module)
try:
    instance.exports(store)["_start"](store)
except wasmtime.ExitTrap as e:
    sys.exit(e.code)
finally:
    store.close()
"""

STEPS = [
    ("Keep start (process, imports) + wait for hello", "keep_wait_hello"),
    ("evidence (sim PSP report)", "keep_evidence"),
    ("certificate with evidence", "keep_certificate"),
    ("TLS 1.3 handshake (Keep side)", "keep_handshake"),
    ("verification (client)", "verify"),
    ("transfer of the package (load request)", "transfer"),
    ("package check + measurement (Keep)", "keep_load"),
    ("identity: second report + client check", "identity"),
    ("compile (Keep)", "keep_compile"),
    ("run (Keep)", "keep_run"),
]


def timed(cmd: list[str], env: dict[str, str], cpu: list[float] | None = None) -> tuple[float, bytes]:
    """Wall ms and stdout of one run; appends its CPU ms (user + system of
    the process and the children it waited for, e.g. the Keep) to ``cpu``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=env, check=True)
    wall = (time.perf_counter() - t) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append(
            (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000,
        )
    return wall, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    state = tempfile.mkdtemp(prefix="stockade-bench-")
    env = {**os.environ, "STOCKADE_STATE_DIR": state}
    stockade = [sys.executable, "-m", "stockade", "run", "--allow-sim", "--json", str(HELLO), "--", "Alice"]
    bare = [sys.executable, "-c", BARE, str(HELLO), "Alice"]
    timed(stockade, env)  # creates the sim chip, warms the page cache
    timed(bare, env)

    bare_ms: list[float] = []
    e2e_ms: list[float] = []
    bare_cpu: list[float] = []
    e2e_cpu: list[float] = []
    steps: dict[str, list[float]] = {}
    for _ in range(args.runs):
        ms, out = timed(bare, env, bare_cpu)
        assert b"Hello, Alice!" in out
        bare_ms.append(ms)
        ms, out = timed(stockade, env, e2e_cpu)
        doc = json.loads(out)
        assert doc["stdout"].startswith("Hello, Alice!")
        e2e_ms.append(ms)
        for name, value in doc["timing_ms"].items():
            steps.setdefault(name, []).append(value)

    b, e = statistics.median(bare_ms), statistics.median(e2e_ms)
    result = {
        "runs": args.runs,
        "bare_wasmtime_ms_median": round(b, 1),
        "stockade_e2e_ms_median": round(e, 1),
        "ratio": round(e / b, 2),
        "target_ratio": 1.5,
        "bare_wasmtime_cpu_ms_median": round(statistics.median(bare_cpu), 1),
        "stockade_e2e_cpu_ms_median": round(statistics.median(e2e_cpu), 1),
        "steps_ms_median": {k: round(statistics.median(v), 2) for k, v in sorted(steps.items())},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"bare wasmtime-py, fresh process : {b:8.1f} ms (median of {args.runs})")
    print(f"stockade run --allow-sim (e2e)  : {e:8.1f} ms")
    print(
        f"ratio                           : {e / b:8.2f}x  (target <= 1.5x: {'met' if e / b <= 1.5 else 'NOT met'})"
    )
    print(
        f"CPU per run (user+sys, all processes): bare {result['bare_wasmtime_cpu_ms_median']:.1f} ms, "
        f"stockade {result['stockade_e2e_cpu_ms_median']:.1f} ms"
    )
    print("per-step medians of the stockade run:")
    for label, key in STEPS:
        if key in result["steps_ms_median"]:
            print(f"  {label:48s} {result['steps_ms_median'][key]:8.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
