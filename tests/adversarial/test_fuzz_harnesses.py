"""The atheris harnesses in fuzz/ keep working (atheris itself is not
installed in CI): each harness's target, run on its seeds and on random and
mutated bytes, returns or raises only the errors it allows."""

from __future__ import annotations

import importlib
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
HARNESSES = sorted(p.stem for p in FUZZ.glob("fuzz_*.py"))


@pytest.fixture(scope="module")
def fuzz_path() -> object:
    sys.path.insert(0, str(FUZZ))
    yield
    sys.path.remove(str(FUZZ))


def _module(name: str) -> ModuleType:
    return importlib.import_module(name)


def test_every_harness_has_seeds(fuzz_path: object) -> None:
    seeds = _module("seeds")
    assert set(HARNESSES) == set(seeds.SEEDS)
    assert len(HARNESSES) == 8


@pytest.mark.parametrize("name", HARNESSES)
def test_harness_runs_on_seeds_and_mutations(fuzz_path: object, name: str) -> None:
    common, seeds = _module("_common"), _module("seeds")
    target, allowed = _module(name).load()
    one_input = common.guarded((target, allowed))
    inputs = seeds.seeds(name)
    assert inputs, f"{name} has no seeds"
    # Valid seeds parse without error (the harness exercises the parser
    # past its first check).
    for data in inputs:
        target(data)
    rng = random.Random(name)
    for _ in range(300):
        data = bytearray(rng.choice(inputs))
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(data)) if data else 0
            op = rng.randrange(3)
            if op == 0 and data:
                data[pos] ^= 1 << rng.randrange(8)
            elif op == 1:
                del data[pos:]
            else:
                data[pos:pos] = rng.randbytes(rng.randint(1, 8))
        one_input(bytes(data))
        one_input(rng.randbytes(rng.randint(0, 64)))
