"""Helpers shared by the SEV-SNP tests (snp_support) and the TDX/SGX tests
(intel_support): the copied real vectors' directory layout (tests/data/vectors,
see its README.md) and the single-byte mutation runner."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from stockade.errors import MalformedEvidence, VerificationFailed

VECTORS = Path(__file__).resolve().parent / "data" / "vectors"


@dataclass(frozen=True)
class VectorSample:
    """One vector directory, with its expected.json."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @cached_property
    def expected(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / "expected.json").read_text())
        return data


def flip(data: bytes, pos: int, mask: int = 0x01) -> bytes:
    """``data`` with the byte at ``pos`` XORed with ``mask``."""
    buf = bytearray(data)
    buf[pos] ^= mask
    return bytes(buf)


def mutation_outcomes(
    check: Callable[[bytes], object], mutants: Iterable[tuple[str, bytes]]
) -> tuple[Counter[str], list[str]]:
    """``check`` each (label, mutated bytes). A refusal with MalformedEvidence
    or VerificationFailed is counted by class name; any other exception, or
    acceptance, is a problem ``"<label>: <what happened>"`` (``"<label>:
    accepted"`` for an accepted mutant)."""
    outcomes: Counter[str] = Counter()
    problems: list[str] = []
    for label, mutated in mutants:
        try:
            check(mutated)
        except (MalformedEvidence, VerificationFailed) as exc:
            outcomes[type(exc).__name__] += 1
        except Exception as exc:
            problems.append(f"{label}: {type(exc).__name__}: {exc}")
        else:
            problems.append(f"{label}: accepted")
    return outcomes, problems
