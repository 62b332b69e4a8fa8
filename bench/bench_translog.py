"""The transparency log (stockade.translog) as it grows: append throughput
(one entry per append, each made durable and given a signed tree head),
inclusion and consistency proof sizes, proof verification and log open
time, at several log sizes.

Baseline, same run: appending the same records to a plain file with one
fsync per append (what durability costs at the least); the ratio is the
log's append time over it. Proof sizes are exact (hashes * 32 bytes).

Run: .venv/bin/python bench/bench_translog.py [--sizes 100,1000,10000] [--appends 100] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from stockade.translog import RefusalDigestEntry, TransparencyLog, encode_entry, verify_inclusion
from stockade.translog.store import record


def entry(i: int) -> RefusalDigestEntry:
    return RefusalDigestEntry(hashlib.sha256(i.to_bytes(8, "big")).digest())


def baseline_appends(directory: Path, n: int) -> float:
    """Seconds per append: one record written and fsync'd, twice (entry and head files)."""
    data = [record(encode_entry(entry(i))) for i in range(n)]
    path = directory / "plain"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        t0 = time.perf_counter()
        for rec in data:
            os.write(fd, rec)
            os.fsync(fd)
            os.write(fd, rec + rec)  # a tree head record is ~2x an entry record
            os.fsync(fd)
        return (time.perf_counter() - t0) / n
    finally:
        os.close(fd)


def measure(size: int, appends: int, root: Path) -> dict[str, Any]:
    d = root / f"log-{size}"
    with TransparencyLog.create(d) as log:
        log.append([entry(i) for i in range(size)])
        t0 = time.perf_counter()
        for i in range(appends):
            log.append([entry(size + i)])
        per_append = (time.perf_counter() - t0) / appends
        n = log.size
        inclusion = [len(log.inclusion_proof(i).path) for i in range(0, n, max(1, n // 64))]
        consistency = len(log.consistency_proof(max(1, n // 2) - 1).path)
        proof, head, leaf = log.inclusion_proof(n // 3), log.tree_head, log.entry(n // 3)
        key = [log.key]
        t0 = time.perf_counter()
        for _ in range(200):
            verify_inclusion(leaf, proof, head, key)
        verify_us = (time.perf_counter() - t0) / 200 * 1e6
    t0 = time.perf_counter()
    with TransparencyLog.open(d, writable=False) as log:
        pass
    open_ms = (time.perf_counter() - t0) * 1e3
    return {
        "size": n,
        "append_ms": per_append * 1e3,
        "inclusion_hashes_max": max(inclusion),
        "inclusion_bytes_max": max(inclusion) * 32,
        "consistency_hashes_half": consistency,
        "verify_inclusion_us": verify_us,
        "open_ms": open_ms,
        "entries_file_bytes": (d / "entries").stat().st_size,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--appends", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        baseline_ms = baseline_appends(root, args.appends) * 1e3
        rows = [measure(s, args.appends, root) for s in sizes]
    ratio = statistics.median(r["append_ms"] for r in rows) / baseline_ms
    result = {
        "baseline_plain_fsync_append_ms": baseline_ms,
        "ratio_append_over_baseline": ratio,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"baseline (plain file, 2 fsync'd writes per append): {baseline_ms:.2f} ms per append")
    print("size    append ms  ratio  incl. hashes(bytes)  cons. hashes  verify us  open ms")
    for r in rows:
        print(
            f"{r['size']:<7} {r['append_ms']:9.2f}  {r['append_ms'] / baseline_ms:5.2f}  "
            f"{r['inclusion_hashes_max']:5d} ({r['inclusion_bytes_max']:4d})       {r['consistency_hashes_half']:5d}"
            f"  {r['verify_inclusion_us']:9.0f}  {r['open_ms']:7.1f}"
        )


if __name__ == "__main__":
    main()
