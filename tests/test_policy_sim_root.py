"""``[sim] root_sha256``: a policy pins the sim chip it trusts (issue 13,
item 8). Loading, errors, which pins a remote deploy uses, and evaluation."""

from __future__ import annotations

import pytest

from stockade.policy import PolicyError, evaluate, loads_policy
from stockade.testing.claims import VERIFIED_AT, make_claims

A, B, C = "aa" * 32, "bb" * 32, "cc" * 32


def policy(body: str) -> str:
    return f'version = 1\nplatforms = ["sim"]\n{body}'


def test_a_string_or_an_array() -> None:
    assert loads_policy(policy(f'[sim]\nroot_sha256 = "{A}"\n')).sim_roots == (bytes.fromhex(A),)
    both = loads_policy(policy(f'[sim]\nroot_sha256 = ["{A}", "{B}", "{A}"]\n'))
    assert both.sim_roots == (bytes.fromhex(A), bytes.fromhex(B))
    assert loads_policy(policy("[sim]\nmin_tcb = { microcode = 1 }\n")).sim_roots == ()


def test_pins_under_any_of_count_and_under_not_do_not() -> None:
    text = policy(
        f'[[any_of]]\n[any_of.sim]\nroot_sha256 = "{A}"\n'
        f'[[any_of]]\n[any_of.sim]\nroot_sha256 = "{B}"\n'
        f'[not.sim]\nroot_sha256 = "{C}"\n'
    )
    assert loads_policy(text).sim_roots == (bytes.fromhex(A), bytes.fromhex(B))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[sim]\nroot_sha256 = "abcd"\n', r"sim\.root_sha256\[0\]: expected 32 bytes"),
        ('[sim]\nroot_sha256 = "zz"\n', "not hex"),
        ("[sim]\nroot_sha256 = 5\n", r"sim\.root_sha256"),
        ("[sim]\nroot_sha256 = []\n", "empty allow list"),
    ],
)
def test_bad_values(body: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        loads_policy(policy(body))


def test_only_in_sim_tables() -> None:
    with pytest.raises(PolicyError, match=r"snp\.root_sha256: unknown key"):
        loads_policy(f'version = 1\nplatforms = ["snp"]\n[snp]\nroot_sha256 = "{A}"\n')


def test_evaluation_compares_the_root_fingerprint() -> None:
    pinned = loads_policy(policy(f'[sim]\nroot_sha256 = "{A}"\n'))
    ok = evaluate(make_claims(platform="sim", root_fingerprint=A), pinned, VERIFIED_AT)
    assert ok.accepted
    bad = evaluate(make_claims(platform="sim", root_fingerprint=B), pinned, VERIFIED_AT)
    assert not bad.accepted
    (row,) = [r for r in bad.failures() if r.rule == "sim.root_sha256"]
    assert row.expected == f"one of {A}" and row.actual == B
