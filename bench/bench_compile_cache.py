"""The Keep's compile step, cold vs warm, with the sealed compile cache (ADR 0023).

The module is the pinned 26 MB CPython interpreter of examples/python
(``python.wasm.sha256``; fetched by ``examples/python/get_python.py``) unless
``--wasm`` names another. Each measurement is a fresh Python process that
runs the Keep's own compile step (``stockade.keep.runner.Runner._compile``,
the code a Keep runs, with a CompileCache in a fresh directory and a random
32-byte key standing in for the platform's sealing key):

* cold: an empty cache: wasmtime compiles the module (``compile``); sealing
  and writing the entry, which a Keep does after its session, is reported
  apart (``store``);
* warm: the entry the cold run wrote: read, authenticate (AES-256-GCM) and
  ``Module.deserialize`` (``compile``, of which ``unseal`` is the read and
  the authentication).

Cold and warm runs alternate so that machine noise hits both alike; the
ratio is median cold / median warm, same run. Target (issue 18): >= 10x on
a module of >= 5 MB.

    .venv/bin/python bench/bench_compile_cache.py [--runs 3] [--wasm PATH] [--json]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON_EXAMPLE = ROOT / "examples" / "python"

STEP = r"""
import hashlib, json, sys, time
from pathlib import Path
cfg = json.loads(sys.argv[1])
from stockade.keep.compilecache import CompileCache
from stockade.keep.runner import Runner, make_engine
from stockade.keep.sandbox import Sandbox
wasm = Path(cfg["wasm"]).read_bytes()
cache = CompileCache(Path(cfg["cache"]), bytes.fromhex(cfg["key"]))
runner = Runner(make_engine(), lambda fd, data: None, Sandbox(Path("/nonexistent"), private=False), cache)
digest = hashlib.sha256(wasm).digest()
timing = {}
load = cache.load
def timed_load(key):
    t = time.perf_counter()
    try:
        return load(key)
    finally:
        timing["unseal"] = int((time.perf_counter() - t) * 1e6)
cache.load = timed_load
from stockade.keep.loading import runtime_name
runtime_name()  # as in a Keep: its preload thread names the runtime while it waits for its client
t0 = time.perf_counter()
runner._compile(wasm, digest, False, timing)
timing["compile"] = int((time.perf_counter() - t0) * 1e6)
took = runner.store_compiled()  # the Keep does this after its session
if took is not None:
    timing["store"] = int(took * 1e6)
print(json.dumps(timing))
"""


def large_module() -> Path:
    """The pinned CPython module, put in place by get_python.py."""
    dest = PYTHON_EXAMPLE / "python.wasm"
    subprocess.run([sys.executable, str(PYTHON_EXAMPLE / "get_python.py"), str(dest)], check=True)
    return dest


def step(wasm: Path, cache: Path, key: str) -> dict[str, float]:
    cfg = json.dumps({"wasm": str(wasm), "cache": str(cache), "key": key})
    proc = subprocess.run([sys.executable, "-c", STEP, cfg], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench_compile_cache: the compile step failed: {proc.stderr.strip()[-500:]}")
    return {k: v / 1000 for k, v in json.loads(proc.stdout).items()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="cold and warm runs each (default 3)")
    parser.add_argument("--wasm", type=Path, help="module to compile (default: the pinned CPython module)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    wasm = args.wasm or large_module()
    size = wasm.stat().st_size
    work = Path(tempfile.mkdtemp(prefix="bench-compile-cache-"))
    cold: list[dict[str, float]] = []
    warm: list[dict[str, float]] = []
    try:
        for i in range(args.runs):
            cache, key = work / f"cache-{i}", os.urandom(32).hex()
            first = step(wasm, cache, key)
            if first.get("compile_cached") != 0:
                raise SystemExit("bench_compile_cache: the cold run was not a miss")
            cold.append(first)
            again = step(wasm, cache, key)
            if again.get("compile_cached") != 1 / 1000:
                raise SystemExit("bench_compile_cache: the warm run was not a hit")
            warm.append(again)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def median(rows: list[dict[str, float]], name: str) -> float:
        return statistics.median(r.get(name, 0.0) for r in rows)

    doc = {
        "module": str(wasm.relative_to(ROOT) if wasm.is_relative_to(ROOT) else wasm),
        "module_bytes": size,
        "module_sha256": hashlib.sha256(wasm.read_bytes()).hexdigest(),
        "runs": args.runs,
        "cold_compile_ms_median": round(median(cold, "compile"), 1),
        "cold_store_ms_median": round(median(cold, "store"), 1),
        "warm_compile_ms_median": round(median(warm, "compile"), 1),
        "warm_unseal_ms_median": round(median(warm, "unseal"), 1),
        "ratio": round(median(cold, "compile") / median(warm, "compile"), 1),
        "target_ratio": 10.0,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"module: {doc['module']} ({size / 1e6:.1f} MB), {args.runs} run(s) each, medians")
        print(
            f"  cold compile      {doc['cold_compile_ms_median']:>9.1f} ms  (+ {doc['cold_store_ms_median']} ms to seal and store, after the session)"
        )
        print(
            f"  warm compile      {doc['warm_compile_ms_median']:>9.1f} ms  (of which {doc['warm_unseal_ms_median']} ms read + authenticate)"
        )
        print(f"  cold / warm       {doc['ratio']:>9.1f}x  (target >= {doc['target_ratio']}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
