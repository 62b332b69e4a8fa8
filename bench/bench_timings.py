"""Per-step latency of `stockade run` on each local backend, in one run.

Runs ``stockade run --allow-sim --json examples/hello/hello.wasm`` a few
times per backend (sim, sim-tdx and, where QEMU and the Keep image's inputs
are there, vm) in a fresh state directory, alternating the backends so that
machine noise hits them alike, and prints the median of every phase and step
the run reports (``timing_ms``: the client's phases, its steps, and the
Keep's own steps; what ``--timings`` prints for one run). The first run of
each backend (chip creation, image build) is a warm-up and not counted.
Report only: absolute times depend on the machine; compare backends within
one run. bench/README.md publishes a table from it.

    .venv/bin/python bench/bench_timings.py [--runs 5] [--backends sim,sim-tdx,vm] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"
#: Rows of the table, in deploy order (absent ones are skipped).
ROWS = (
    "phase_booting",
    "phase_attesting",
    "phase_verifying",
    "phase_loading",
    "phase_running",
    "keep_wait_hello",
    "keep_evidence",
    "keep_certificate",
    "keep_handshake",
    "attest_and_handshake",
    "verify",
    "transfer",
    "keep_load",
    "identity",
    "keep_identity",
    "keep_compile",
    "keep_run",
    "run",
)


def vm_available() -> bool:
    return (
        shutil.which("qemu-system-x86_64") is not None
        and any(Path("/boot").glob("vmlinuz-*-cloud-amd64"))
        and Path("/bin/busybox").is_file()
    )


def one_run(backend: str, state: Path) -> dict[str, float]:
    argv = [sys.executable, "-m", "stockade", "run", "--allow-sim", "--json", "--backend", backend]
    if backend == "vm":
        argv += ["--accel", "tcg"]
    proc = subprocess.run(
        [*argv, str(HELLO), "Bench"],
        capture_output=True,
        text=True,
        timeout=600,
        # cold Keeps (ADR 0022), a fresh compile cache per state (ADR 0023)
        env={
            **os.environ,
            "STOCKADE_STATE_DIR": str(state),
            "STOCKADE_WARM": "0",
            "XDG_CACHE_HOME": str(state / "cache"),
        },
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(
            f"bench_timings: {backend} run failed ({proc.returncode}): {proc.stderr.strip()[-500:]}"
        )
    timing: dict[str, float] = json.loads(proc.stdout)["timing_ms"]
    return timing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="counted runs per backend (after one warm-up)")
    parser.add_argument(
        "--backends", default="", help="comma-separated (default: sim, sim-tdx, and vm if it can run)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b] or [
        "sim",
        "sim-tdx",
        *(["vm"] if vm_available() else []),
    ]
    runs: dict[str, list[dict[str, float]]] = {b: [] for b in backends}
    with tempfile.TemporaryDirectory(prefix="stockade-bench-timings-") as tmp:
        state = Path(tmp)
        for backend in backends:
            one_run(backend, state)  # warm-up: chips, Keep image
        for _ in range(args.runs):
            for backend in backends:
                runs[backend].append(one_run(backend, state))
    medians = {
        b: {
            row: round(statistics.median(r[row] for r in rs if row in r), 1)
            for row in ROWS
            if any(row in r for r in rs)
        }
        for b, rs in runs.items()
    }
    if args.json:
        print(json.dumps({"runs": args.runs, "median_ms": medians}, indent=2))
        return 0
    print(f"median of {args.runs} run(s), ms | " + " | ".join(backends))
    print("|".join(["---"] * (len(backends) + 1)))
    for row in ROWS:
        if any(row in medians[b] for b in backends):
            cells = [f"{medians[b][row]:.1f}" if row in medians[b] else "" for b in backends]
            print(f"`{row}` | " + " | ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
