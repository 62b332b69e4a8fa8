"""Start-up of the Python example (examples/python) in a sim Keep vs bare wasmtime-py, one run.

The module is CPython 3.12.0 for wasm32-wasip1 (26 MB, docs/adr/0019-python-workloads.md):
start-up is compile-bound. Measured, alternating so that noise hits all alike:

* Keep: ``stockade run --allow-sim --json PKG`` end to end in a fresh process,
  with the Keep's own compile and run times (``timing_ms``). "cold" is the
  first run of the session, "warm" the median of the later ones; the Keep's
  sealed compile cache (ADR 0023, a fresh one per bench run) is empty on
  the first run, so warm runs load the module from it.
* bare cold: a fresh Python process that compiles the module and runs it.
* bare warm: a fresh Python process that deserializes the module compiled
  once before (unauthenticated: what the Keep's sealed cache does after it
  authenticated the entry) and runs it.

Needs the interpreter: ``.venv/bin/python examples/python/get_python.py``.
Run: ``.venv/bin/python bench/bench_python.py [--runs 3] [--json]``. Not a gate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "python"
ARGS = ["--top", "3", "Alice", "Bob"]

BARE = r"""
import json, sys, time, wasmtime
cfg = json.loads(sys.argv[1])
t0 = time.perf_counter()
engine = wasmtime.Engine()
if cfg["serialized"]:
    module = wasmtime.Module.deserialize_file(engine, cfg["serialized"])
else:
    module = wasmtime.Module.from_file(engine, cfg["wasm"])
t1 = time.perf_counter()
linker = wasmtime.Linker(engine)
linker.define_wasi()
store = wasmtime.Store(engine)
wasi = wasmtime.WasiConfig()
wasi.argv = ["main.wasm", "-I", "-B", "/app/main.py", *cfg["args"]]
wasi.stdin_file = cfg["stdin"]
wasi.stdout_file = cfg["stdout"]
wasi.preopen_dir(cfg["root"], "/", False)
wasi.preopen_dir(cfg["secrets"], "/secrets", False)
store.set_wasi(wasi)
code = 0
try:
    linker.instantiate(store, module).exports(store)["_start"](store)
except wasmtime.ExitTrap as exc:
    code = exc.code
