"""Import guard of the Keep: only measured modules may be imported.

Installed first thing by the Keep entry points (``python -I -m
stockade.keep`` and the fork server ``stockade.keep.zygote``): a finder at
the front of ``sys.meta_path`` that refuses any module whose name is not in
the measured set (stockade.measure.keep_modules, the list the launch
measurement resolves and hashes, stockade.measure.launch). So "loaded ⊆
measured" holds by construction: a module outside the list cannot be
imported, whatever file a host plants on the Keep's ``sys.path``.

A refusal raises ModuleNotFoundError (code that probes optional modules
behaves as if the module were absent); when a file for the name exists on
the path (a planted module), it also writes one line to the Keep's log. Modules imported before the guard (interpreter start-up, ``stockade``,
``stockade.keep`` and this module) are in the list too, and a test checks
``sys.modules`` of real Keeps against it (tests/test_measurement.py).
ADR 0013.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

from stockade.errors import UnmeasuredCode
from stockade.measure import sitecheck
from stockade.measure.keep_modules import MODULES

#: Set by record_only(); a list so that no ``global`` statement is needed.
_recording: list[bool] = []


class MeasuredImportsOnly:
    """A meta-path finder that refuses unmeasured module names and lets the
    next finders resolve measured ones."""

    def __init__(self, allowed: frozenset[str]) -> None:
        self.allowed = allowed

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name in self.allowed:
            return None
        message = (
            f"stockade keep: import of {name!r} refused: it is not part of the measured Keep runtime "
            "(stockade.measure.keep_modules, ADR 0013)"
        )
        # Libraries probe for optional modules (cryptography tries bcrypt,
        # copy tries Jython's org): refused quietly when nothing would be
        # found anyway; logged when a file is there, planted or not.
        found = self._found_by_others(name, path, target)
        if found is not None:
            print(f"{message}; found at {found}", file=sys.stderr)
        raise ModuleNotFoundError(message, name=name)

    def _found_by_others(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None
    ) -> str | None:
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            try:
                spec = finder.find_spec(name, path, target)
            except Exception:  # noqa: S112 (a broken finder: the refusal stands either way)
                continue
            if spec is not None:
                return str(spec.origin)
        return None

    def invalidate_caches(self) -> None:
        pass


def install(allowed: frozenset[str] = MODULES) -> None:
    """Put the guard first in ``sys.meta_path`` (once). A ``.pth`` file that
    ran code at this interpreter's start-up, or a module already loaded that
    is not in the measured set (imported by a sitecustomize, say), ends the
    process (exit 120): that code is not measured, so this Keep must not
    serve a session."""
    if _recording or any(isinstance(f, MeasuredImportsOnly) for f in sys.meta_path):
        return
    try:
        sitecheck.check()
        # What ran before this point (interpreter start-up, site, a
        # sitecustomize, the entry module's own imports) must be measured too.
        early = sorted(n for n in sys.modules if n not in allowed and n not in ("__main__", "__mp_main__"))
        if early:
            raise UnmeasuredCode(
                f"modules loaded before the import guard are not in the measured set: {', '.join(early[:10])}"
            )
    except UnmeasuredCode as err:
        print(f"stockade keep: refusing to start: {err}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(err.exit_code)
    sys.meta_path.insert(0, MeasuredImportsOnly(allowed))


def record_only() -> None:
    """Make :func:`install` do nothing: used by stockade.testing.keepload to
    record what a Keep loads when the list is being generated. Only code that
    already runs in the Keep's process can call it (the host that starts a
    Keep with other code gives it a different command, as a VM host that
    boots another kernel command line gets a different measurement)."""
    _recording.append(True)
