"""Baseline: the vendored WASI conformance tests on bare wasmtime-py (no stockade).

Whatever fails here is a property of wasmtime-py (or of the harness), not of
stockade; such cases are listed with their reason in
``wasi_suite.KNOWN_BARE_FAILURES`` and marked strict-xfail.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from wasi_suite import (
    KNOWN_BARE_FAILURES,
    SUITE_DIR,
    Case,
    check,
    discover,
    load_case,
    prepare,
    pytest_params,
    run_bare,
)

CASES = discover(SUITE_DIR)

# The vendored copy (prod/testsuite-base 9f80ca35, wasm32-wasip1) holds 14 C and
# 12 AssemblyScript test modules. Pinning the counts makes an empty or partial
# copy fail loudly instead of passing with nothing to run.
EXPECTED_COUNTS = {"c": 14, "assemblyscript": 12}


def test_discovery_finds_the_whole_suite() -> None:
    counts = Counter(case.id.split("/", 1)[0] for case in CASES)
    assert dict(counts) == EXPECTED_COUNTS
    assert len({case.id for case in CASES}) == len(CASES) == 26
    assert all(case.skip_reason is None for case in CASES)


@pytest.mark.parametrize("case", pytest_params(CASES, KNOWN_BARE_FAILURES))
def test_wasi_bare(case: Case, tmp_path: Path) -> None:
    prepared = prepare(case, tmp_path)
    exit_code, stdout, stderr = run_bare(prepared)
    problems = check(case, exit_code, stdout, stderr)
    assert problems == [], f"{case.id}: " + "; ".join(problems)


# ---------------------------------------------------------------- harness self-checks
# The vendored suite only uses the legacy specification; these pin down the
# operation-based parsing and the checker so that they are not dead code.


def _case_from_spec(tmp_path: Path, spec: dict[str, object]) -> Case:
    wasm = tmp_path / "t.wasm"
    wasm.write_bytes(b"")
    wasm.with_suffix(".json").write_text(json.dumps(spec))
    return load_case(wasm, "x/t")


def test_operation_spec_is_parsed(tmp_path: Path) -> None:
    case = _case_from_spec(
        tmp_path,
        {
            "operations": [
                {"type": "run", "args": ["a"], "env": {"K": "V"}, "root": "d"},
                {"type": "read", "payload": "he"},
                {"type": "read", "payload": "llo"},
                {"type": "read", "id": "stderr", "payload": "oops"},
                {"type": "wait", "exit_code": 3},
            ]
        },
    )
    assert (case.args, case.env, case.root) == (("a",), {"K": "V"}, "d")
    assert (case.exit_code, case.stdout, case.stderr) == (3, "hello", "oops")
    assert case.skip_reason is None


def test_socket_and_proposal_cases_are_skipped(tmp_path: Path) -> None:
    case = _case_from_spec(
        tmp_path,
        {
            "proposals": ["sockets"],
            "operations": [
                {"type": "run"},
                {"type": "connect"},
                {"type": "send", "id": "server", "payload": "ping"},
                {"type": "recv", "id": "server", "payload": "ping"},
                {"type": "wait"},
            ],
        },
    )
    assert case.skip_reason is not None
    for word in ("sockets", "connect", "send", "recv"):
        assert word in case.skip_reason
    with pytest.raises(ValueError, match="cannot be run"):
        prepare(case, tmp_path / "work")


@pytest.mark.parametrize(
    "spec",
    [
        {"args": [], "operations": []},
        {"operations": [{"type": "run"}]},
        {"operations": [{"type": "read"}, {"type": "run"}, {"type": "wait"}]},
        {"stdot": "typo"},
    ],
)
def test_invalid_specs_are_rejected(tmp_path: Path, spec: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _case_from_spec(tmp_path, spec)


def test_check_reports_mismatches() -> None:
    case = Case(id="x/t", wasm=Path("t.wasm"), exit_code=33, stdout="hello")
    assert check(case, 33, b"hello", b"ignored") == []
    problems = check(case, 0, b"hello\n", b"")
    assert problems == [
        "exit code: expected 33, got 0",
        "stdout: expected b'hello', got b'hello\\n'",
    ]
