"""Bearer tokens of the keep manager API.

``<state>/tokens.json`` (mode 0600) lists the tokens the manager accepts.
A token is shown once, when it is made, and stored only as its SHA-256, with
a short token id (the ``owner`` of the Keeps it creates in the registry) and
a quota of concurrent Keeps::

    {"version": 1, "tokens": [
        {"id": "tok-3f2a9c1e", "sha256": "<64 hex>", "quota": 16, "created_at": "..."}
    ]}

A token is 32 random bytes (URL-safe base64) after the prefix ``stk_``: far
too many to guess, so one unsalted hash is enough to store it (a leaked
tokens file does not reveal a token).

Host code: standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from stockade.errors import UsageError

FILENAME: Final = "tokens.json"
PREFIX: Final = "stk_"
DEFAULT_QUOTA: Final = 16
#: A token as add_token makes it: the prefix and 32 random bytes in URL-safe
#: base64 without padding (43 characters). import_token accepts only this
#: shape: the unsalted hash is safe only for a token that cannot be guessed.
TOKEN_RE: Final = re.compile(r"^stk_[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True)
class TokenEntry:
    token_id: str
    sha256: bytes
    quota: int


@dataclass(frozen=True)
class Tokens:
    entries: tuple[TokenEntry, ...]

    def authenticate(self, token: str) -> TokenEntry | None:
        """The entry of ``token`` (compared in constant time), or None."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found = None
        for entry in self.entries:
            if hmac.compare_digest(digest, entry.sha256):
                found = entry
        return found


def tokens_path(state_dir: Path) -> Path:
    return state_dir / FILENAME


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _entry_json(entry: TokenEntry) -> dict[str, Any]:
    return {"id": entry.token_id, "sha256": entry.sha256.hex(), "quota": entry.quota}


def add_token(
    state_dir: Path, quota: int = DEFAULT_QUOTA, token: str | None = None
) -> tuple[str, TokenEntry]:
    """Create a token (or register ``token``, an existing one made by
    another host's ``host init``: one tenant token for several hosts), add
    its hash to the tokens file (created mode 0600 if missing) and return
    (token, entry). The caller shows a new token once, and never an
    existing one."""
    if isinstance(quota, bool) or not isinstance(quota, int) or not 0 < quota <= 100_000:
        raise UsageError(f"the quota must be an integer in [1, 100000], got {quota!r}")
    if token is not None and not TOKEN_RE.fullmatch(token):
        # Never echo the text: it may be a secret of some other kind.
        raise UsageError(
            f"not a stockade API token ({PREFIX} and 43 URL-safe base64 characters, as `stockade host init` "
            "prints them)"
        )
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = tokens_path(state_dir)
    docs: list[dict[str, Any]] = []
    if path.exists():
        docs = [_entry_json(e) | {"created_at": c} for e, c in _read(path)]
    token = token if token is not None else PREFIX + secrets.token_urlsafe(32)
    digest = hashlib.sha256(token.encode()).digest()
    if any(d["sha256"] == digest.hex() for d in docs):
        raise UsageError(f"this token is registered already in {path}")
    entry = TokenEntry("tok-" + secrets.token_hex(4), digest, quota)
    docs.append(_entry_json(entry) | {"created_at": datetime.now(UTC).isoformat(timespec="seconds")})
    _write_private(path, json.dumps({"version": 1, "tokens": docs}, indent=2) + "\n")
    return token, entry


def _read(path: Path) -> list[tuple[TokenEntry, str]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"no tokens file {path}; create one with `stockade host init`") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the tokens file {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("tokens"), list):
        raise UsageError(f"{path}: expected {{'version': 1, 'tokens': [...]}}")
    out: list[tuple[TokenEntry, str]] = []
    for i, item in enumerate(doc["tokens"]):
        try:
            tid, digest, quota = item["id"], bytes.fromhex(item["sha256"]), item["quota"]
            ok = isinstance(tid, str) and len(digest) == 32 and type(quota) is int and quota > 0
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise UsageError(f"{path}: token {i} needs id (text), sha256 (64 hex) and quota (positive)")
        out.append((TokenEntry(tid, digest, quota), str(item.get("created_at", ""))))
    return out


def load_tokens(state_dir: Path) -> Tokens:
    """Read ``<state_dir>/tokens.json``; refuse one that others may read."""
    path = tokens_path(state_dir)
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_mode & 0o077:
            raise UsageError(f"{path} is readable by group or others; chmod 600 it")
    return Tokens(tuple(e for e, _ in _read(path)))
