"""The benchmarks still run (tiny budgets; no timing is asserted: speed goals
live in bench/, measured against a baseline in the same run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import need_vm

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize(
    ("script", "args", "keys"),
    [
        (
            "bench_e2e.py",
            ["--runs", "1"],
            {
                "ratio",
                "bare_wasmtime_ms_median",
                "steps_ms_median",
                "warm_run_ratio",
                "deploy_host_warm_ratio",
            },
        ),
        ("bench_timings.py", ["--runs", "1", "--backends", "sim"], {"runs", "median_ms"}),
        (
            "bench_cold_floor.py",
            ["--runs", "1"],
            {"floor_ratio", "bare_ms", "measurement_hash_cpu_ms", "measured_bytes"},
        ),
        (
            "bench_compile_cache.py",
            ["--runs", "1", "--wasm", str(BENCH.parent / "examples" / "hello" / "hello.wasm")],
            {"ratio", "cold_compile_ms_median", "warm_compile_ms_median", "module_bytes"},
        ),
        ("bench_snp_verify.py", ["--seconds", "0.3"], set()),
        ("bench_dcap.py", ["--seconds", "0.3"], set()),
        ("bench_translog.py", ["--sizes", "10,50", "--appends", "3"], {"ratio_append_over_baseline", "rows"}),
        (
            "bench_steward.py",
            ["--seconds", "0.2", "--rounds", "1"],
            {"ratio_softhsm2_over_file", "file", "softhsm2"},
        ),
        (
            "bench_manager.py",
            ["--keeps", "3", "--sequential", "2"],
            {"fork_server", "fresh_processes", "ratio_fork_over_fresh"},
        ),
    ],
)
def test_bench_runs_and_reports_json(script: str, args: list[str], keys: set[str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert isinstance(doc, dict) and doc
    assert keys <= set(doc)


@pytest.mark.slow
def test_bench_throughput_runs_and_reports_json(tmp_path: Path) -> None:
    """bench_throughput.py with tiny sizes: each part runs, its workloads
    give the right answers and every ratio is there (about a minute)."""
    args = ["--runs", "1", "--sha-mib", "1", "--primes", "1000", "--bulk-mib", "1"]
    args += ["--deploys", "3", "--sequential", "1", "--json"]
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_throughput.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    compute = doc["compute"]
    assert compute["primes"]["output"] == "168"  # pi(1000)
    assert len(compute["sha256"]["output"]) == 64
    for name in ("sha256", "primes"):
        ratios = compute[name]["ratio_over_bare_cpu"]
        assert set(ratios) == {"bare", "bare+epoch", "bare+keep_engine", "bare+keep_engine+limits", "keep"}
        assert ratios["bare"] == 1.0 and all(r > 0 for r in ratios.values())
        same = compute[name]["ratio_keep_over_same_settings"]
        assert set(same) == {"cpu", "wall"} and all(r > 0 for r in same.values())
    bulk = doc["bulk"]
    assert bulk["measured_bytes"] == 1 << 20
    assert set(bulk["ratio_throughput_over_tls"]) == {"local", "relay"}
    assert all(r > 0 for r in bulk["ratio_throughput_over_tls"].values())
    deploys = doc["deploys"]
    assert deploys["deploys"] == 3 and deploys["host_cpu_s_per_deploy"] > 0
    assert deploys["latency_ms"]["p99"] >= deploys["latency_ms"]["p50"] > 0


@pytest.mark.slow
@pytest.mark.vm
def test_bench_vm_runs_and_reports_json(tmp_path: Path) -> None:
    """bench_vm.py with its smallest settings (one run of each kind, a pool
    of one, a short KVM probe): about a minute under TCG."""
    need_vm()
    args = ["--runs", "1", "--vm-pool", "1", "--sim-keeps", "1", "--kvm-timeout", "5", "--json"]
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_vm.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {"image", "kvm", "local", "memory", "deploy"} <= set(doc)
    assert doc["image"]["identical"] is True
    assert doc["image"]["initrd_bytes"] > 0 and doc["image"]["kernel_bytes"] > 0
    local = doc["local"]
    for kind in ("process", "vm_tcg"):
        assert local[kind]["runs"] == 1
        # Both Keeps reached their first evidence request and were verified.
        assert local[kind]["boot_to_evidence_request_ms"]["p50"] > 0
        assert local[kind]["boot_to_verified_ms"]["p50"] >= local[kind]["boot_to_evidence_request_ms"]["p50"]
    assert local["ratio_vm_tcg_over_process"]["wall_ms"] is not None
    memory = doc["memory"]
    assert memory["pooled_vm_keep"]["measured"] == {"qemus": 1, "psps": 1}
    assert memory["idle_sim_keep"]["measured"] == {"keeps": 1, "psps": 1}
    assert memory["pooled_vm_keep"]["qemu_mib"]["rss"] > 0
    parts = memory["pooled_vm_keep"]["qemu_rss_parts_mib"]
    assert parts["guest_ram"] > 0 and parts["initrd_file"] > 0
    for kind in ("sim", "vm_warm", "vm_cold"):
        assert doc["deploy"][kind]["runs"] == 1
        assert doc["deploy"][kind]["create_to_verified_ms"]["p50"] > 0
    assert doc["kvm"]["usable"] in (True, False) and doc["kvm"]["detail"]


def _load_bench_vm() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_vm", BENCH / "bench_vm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_vm_refuses_builds_that_differ(tmp_path: Path) -> None:
    """The reproducibility check of bench_vm.py fails on one changed byte
    and names the file."""
    bench_vm = _load_bench_vm()
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        for name in bench_vm.IMAGE_FILES:
            (d / name).write_bytes(name.encode() * 10)
    assert set(bench_vm.same_builds(a, b)) == set(bench_vm.IMAGE_FILES)
    (b / "initrd.img").write_bytes(b"initrd.img" * 9 + b"initrd.imh")
    with pytest.raises(SystemExit, match=r"differ: initrd\.img \(not reproducible\)"):
        bench_vm.same_builds(a, b)


def test_bench_vm_reads_phases_once_each(tmp_path: Path) -> None:
    """Phases are offsets from the bench's clock; a phase the hook wrote
    twice counts from its first entry; a missing file gives no phases."""
    bench_vm = _load_bench_vm()
    path = tmp_path / "phases"
    path.write_text("start 10.5\nbooting 10.75\nattesting 12.0\nattesting 13.0\n")
    phases = bench_vm.read_phases(path, 10.0)
    assert phases == {"start": 500.0, "booting": 750.0, "attesting": 2000.0}
    assert bench_vm.span(phases, "booting", "attesting") == 1250.0
    assert bench_vm.span(phases, "booting", "loading") is None
    assert bench_vm.read_phases(tmp_path / "missing", 0.0) == {}
