"""How every ``stockade`` command reports a StockadeError: one line
``stockade: <title>: <detail>`` on stderr, or with ``--json`` an error
document on stdout; then it exits with the error's code (docs/exit-codes.md).

:func:`safe_text` is the one function that makes text from outside this
machine (the keep manager, the Keep, evidence) safe to print on a terminal.
Every string a host can choose goes through it before it is printed."""

from __future__ import annotations

import json
import sys
import unicodedata
from typing import NoReturn

import click

from stockade.errors import StockadeError

#: Unicode categories escaped by safe_text: control characters (C0, DEL and
#: C1, which include ESC, CSI and OSC), format characters (bidi embeddings,
#: overrides and isolates U+202A-202E, U+2066-2069, marks, zero-width
#: characters), surrogates (undecodable bytes) and the line and paragraph
#: separators. Unicode TR #9 (bidi) and ECMA-48 (control functions).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
#: The longest host-supplied text printed in one piece (a problem detail, a
#: field of `keeps ls`); longer text is cut and says so.
MAX_TEXT = 16384


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def safe_text(text: object, *, multiline: bool = False, limit: int | None = MAX_TEXT) -> str:
    """``text`` with every character that could drive a terminal written
    as a visible escape (``\\x1b``, ``\\r``, ``\\u202e`` ...): ESC and so
    every CSI/OSC/DCS sequence, C1 controls, carriage return, backspace,
    bidi overrides. Escaping, not deleting: the user sees that the host
    sent something odd. ``multiline`` keeps ``\\n`` and ``\\t`` (logs);
    otherwise the result is one line. ``limit`` cuts text longer than that
    many characters (None: no limit)."""
    s = text if isinstance(text, str) else str(text)
    cut = ""
    if limit is not None and len(s) > limit:
        cut = f"… ({len(s) - limit} more characters)"
        s = s[:limit]
    if s.isprintable() and not cut:
        return s  # the common case: no control or format character at all
    keep = "\n\t" if multiline else ""
    out = [
        _escape(ch) if ch not in keep and unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in s
    ]
    return "".join(out) + cut


def fail(err: StockadeError, as_json: bool, *, indent: int | None = None, **extra: object) -> NoReturn:
    """Print ``err`` and exit with its code. The JSON document is
    ``{"exit_code", **extra, "error": {type, title, detail, exit_code}}``,
    printed with ``indent`` (None: one line). Title and detail may carry
    text from the host (relayed problems, certificate names): both go
    through :func:`safe_text`."""
    title, detail = safe_text(err.title), safe_text(err.detail)
    if as_json:
        doc = {
            "exit_code": err.exit_code,
            **extra,
            "error": {
                "type": safe_text(err.problem_type),
                "title": title,
                "detail": detail,
                "exit_code": err.exit_code,
            },
        }
        click.echo(json.dumps(doc, indent=indent))
    else:
        click.echo(f"stockade: {title}: {detail}", err=True)
    sys.exit(err.exit_code)
