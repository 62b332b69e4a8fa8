"""``stockade run --policy``: the deployer's policy decides, before any
workload byte leaves the client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import EXAMPLES

HELLO = str(EXAMPLES / "hello" / "hello.wasm")


def reference_policy() -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "stockade", "policy", "reference"], capture_output=True, text=True, check=True
    )
    return proc.stdout


def test_policy_naming_sim_and_the_measurement_accepts(stockade, tmp_path: Path) -> None:
    policy = tmp_path / "dev.toml"
    policy.write_text(reference_policy())
    proc = stockade("run", "--policy", str(policy), "--json", HELLO, "--", "Ann")
    assert proc.returncode == 0, proc.stderr.decode()
    doc = json.loads(proc.stdout)
    assert doc["stdout"].startswith("Hello, Ann!")
    assert doc["policy"]["accepted"] is True


def test_policy_without_sim_refuses_before_sending_anything(stockade, tmp_path: Path) -> None:
    policy = tmp_path / "prod.toml"
    policy.write_text('version = 1\nplatforms = ["snp"]\n')
    canary = tmp_path / "canary"
    canary.write_text("canary-7f3a9c1e")
    proc = stockade("run", "--policy", str(policy), "--secret", f"s=@{canary}", HELLO)
    assert proc.returncode == 112
    err = proc.stderr.decode()
    assert "platforms" in err and "expected" in err and "actual sim" in err
    assert b"Hello" not in proc.stdout  # the workload never ran
    assert "canary-7f3a9c1e" not in err


def test_wrong_measurement_in_policy_is_refused(stockade, tmp_path: Path) -> None:
    policy = tmp_path / "pin.toml"
    policy.write_text(f'version = 1\nplatforms = ["sim"]\n[sim]\nmeasurements = ["{"ab" * 48}"]\n')
    proc = stockade("run", "--policy", str(policy), HELLO)
    assert proc.returncode == 112
    assert "ab" * 48 in proc.stderr.decode()


def test_allow_sim_with_a_policy_that_does_not_list_sim_is_a_usage_error(stockade, tmp_path: Path) -> None:
    policy = tmp_path / "prod.toml"
    policy.write_text('version = 1\nplatforms = ["snp"]\n')
    proc = stockade("run", "--allow-sim", "--policy", str(policy), HELLO)
    assert proc.returncode == 2
    assert "does not list sim" in proc.stderr.decode()


def test_malformed_policy_names_file_line_and_key(stockade, tmp_path: Path) -> None:
    policy = tmp_path / "bad.toml"
    policy.write_text('version = 1\nplatforms = ["sim"]\n[sim]\nmin_tcb = { ucode = 3 }\n')
    proc = stockade("run", "--policy", str(policy), HELLO)
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert f"{policy}:4" in err and "ucode" in err
    assert "Traceback" not in err
