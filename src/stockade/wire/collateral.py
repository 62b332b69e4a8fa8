"""What a keep manager's collateral endpoints carry (docs/host-api.md
"Collateral"): the names of the files of a collateral store, and the bounds
both sides apply. No I/O.

A name is a relative POSIX path of 1 to 6 segments, each starting with a
letter or digit and made of ``[A-Za-z0-9._-]`` (at most 128 characters), so
that no name can leave the store (no ``..``, no absolute path, no hidden or
temporary ``.tmp-`` file) and every name is safe to print. The host serves
the bytes of such files as they are, without parsing them; the client
checks each file's size and SHA-256 against the listing, parses it as the
collateral its name says, and verifies it (signatures, validity) only when
it uses it, like collateral from anywhere else.
"""

from __future__ import annotations

import re
from typing import Final

#: Largest collateral file served or accepted (as the HTTP fetcher's cap).
MAX_FILE_BYTES: Final = 1 << 20
#: Most files in one listing.
MAX_FILES: Final = 4096
MAX_DEPTH: Final = 6
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def valid_name(name: object) -> bool:
    """Whether ``name`` is a collateral file name (module docstring)."""
    if not isinstance(name, str) or not name or len(name) > 512:
        return False
    parts = name.split("/")
    return len(parts) <= MAX_DEPTH and all(_SEGMENT.fullmatch(p) and ".." not in p for p in parts)


__all__ = ["MAX_DEPTH", "MAX_FILES", "MAX_FILE_BYTES", "valid_name"]
