"""A result computed once in another thread, and the thread that computes it.

What ``concurrent.futures.Future`` gives for one value, without importing
``concurrent.futures`` (which imports ``logging``: together about as much
start-up work as the rest of the sim PSP's imports): the local ``stockade
run`` path and the Keep runtime pay every import on each run (issue 18).
Imports nothing of stockade, so every layer may use it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class OneShot(Generic[T]):
    """Set once (a value or an exception), read by any number of threads."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    def set_result(self, value: T) -> None:
        self._value = value
        self._done.set()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> T:
        """The value, waiting for it up to ``timeout`` seconds (None: no
        limit); raises what the producer raised, or TimeoutError."""
        if not self._done.wait(timeout):
            raise TimeoutError("the result is not ready")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set by set_result


def start(make: Callable[[], T], name: str) -> OneShot[T]:
    """Run ``make`` in a daemon thread; its value (or exception) goes to the
    returned :class:`OneShot`."""
    out: OneShot[T] = OneShot()

    def run() -> None:
        try:
            out.set_result(make())
        except BaseException as exc:  # handed to whoever waits for the result
            out.set_exception(exc)

    threading.Thread(target=run, daemon=True, name=name).start()
    return out
