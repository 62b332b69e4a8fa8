"""Start-up of each example workload inside a sim Keep against bare
wasmtime-py, in one run (docs/languages.md).

For every example module: its size; "cold", the first run of that module
in this run (fresh processes; nothing of it in any cache of stockade's, but
the file system's page cache is not dropped); "warm", the median of the
next runs. The Keep side is ``stockade run --allow-sim --json`` end to end
(its compile and run steps from the timing it reports); the baseline is the
same module with the same arguments and stdin in a fresh Python process on
bare wasmtime-py. The two alternate, so machine noise hits both alike. Not
a pass/fail gate. Add a workload to WORKLOADS to measure another language.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# name -> (language, module, workload arguments, stdin file or None)
WORKLOADS: dict[str, tuple[str, Path, list[str], Path | None]] = {
    "hello": ("C", EXAMPLES / "hello" / "hello.wasm", ["Alice"], None),
    "wordcount": (
        "Rust",
        EXAMPLES / "wordcount" / "wordcount.wasm",
        [],
        EXAMPLES / "wordcount" / "sample.txt",
    ),
    "csvstat": ("C++", EXAMPLES / "csvstat" / "csvstat.wasm", [], EXAMPLES / "csvstat" / "sample.csv"),
}

BARE = r"""
import sys, wasmtime
engine = wasmtime.Engine()
module = wasmtime.Module.from_file(engine, sys.argv[1])
linker = wasmtime.Linker(engine)
linker.define_wasi()
store = wasmtime.Store(engine)
wasi = wasmtime.WasiConfig()
wasi.argv = ["workload", *sys.argv[3:]]
wasi.inherit_stdout()
if sys.argv[2]:
    wasi.stdin_file = sys.argv[2]
store.set_wasi(wasi)
instance = linker.instantiate(store, module)
try:
    instance.exports(store)["_start"](store)
except wasmtime.ExitTrap as e:
    sys.exit(e.code)
finally:
    store.close()
"""


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, bytes]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=env, check=True, timeout=300)
    return (time.perf_counter() - t) * 1000, proc.stdout


def measure(name: str, runs: int, env: dict[str, str]) -> dict[str, object]:
    lang, module, argv, stdin = WORKLOADS[name]
    stockade = [sys.executable, "-m", "stockade", "run", "--allow-sim", "--json"]
    if stdin is not None:
        stockade += ["--stdin", str(stdin)]
    stockade += [str(module), "--", *argv]
    bare = [sys.executable, "-c", BARE, str(module), str(stdin or ""), *argv]
    bare_ms: list[float] = []
    keep_ms: list[float] = []
    steps: dict[str, list[float]] = {}
    for _ in range(runs + 1):
        ms, bare_out = timed(bare, env)
        bare_ms.append(ms)
        ms, out = timed(stockade, env)
        doc = json.loads(out)
        assert doc["stdout"].encode() == bare_out, f"{name}: the Keep and bare wasmtime-py disagree"
        keep_ms.append(ms)
        for step, value in doc["timing_ms"].items():
            steps.setdefault(step, []).append(value)
    return {
        "language": lang,
        "module_bytes": module.stat().st_size,
        "bare_cold_ms": round(bare_ms[0], 1),
        "bare_warm_ms": round(statistics.median(bare_ms[1:]), 1),
        "keep_cold_ms": round(keep_ms[0], 1),
        "keep_warm_ms": round(statistics.median(keep_ms[1:]), 1),
        "keep_compile_warm_ms": round(statistics.median(steps.get("keep_compile", [0.0])[1:]), 1),
        "keep_run_warm_ms": round(statistics.median(steps.get("keep_run", [0.0])[1:]), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="warm runs per workload (after the cold one)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("workloads", nargs="*", choices=[[], *WORKLOADS], default=[])
    args = parser.parse_args()

    state = tempfile.mkdtemp(prefix="stockade-bench-")
    # Cold Keeps (ADR 0022) and a fresh sealed compile cache (ADR 0023): "cold" is a compile, "warm" a cache hit.
    env = {
        **os.environ,
        "STOCKADE_STATE_DIR": state,
        "STOCKADE_WARM": "0",
        "XDG_CACHE_HOME": os.path.join(state, "cache"),
    }
    # Creates the sim chip and imports everything once, with a module that is
    # not measured, so that "cold" is the workload's own first run.
    subprocess.run(
        [sys.executable, "-m", "stockade", "run", "--allow-sim", "--quiet", str(WORKLOADS["hello"][1])],
        env=env,
        capture_output=True,
        check=True,
    )
    results = {name: measure(name, args.runs, env) for name in (args.workloads or WORKLOADS)}
    if args.json:
        print(json.dumps({"runs": args.runs, "results": results}, indent=2))
        return 0
    print(
        f"{'workload':10} {'lang':5} {'bytes':>8} {'bare cold':>10} {'bare warm':>10} "
        f"{'Keep cold':>10} {'Keep warm':>10} {'compile':>8} {'run':>6}  (ms; warm: median of {args.runs})"
    )
    for name, r in results.items():
        print(
            f"{name:10} {r['language']!s:5} {r['module_bytes']:>8} {r['bare_cold_ms']:>10} {r['bare_warm_ms']:>10} "
            f"{r['keep_cold_ms']:>10} {r['keep_warm_ms']:>10} {r['keep_compile_warm_ms']:>8} {r['keep_run_warm_ms']:>6}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
