"""Hostile WebAssembly modules against the Keep's limits (issue 13, items 2
and 3): each runs through the real ``stockade run`` (a sim Keep process) and
must end with the limit's exit code and a clear message, with the Keep's
peak RSS (VmHWM, which the Keep writes to its host-side log as it ends)
bounded by the limit plus the runtime's own footprint.

Modules are built from WAT at test time with ``wasmtime.wat2wasm``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

#: The Keep runtime's own peak RSS without a workload (Python, wasmtime,
#: OpenSSL; about 60 MiB on the CI machine) plus headroom: a hostile module
#: may add its limit on top of this, never more.
RUNTIME_RSS = 100 << 20
MiB = 1 << 20


@pytest.fixture
def module(tmp_path: Path) -> Callable[[str, str], Path]:
    import wasmtime

    def build(name: str, wat: str) -> Path:
        path = tmp_path / f"{name}.wasm"
        path.write_bytes(wasmtime.wat2wasm(wat))
        return path

    return build


@pytest.fixture
def peak_rss(state_dir: Path) -> Callable[[], int]:
    """Peak RSS in bytes of the Keep started since the fixture was made."""
    logs = state_dir / "logs"
    logs.mkdir(exist_ok=True)
    before = set(logs.glob("keep-*.log"))

    def read() -> int:
        new = sorted(set(logs.glob("keep-*.log")) - before)
        assert len(new) == 1, f"expected one new Keep log, found {new}"
        found = re.findall(r"peak RSS (\d+) KiB", new[0].read_text())
        assert found, "the Keep logged no peak RSS"
        return int(found[-1]) * 1024

    return read


def problem(proc) -> str:
    text = proc.stderr.decode(errors="replace")
    assert "Traceback" not in text
    return text


def run(stockade, *args: str, timeout: float = 120):
    return stockade("run", "--allow-sim", "-q", *args, timeout=timeout)


# -- features a Keep does not enable: refused at compile time, by name

REFUSED = {
    "multi-memory": ('(module (memory 1) (memory 1) (func (export "_start")))', "multi-memory"),
    "memory64": ('(module (memory i64 1) (func (export "_start")))', "memory64"),
    "shared-memory": (
        '(module (memory 1 2 shared) (func (export "_start")))',
        "threads (shared memory and atomics)",
    ),
    "atomics": (
        '(module (memory 1) (func (export "_start")'
        " (drop (i32.atomic.rmw.add (i32.const 0) (i32.const 1)))))",
        "threads (shared memory and atomics)",
    ),
    "externref-table": (
        '(module (table 0 externref) (func (export "_start")'
        " (drop (table.grow 0 (ref.null extern) (i32.const 100000000)))))",
        "GC (externref and other GC references)",
    ),
    "exceptions": ('(module (tag) (func (export "_start")))', "exception handling"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_disabled_feature_is_refused_by_name(stockade, module, name: str) -> None:
    wat, feature = REFUSED[name]
    proc = run(stockade, "--memory", "32M", str(module(name, wat)))
    assert proc.returncode == 117, proc.stderr
    text = problem(proc)
    assert f"uses the WebAssembly {feature} feature, which a Keep does not enable" in text


# -- tables: bounded per table and in number

TABLE_GROWTH = """
(module
  (table (export "table") 0 funcref)
  (func (export "_start")
    (loop $grow
      (br_if $grow
        (i32.ne (table.grow 0 (ref.null func) (i32.const 4096)) (i32.const -1))))
    unreachable))
"""

HIDDEN_TABLE_LEAP = """
(module
  (table 0 funcref)
  (func (export "_start")
    (if (i32.eq (table.grow 0 (ref.null func) (i32.const 100000000)) (i32.const -1))
      (then unreachable))))
