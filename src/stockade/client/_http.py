"""httpx, imported without its command-line interface.

httpx's ``__init__`` runs ``from ._main import main`` (the ``httpx`` console
script) and falls back to a stub ``main`` on ImportError (httpx 0.28/0.29,
``httpx/__init__.py``). ``httpx._main`` imports click, rich and pygments
when they are installed, as they are beside stockade: ~0.1 s of every
``stockade deploy --host`` for a command line nobody runs here (measured:
``import httpx`` 300-370 ms against 200-270 ms without it, loaded 2-core
machine; issue 18). A ``None`` entry in ``sys.modules`` makes that import
raise ImportError (Python language reference, "The module cache"), so
httpx takes its own fallback; the entry is removed again at once, so an
explicit ``import httpx._main`` later still works.
"""

from __future__ import annotations

import sys

if "httpx" not in sys.modules and "httpx._main" not in sys.modules:
    sys.modules["httpx._main"] = None  # type: ignore[assignment]
    try:
        import httpx
    finally:
        if sys.modules.get("httpx._main", 0) is None:
            del sys.modules["httpx._main"]
else:
    import httpx

__all__ = ["httpx"]