print(json.dumps({"exit_code": code, "load_ms": (t1 - t0) * 1000, "run_ms": (time.perf_counter() - t1) * 1000}))
"""

SERIALIZE = r"""
import sys, wasmtime
engine = wasmtime.Engine()
open(sys.argv[2], "wb").write(wasmtime.Module.from_file(engine, sys.argv[1]).serialize())
"""


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, bytes]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=env, check=True)
    return (time.perf_counter() - t) * 1000, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="warm runs of each kind (default 3)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    wasm = EXAMPLE / "python.wasm"
    pin = (EXAMPLE / "python.wasm.sha256").read_text().split()[0]
    if not wasm.is_file() or hashlib.sha256(wasm.read_bytes()).hexdigest() != pin:
        print("bench_python: run .venv/bin/python examples/python/get_python.py first", file=sys.stderr)
        return 1

    work = Path(tempfile.mkdtemp(prefix="stockade-bench-python-"))
    try:
        # Cold Keeps (ADR 0022); a fresh sealed compile cache (ADR 0023): the first run compiles, later runs hit it.
        env = {
            **os.environ,
            "STOCKADE_STATE_DIR": str(work / "state"),
            "STOCKADE_WARM": "0",
            "XDG_CACHE_HOME": str(work / "cache"),
        }
        pkg = work / "python-example.stockade"
        subprocess.run(
            [sys.executable, "-m", "stockade", "package", "build", str(EXAMPLE), "-o", str(pkg)],
            capture_output=True, env=env, check=True,
        )  # fmt: skip
        (work / "key.bin").write_bytes(os.urandom(32))
        shutil.copy(ROOT / "examples" / "wordcount" / "sample.txt", work / "stdin.txt")
        (work / "root").mkdir()
        shutil.copytree(EXAMPLE / "app", work / "root" / "app")
        (work / "secrets").mkdir()
        shutil.copy(work / "key.bin", work / "secrets" / "signing_key")
        blob = work / "python.cwasm"
        subprocess.run([sys.executable, "-c", SERIALIZE, str(wasm), str(blob)], env=env, check=True)
        # The sim chip is created by the first stockade command (package build does not): do it
        # with hello so that the cold Keep run below does not pay for it.
        hello = ROOT / "examples" / "hello" / "hello.wasm"
        subprocess.run([sys.executable, "-m", "stockade", "run", "--allow-sim", "-q", str(hello)],
                       capture_output=True, env=env, check=True)  # fmt: skip

        keep_cmd = [
            sys.executable, "-m", "stockade", "run", "--allow-sim", "--json", str(pkg),
            "--stdin", str(work / "stdin.txt"), "--secret", f"signing_key=@{work / 'key.bin'}", "--", *ARGS,
        ]  # fmt: skip

        def bare(serialized: bool) -> tuple[float, dict[str, float]]:
            cfg = {
                "wasm": str(wasm),
                "serialized": str(blob) if serialized else "",
                "args": ARGS,
                "stdin": str(work / "stdin.txt"),
                "stdout": str(work / "bare.out"),
                "root": str(work / "root"),
                "secrets": str(work / "secrets"),
            }
            ms, out = timed([sys.executable, "-c", BARE, json.dumps(cfg)], env)
            doc = json.loads(out)
            assert doc["exit_code"] == 0
            return ms, doc

        def keep() -> tuple[float, dict[str, float]]:
            ms, out = timed(keep_cmd, env)
            doc = json.loads(out)
            assert doc["exit_code"] == 0 and doc["stdout"].startswith("Hello, Alice")
            return ms, doc["timing_ms"]

        samples: dict[str, list[float]] = {}

        def add(name: str, value: float) -> None:
            samples.setdefault(name, []).append(value)

        ms, timing = keep()  # cold: first Keep run of this state directory and package
        cold = {
            "keep_e2e_ms": ms,
            "keep_compile_ms": timing["keep_compile"],
            "keep_run_ms": timing["keep_run"],
        }
        ms, doc = bare(False)
        cold.update(bare_cold_e2e_ms=ms, bare_compile_ms=doc["load_ms"], bare_run_ms=doc["run_ms"])
        for _ in range(args.runs):
            ms, timing = keep()
            add("keep_e2e_ms", ms)
            add("keep_compile_ms", timing["keep_compile"])
            add("keep_run_ms", timing["keep_run"])
            ms, doc = bare(False)
            add("bare_cold_e2e_ms", ms)
            add("bare_compile_ms", doc["load_ms"])
            ms, doc = bare(True)
            add("bare_warm_e2e_ms", ms)
            add("bare_deserialize_ms", doc["load_ms"])
            add("bare_warm_run_ms", doc["run_ms"])
        result = {
            "module_bytes": wasm.stat().st_size,
            "package_bytes": pkg.stat().st_size,
            "runs": args.runs,
            "first": {k: round(v, 1) for k, v in cold.items()},
            "median_of_later": {k: round(statistics.median(v), 1) for k, v in sorted(samples.items())},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    first, later = result["first"], result["median_of_later"]
    assert isinstance(first, dict) and isinstance(later, dict)
    print(f"module {result['module_bytes']} bytes, package {result['package_bytes']} bytes")
    print(f"stockade run (Keep), first        : {first['keep_e2e_ms']:8.0f} ms "
          f"(compile {first['keep_compile_ms']:.0f}, run {first['keep_run_ms']:.0f})")  # fmt: skip
    print(f"stockade run (Keep), later median : {later['keep_e2e_ms']:8.0f} ms "
          f"(compile {later['keep_compile_ms']:.0f}, run {later['keep_run_ms']:.0f})")  # fmt: skip
    print(f"bare wasmtime-py, compile + run   : {later['bare_cold_e2e_ms']:8.0f} ms "
          f"(compile {later['bare_compile_ms']:.0f})")  # fmt: skip
    print(f"bare wasmtime-py, deserialize+run : {later['bare_warm_e2e_ms']:8.0f} ms "
          f"(deserialize {later['bare_deserialize_ms']:.0f}, run {later['bare_warm_run_ms']:.0f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
