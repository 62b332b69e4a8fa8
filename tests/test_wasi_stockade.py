"""The vendored WASI conformance tests, run through ``stockade run`` (sim Keep).

Same cases, same checks as tests/test_wasi_bare.py (see tests/wasi_suite.py),
but each module goes through the whole deploy: CLI, attestation of a fresh sim
Keep, workload transfer over TLS, wasmtime inside the Keep, streamed output.

Mapping of a :class:`PreparedCase` onto stockade's options:

* ``prepared.argv[1:]`` -> the arguments after ``--``. The Keep always passes
  ``argv[0] = "main.wasm"``, not the module's file name;
* ``prepared.env`` -> one ``--env K=V`` each (the Keep inherits nothing);
* ``prepared.root`` -> ``--file ROOT:/``: the directory is sent recursively
  through the attested channel and preopened as ``/`` in the Keep. Writes
  stay in the Keep's private copy.

A case that passes on bare wasmtime-py but fails here is listed in
``STOCKADE_ONLY_FAILURES`` with the reason (strict xfail, so a fix turns the
test red until the entry is removed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wasi_suite import (
    KNOWN_BARE_FAILURES,
    SUITE_DIR,
    Case,
    PreparedCase,
    check,
    discover,
    prepare,
    pytest_params,
)

pytestmark = pytest.mark.slow

CASES = discover(SUITE_DIR)

#: What stockade itself writes to stderr with --quiet once a sim Keep is verified;
#: not part of the guest's stderr.
SIM_LABEL = b"stockade: sim Keep: NO HARDWARE PROTECTION\n"

#: Case id -> reason, for cases that pass on bare wasmtime-py but fail through stockade.
STOCKADE_ONLY_FAILURES: dict[str, str] = {}


def stockade_runner(state_dir: Path):
    def run(prepared: PreparedCase) -> tuple[int, bytes, bytes]:
        cmd = [sys.executable, "-m", "stockade", "run", "--allow-sim", "-q"]
        for key, value in prepared.env.items():
            cmd += ["--env", f"{key}={value}"]
        if prepared.root is not None:
            cmd += ["--file", f"{prepared.root}:/"]
        cmd += [str(prepared.wasm), "--", *prepared.argv[1:]]
        proc = subprocess.run(
            cmd,
            cwd=prepared.workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            env={**os.environ, "STOCKADE_STATE_DIR": str(state_dir)},
            check=False,
        )
        assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
        assert proc.stderr.startswith(SIM_LABEL), proc.stderr.decode(errors="replace")
        return proc.returncode, proc.stdout, proc.stderr.removeprefix(SIM_LABEL)

    return run


@pytest.mark.parametrize("case", pytest_params(CASES, {**KNOWN_BARE_FAILURES, **STOCKADE_ONLY_FAILURES}))
def test_wasi_stockade(case: Case, tmp_path: Path, state_dir: Path) -> None:
    prepared = prepare(case, tmp_path)
    exit_code, stdout, stderr = stockade_runner(state_dir)(prepared)
    problems = check(case, exit_code, stdout, stderr)
    assert problems == [], f"{case.id}: " + "; ".join(problems)


def test_no_overlap_with_bare_failures() -> None:
    # An entry in both lists would hide which runner is at fault.
    assert not set(STOCKADE_ONLY_FAILURES) & set(KNOWN_BARE_FAILURES)
