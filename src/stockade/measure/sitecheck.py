"""The ``.pth`` files of the site directories a Keep starts with.

``site`` runs at every interpreter start-up, ``python -I`` included, and
executes each ``.pth`` line that starts with ``import``: code that no module
list covers. The loader refuses to measure (stockade.measure.launch), and the
Keep refuses to start (stockade.keep.guard), when such a line exists. Kept
apart from launch.py so that the Keep imports only ``os`` and ``site`` (both
already loaded at start-up) for this check. ADR 0013.
"""

from __future__ import annotations

import os

from stockade.errors import UnmeasuredCode


def site_dirs() -> list[str]:
    """The site-packages directories ``python -I`` adds (no user site)."""
    import site

    return [d for d in site.getsitepackages() if os.path.isdir(d)]


def _is_code_line(line: str) -> bool:
    # Lib/site.py addpackage(): "if line.startswith(("import ", "import\t")): exec(line)".
    return line.startswith(("import ", "import\t"))


def pth_paths(site_dir: str) -> list[str]:
    """The directories the ``.pth`` files of ``site_dir`` add to ``sys.path``,
    in the order ``site`` adds them; refuses (UnmeasuredCode) a ``.pth`` line
    that ``site`` would execute.

    Mirrors CPython's Lib/site.py addsitedir()/addpackage() (3.11): files
    ``*.pth`` sorted by name, hidden files skipped; blank lines and lines
    starting with ``#`` skipped; ``import`` lines executed; any other line
    is a path joined to the site directory, added if it exists."""
    try:
        names = sorted(n for n in os.listdir(site_dir) if n.endswith(".pth") and not n.startswith("."))
    except OSError:
        return []
    added: list[str] = []
    for name in names:
        path = os.path.join(site_dir, name)
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.startswith("#"):
                continue
            if _is_code_line(line):
                raise UnmeasuredCode(
                    f"{path} line {number} runs code in every Python start-up, the Keep's included, and that "
                    "code is not measured; remove the file (setuptools' distutils-precedence.pth is not needed "
                    "by stockade) or run stockade from an environment without it"
                )
            directory = os.path.abspath(os.path.join(site_dir, line.rstrip()))
            if os.path.exists(directory):
                added.append(directory)
    return added


def check() -> None:
    """Raise UnmeasuredCode if a ``.pth`` file of the site directories runs code."""
    for site_dir in site_dirs():
        pth_paths(site_dir)
