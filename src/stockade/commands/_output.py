"""How every ``stockade`` command reports a StockadeError: one line
``stockade: <title>: <detail>`` on stderr, or with ``--json`` an error
document on stdout (:func:`print_error`); the one error boundary,
:class:`stockade.cli.StockadeGroup`, then exits with the error's code
(docs/exit-codes.md). Commands raise; they never print errors or exit.

:func:`safe_text` is the one function that makes text from outside this
machine (the keep manager, the Keep, evidence) safe to print on a terminal.
Every string a host can choose goes through it before it is printed."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from stockade.errors import StockadeError

F = TypeVar("F", bound=Callable[..., Any])

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


#: Key in ``click.Context.meta`` (shared by every context of one command
#: line) under which the running command says how its errors are printed.
ERROR_FORMAT = "stockade.error_format"


@dataclass(frozen=True)
class ErrorFormat:
    """How the CLI's error boundary (:class:`stockade.cli.StockadeGroup`)
    prints a StockadeError for the running command: one line on stderr, or
    with ``--json`` an error document on stdout with ``extra`` keys,
    printed with ``indent``."""

    as_json: bool = False
    indent: int | None = None
    extra: tuple[tuple[str, object], ...] = ()


def json_option(help: str, *, indent: int | None = None, **extra: object) -> Callable[[F], F]:
    """The ``--json`` flag (parameter ``as_json``) of a command: also tells
    the error boundary to print an error as a JSON document (with ``extra``
    keys, e.g. ``exit_code_source``) when it is given."""

    def remember(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        ctx.meta[ERROR_FORMAT] = ErrorFormat(bool(value), indent, tuple(extra.items()))
        return value

    return click.option("--json", "as_json", is_flag=True, help=help, callback=remember)


def print_error(err: StockadeError, fmt: ErrorFormat) -> None:
    """Print ``err`` as ``fmt`` says. The JSON document is ``{"exit_code",
    **extra, "error": {type, title, detail, exit_code}}``. Title and detail
    may carry text from the host (relayed problems, certificate names):
    both go through :func:`safe_text`. Exiting is the boundary's job."""
    title, detail = safe_text(err.title), safe_text(err.detail)
    if fmt.as_json:
        doc = {
            "exit_code": err.exit_code,
            **dict(fmt.extra),
            "error": {
                "type": safe_text(err.problem_type),
                "title": title,
                "detail": detail,
                "exit_code": err.exit_code,
            },
        }
        click.echo(json.dumps(doc, indent=fmt.indent))
    else:
        click.echo(f"stockade: {title}: {detail}", err=True)