"""


def test_table_growth_stops_at_the_memory_limit(stockade, module, peak_rss) -> None:
    proc = run(stockade, "--memory", "32M", str(module("tablegrow", TABLE_GROWTH)))
    assert proc.returncode == 116, proc.stderr
    text = problem(proc)
    assert "workload failed at its memory limit (a table of" in text
    rss = peak_rss()
    assert rss < RUNTIME_RSS + 32 * MiB, f"peak RSS {rss >> 20} MiB"


def test_hidden_table_leap_is_bounded(stockade, module, peak_rss) -> None:
    """One grow far past the limit of a table the host API cannot see: it
    fails (-1), the memory stays bounded; the module's own trap is reported
    as a trap (the limit cannot be seen as the cause: docs/limitations.md)."""
    proc = run(stockade, "--memory", "32M", str(module("tableleap", HIDDEN_TABLE_LEAP)))
    assert proc.returncode == 134, proc.stderr
    assert "unreachable" in problem(proc)
    rss = peak_rss()
    assert rss < RUNTIME_RSS + 32 * MiB, f"peak RSS {rss >> 20} MiB"


def test_initial_table_over_the_limit(stockade, module) -> None:
    proc = run(
        stockade,
        "--memory",
        "16M",
        str(module("bigtable", '(module (table 50000000 funcref) (func (export "_start")))')),
    )
    assert proc.returncode == 116, proc.stderr
    assert "the module's initial table is larger than" in problem(proc)


def test_too_many_tables(stockade, module) -> None:
    wat = "(module " + "(table 0 funcref) " * 5 + '(func (export "_start")))'
    proc = run(stockade, str(module("tables", wat)))
    assert proc.returncode == 116, proc.stderr
    assert "exceeds the Keep's limits on tables, memories and instances" in problem(proc)


def test_linear_memory_growth(stockade, wasm, peak_rss) -> None:
    proc = run(stockade, "--memory", "32M", str(wasm("membomb")))
    assert proc.returncode == 116, proc.stderr
    assert "workload failed at its memory limit" in problem(proc)
    rss = peak_rss()
    assert rss < RUNTIME_RSS + 32 * MiB, f"peak RSS {rss >> 20} MiB"


TOUCHING_GROWTH = """
(module
  (memory (export "memory") 1)
  (func (export "_start") (local $page i32)
    (loop $grow
      (local.set $page (memory.grow (i32.const 1)))
      (if (i32.ne (local.get $page) (i32.const -1))
        (then
          ;; fill the new page so that all of it is resident
          (memory.fill (i32.mul (local.get $page) (i32.const 65536)) (i32.const 255) (i32.const 65536))
          (br $grow))))
    unreachable))
"""


def test_linear_memory_growth_touching_every_page(stockade, module, peak_rss) -> None:
    proc = run(stockade, "--memory", "32M", str(module("touch", TOUCHING_GROWTH)))
    assert proc.returncode == 116, proc.stderr
    assert "workload failed at its memory limit (33554432 of 33554432 bytes" in problem(proc)
    rss = peak_rss()
    assert rss < RUNTIME_RSS + 32 * MiB, f"peak RSS {rss >> 20} MiB"


# -- disk: the Keep's private tmpfs, sized to --disk

FILL = Path(__file__).resolve().parent.parent / "data" / "hostile" / "fill.wat"


def fill(chunks: int) -> str:
    return FILL.read_text().replace("CHUNKS", str(chunks))


@pytest.mark.parametrize(
    ("name", "chunks", "message"),
    [
        ("many-files", 16, "its files fill the 8388608-byte limit"),
        ("one-big-file", 1 << 30, "its files fill the 8388608-byte limit"),
        (
            "empty-files",
            0,
            "no file entry left: at most 1024 files and directories under the 8388608-byte limit",
        ),
    ],
)
def test_disk_fill_stops_at_the_disk_limit(
    stockade, module, peak_rss, tmp_path: Path, name: str, chunks: int, message: str
) -> None:
    empty = tmp_path / "root"
    empty.mkdir()
    proc = run(
        stockade, "--memory", "16M", "--disk", "8M", "--file", f"{empty}:/", str(module(name, fill(chunks)))
    )
    assert proc.returncode == 116, proc.stderr
    assert f"workload failed at its disk limit ({message})" in problem(proc)
    # The files were in the Keep's tmpfs, charged to nobody's RSS; the Keep
    # itself stays near its runtime footprint.
    rss = peak_rss()
    assert rss < RUNTIME_RSS + 16 * MiB, f"peak RSS {rss >> 20} MiB"


def test_files_larger_than_the_disk_limit_are_refused(stockade, wasm, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (2 * MiB))
    proc = run(stockade, "--disk", "1M", "--file", f"{big}:/big.bin", str(wasm("create")))
    assert proc.returncode == 116, proc.stderr
    assert "the workload's files and secrets do not fit its 1048576-byte disk limit" in problem(proc)


# -- time and output


def test_output_flood(stockade, wasm) -> None:
    proc = run(stockade, "--max-output", "1M", str(wasm("flood")))
    assert proc.returncode == 116, proc.stderr[-2000:]
    assert "workload exceeded its output limit and was stopped" in problem(proc)
    assert len(proc.stdout) <= 1 * MiB


def test_infinite_loop(stockade, wasm) -> None:
    proc = run(stockade, "--timeout", "1", str(wasm("spin")))
    assert proc.returncode == 116, proc.stderr
    assert "workload exceeded its wall-clock time limit and was stopped" in problem(proc)


def test_sleep_in_poll_oneoff(stockade, wasm) -> None:
    proc = run(stockade, "--timeout", "1", str(wasm("sleep")), timeout=30)
    assert proc.returncode == 116, proc.stderr
    assert "blocked in a host call" in problem(proc)
    assert b"awake" not in proc.stdout
