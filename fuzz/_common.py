"""Shared driver of the atheris harnesses in this directory (see README.md).

Each harness module defines ``load() -> (target, allowed)``: ``target(data)``
parses ``data``; ``allowed`` are the exception classes a parser may raise on
bad input (its StockadeError subclasses). Anything else is a crash.
``load`` imports the code under test, so that :func:`main` can import it
inside ``atheris.instrument_imports()`` (coverage feedback), and the
smoke test (tests/adversarial/test_fuzz_harnesses.py) without atheris.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

Target = Callable[[bytes], object]
Loaded = tuple[Target, tuple[type[BaseException], ...]]


def guarded(loaded: Loaded) -> Callable[[bytes], None]:
    target, allowed = loaded

    def one_input(data: bytes) -> None:
        with contextlib.suppress(*allowed):
            target(data)

    return one_input


def main(load: Callable[[], Loaded]) -> None:
    """Run ``load``'s target under atheris (libFuzzer flags in sys.argv)."""
    import atheris  # not a stockade dependency: pip install atheris

    with atheris.instrument_imports(include=["stockade"]):
        loaded = load()
    atheris.Setup(sys.argv, guarded(loaded))
    atheris.Fuzz()
