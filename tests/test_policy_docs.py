"""Every policy example in docs/policy.md loads, and does what its
``# check:`` lines say on the shared vectors' claims."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from policy_support import ALL_VECTORS, vector_claims
from snp_support import VERIFY_AT
from stockade.policy import evaluate, loads_policy
from stockade.policy.builtin import default_policy_toml

DOC = Path(__file__).resolve().parent.parent / "docs" / "policy.md"
BLOCKS = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.DOTALL)


def _checks(block: str) -> list[tuple[str, str]]:
    out = []
    for line in block.splitlines():
        m = re.match(r"# check: (accept|refuse) (.+)", line)
        if m:
            out.extend((m.group(1), name) for name in m.group(2).split())
    return out


def test_the_doc_has_examples_with_checks() -> None:
    assert len(BLOCKS) >= 15
    checked = [b for b in BLOCKS if _checks(b)]
    assert len(checked) == len(BLOCKS), "every example states what it accepts and refuses"
    named = {name for b in BLOCKS for _, name in _checks(b)}
    assert named == set(ALL_VECTORS), "every vector with claims appears in some example"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_example(index: int) -> None:
    block = BLOCKS[index]
    policy = loads_policy(block, f"docs/policy.md example {index}")
    for want, name in _checks(block):
        decision = evaluate(vector_claims(name), policy, VERIFY_AT)
        assert decision.outcome == ("accepted" if want == "accept" else "refused"), (
            f"example {index} should {want} {name}: {decision.explain()}"
        )
        if want == "refuse":
            # every refusal names rule, expected and actual
            assert decision.failures()
            for row in decision.failures():
                assert row.rule and row.expected and row.actual


def test_the_doc_shows_the_real_default_policy() -> None:
    text = default_policy_toml()
    shown = [b for b in BLOCKS if 'name = "built-in default"' in b]
    assert len(shown) == 1
    body = "".join(line + "\n" for line in shown[0].splitlines() if not line.startswith("# check:"))
    assert body == text


def test_first_example_is_a_few_lines() -> None:
    """The seed's policy ("refuse this generation, allow these vendors;
    firmware at least X; only this Keep; never debug") in a few lines."""
    lines = [ln for ln in BLOCKS[0].splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(lines) <= 12


def test_the_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The "Testing a policy in Python" snippet, against the first example
    saved as production.toml."""
    (tmp_path / "production.toml").write_text(BLOCKS[0])
    snippets = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(snippets) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(snippets[0], "docs/policy.md", "exec"), {})
