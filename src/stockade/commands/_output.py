"""How every ``stockade`` command reports a StockadeError: one line
``stockade: <title>: <detail>`` on stderr, or with ``--json`` an error
document on stdout; then it exits with the error's code (docs/exit-codes.md)."""

from __future__ import annotations

import json
import sys
from typing import NoReturn

import click

from stockade.errors import StockadeError


def fail(err: StockadeError, as_json: bool, *, indent: int | None = None, **extra: object) -> NoReturn:
    """Print ``err`` and exit with its code. The JSON document is
    ``{"exit_code", **extra, "error": {type, title, detail, exit_code}}``,
    printed with ``indent`` (None: one line)."""
    if as_json:
        doc = {
            "exit_code": err.exit_code,
            **extra,
            "error": {
                "type": err.problem_type,
                "title": err.title,
                "detail": err.detail,
                "exit_code": err.exit_code,
            },
        }
        click.echo(json.dumps(doc, indent=indent))
    else:
        click.echo(f"stockade: {err.title}: {err.detail}", err=True)
    sys.exit(err.exit_code)
