"""The ``stockade`` command line: the root group, its one error boundary,
and the sub-commands, loaded on demand from :mod:`stockade.commands`.

The boundary (:class:`StockadeGroup`) is the only place that turns an
outcome into an exit status, as sigstore-python's ``_cli.py`` ``main()``
wraps every sub-command in one ``except Error: e.log_and_exit()``
(https://github.com/sigstore/sigstore-python, sigstore/_cli.py):

- a :class:`~stockade.errors.StockadeError` from any command is printed in
  one line (or as the command's ``--json`` error document,
  :func:`stockade.commands._output.print_error`) and exits with the class's
  code;
- Ctrl-C prints one line and exits 130 (:class:`~stockade.errors.ExitStatus`);
- a command's return value is its exit status: ``None`` (0), an
  :class:`~stockade.errors.ExitStatus`, or a
  :class:`~stockade.errors.WorkloadExit` (the workload's code, passed
  through as is; the process then ends without interpreter teardown).

Every exit code is defined in :mod:`stockade.errors` (docs/exit-codes.md).
Command modules import their heavy dependencies inside their functions, and
this module imports a command module only when that command runs (or
``--help`` lists it), so that ``stockade run`` starts its Keep early.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, NoReturn

import click

from stockade import __version__
from stockade.errors import ExitStatus, StockadeError, WorkloadExit

#: Sub-command name -> "module:attribute" of its click command or group.
COMMANDS: dict[str, str] = {
    "collateral": "stockade.commands.collateral:collateral",
    "connect": "stockade.commands.connect:connect",
    "deploy": "stockade.commands.remote:deploy",
    "evidence": "stockade.commands.evidence:evidence",
    "fleet": "stockade.commands.fleet:fleet",
    "host": "stockade.commands.host:host",
    "image": "stockade.commands.image:image",
    "keeps": "stockade.commands.remote:keeps",
    "key": "stockade.commands.package:key",
    "log": "stockade.commands.log:log",
    "package": "stockade.commands.package:package",
    "policy": "stockade.commands.policy:policy",
    "run": "stockade.commands.run:run",
    "steward": "stockade.commands.steward:steward",
    "trust": "stockade.commands.trust:trust",
}


def exit_now(code: int) -> NoReturn:
    """Exit without interpreter teardown (saves tens of ms after a run);
    everything the user sees has been written and is flushed here."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class StockadeGroup(click.Group):
    """The root group: loads sub-commands on demand and is the CLI's one
    error boundary (module docstring)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in COMMANDS:
            module, _, attr = COMMANDS[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attr)
            assert isinstance(command, click.Command)
            self.add_command(command, cmd_name)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        from stockade.commands._output import ERROR_FORMAT, ErrorFormat, print_error

        try:
            status = super().invoke(ctx)
        except StockadeError as err:
            print_error(err, ctx.meta.get(ERROR_FORMAT) or ErrorFormat())
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("stockade: interrupted", err=True)
            sys.exit(ExitStatus.INTERRUPTED)
        if isinstance(status, WorkloadExit):
            exit_now(status)
        if status:
            sys.exit(int(status))
        return status


@click.group(cls=StockadeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stockade")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Say on stderr whether run/deploy ran in this user's client agent or in this process, and why "
    "(STOCKADE_AGENT=0 turns the agent off; docs/adr/0028-client-agent.md).",
)
def main(verbose: bool) -> None:
    """Run WebAssembly workloads in attested TEE Keeps."""
    # The launcher (stockade.launcher) has acted on --verbose before this runs.


if __name__ == "__main__":  # pragma: no cover
    main()
