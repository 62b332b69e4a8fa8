"""The status line ``stockade run`` and ``stockade deploy --host`` show on a
terminal while a deploy goes through its phases (booting, attesting,
verifying, loading, running: :mod:`stockade.client.progress`).

Shown only when stderr is a terminal and neither ``--json`` nor ``-q`` was
given: never in a pipe, a file or a CI log. It is one transient line on
stderr (a spinner, the phase, the time since the deploy began), removed
before anything else is written (the verification summary, the workload's
output, an error), so it never mixes with what the workload prints. rich is
imported only when the line is shown: the non-terminal path does not pay
for it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, TextIO

import click

from stockade.client.plan import RunOptions
from stockade.client.progress import Phase, Progress

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult
    from rich.live import Live

#: What each phase means, after its name on the status line.
PHASE_TEXT = {
    Phase.BOOTING: "starting the Keep",
    Phase.ATTESTING: "the Keep gets its evidence",
    Phase.VERIFYING: "signature, collateral, freshness, policy",
    Phase.LOADING: "workload sent; checking its attestation",
    Phase.RUNNING: "the workload runs",
}

#: Redraws per second (the spinner and the elapsed time).
REFRESH_PER_SECOND = 8.0


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal that can redraw a line (not a pipe,
    a file, a CI log, or a terminal that says it is dumb)."""
    if os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except ValueError:  # a closed stream
        return False


def terminal_console(stream: TextIO) -> Console:
    """The rich console the status line is drawn on (imports rich)."""
    from rich.console import Console

    return Console(file=stream, stderr=True)


def shows_progress(opts: RunOptions, stream: TextIO) -> bool:
    """Whether a deploy with ``opts`` shows the status line on ``stream``."""
    return not opts.as_json and not opts.quiet and is_terminal(stream)


def progress_for(opts: RunOptions, stream: TextIO | None = None) -> Progress:
    """The progress of one deploy, starting in :attr:`Phase.BOOTING`: with a
    status line on ``stream`` (default: stderr) when it is a terminal and
    ``opts`` has neither ``--json`` nor ``-q``, else recording only."""
    stream = sys.stderr if stream is None else stream
    listener = None
    if shows_progress(opts, stream):
        listener = StatusLine(terminal_console(stream))
    progress = Progress(listener)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        # However the command ends, the line is gone before the CLI's error
        # boundary prints an error (the command's context closes first).
        ctx.call_on_close(progress.close)
    progress.enter(Phase.BOOTING)
    return progress


class StatusLine:
    """A :class:`~stockade.client.progress.ProgressListener` drawing one
    transient rich status line (rich ``Live``, transient: removed when
    stopped) on ``console``. The line is started at each phase and removed
    by :meth:`clear`; it never redirects sys.stdout or sys.stderr (the
    workload's output is written to them directly, after :meth:`clear`)."""

    def __init__(self, console: Console, refresh_per_second: float = REFRESH_PER_SECOND) -> None:
        from rich.spinner import Spinner

        self.console = console
        self.refresh_per_second = refresh_per_second
        self._spinner = Spinner("dots", style="cyan")
        self._live: Live | None = None
        self._phase = Phase.BOOTING
        self._began: float | None = None

    def phase(self, phase: Phase, started: float) -> None:
        if self._began is None:
            self._began = started
        self._phase = phase
        if phase is Phase.DONE:
            self.clear()
            return
        if self._live is None:
            from rich.live import Live

            self._live = Live(
                self,
                console=self.console,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
                refresh_per_second=self.refresh_per_second,
            )
            self._live.start(refresh=True)
        else:
            self._live.refresh()

    def clear(self) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            live.stop()

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.text import Text

        now = time.monotonic()
        elapsed = now - (self._began if self._began is not None else now)
        self._spinner.update(
            text=Text.assemble(
                "stockade: ",
                (self._phase.value, "bold"),
                f" {elapsed:4.1f} s  ",
                (PHASE_TEXT.get(self._phase, ""), "dim"),
            )
        )
        line = self._spinner.render(now)
        if isinstance(line, Text):
            # One line, cut to the terminal's width: a wrapped status would
            # take two lines for no gain.
            line.no_wrap, line.overflow = True, "ellipsis"
        yield line
