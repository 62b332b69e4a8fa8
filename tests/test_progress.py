"""The deploy progress (client/progress.py) and its status line on a terminal
(commands/_progress.py): phases in order, recorded for timings; shown only
on a terminal without --json/-q; gone before the workload's first byte and
before an error; nothing added when stderr is not a terminal.

Terminal output is checked through a small screen model (:func:`screen`)
that applies the control sequences rich writes (carriage return, cursor up,
erase line), so "gone" means gone from the screen a user would see.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from click.testing import CliRunner, Result

from conftest import run_options
from stockade.client.plan import RunOptions
from stockade.client.progress import Phase, Progress
from stockade.commands import _progress
from stockade.commands._progress import StatusLine, progress_for

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"
ORDER = ["booting", "attesting", "verifying", "loading", "running"]

# ----------------------------------------------------------------------------- a screen model

_CSI = re.compile(r"\x1b\[(\??)([0-9;]*)([A-Za-z])")
_SGR = re.compile(r"\x1b\[[0-9;]*m")


def screen(raw: str) -> list[str]:
    """The lines a terminal shows after ``raw``: text, ``\\n``, ``\\r``,
    CSI n A (cursor up), CSI 2 K (erase line), SGR and cursor show/hide
    (no effect on text). Any other control sequence fails the test."""
    lines: list[list[str]] = [[]]
    row = col = 0
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\x1b":
            m = _CSI.match(raw, i)
            assert m, f"unexpected escape at {i}: {raw[i : i + 10]!r}"
            private, params, final = m.groups()
            if final == "A":
                row = max(0, row - int(params or "1"))
            elif final == "K":
                assert params == "2", m.group()
                lines[row] = []
            elif not (final == "m" or (private and params == "25" and final in "hl")):
                raise AssertionError(f"unexpected control sequence {m.group()!r}")
            i = m.end()
            continue
        if ch == "\n":
            row, col = row + 1, 0
            while len(lines) <= row:
                lines.append([])
        elif ch == "\r":
            col = 0
        else:
            line = lines[row]
            line.extend(" " * (col - len(line)))
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
        i += 1
    text = ["".join(line).rstrip() for line in lines]
    while text and not text[-1]:
        text.pop()
    return text


def shown_phases(raw: str) -> list[str]:
    """Phase names of the status frames in ``raw``, consecutive repeats merged."""
    names = re.findall(r"stockade: ([a-z]+) +\d+\.\d s", _SGR.sub("", raw))
    return [n for k, n in enumerate(names) if k == 0 or names[k - 1] != n]


def test_screen_model() -> None:
    assert screen("ab\rc\n") == ["cb"]
    assert screen("one\nstatus\r\n\x1b[1A\x1b[2Ktwo\n") == ["one", "two"]
    with pytest.raises(AssertionError):
        screen("\x1b[H")


# ----------------------------------------------------------------------------- Progress


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Phase | None]] = []

    def phase(self, phase: Phase, started: float) -> None:
        self.calls.append(("phase", phase))

    def clear(self) -> None:
        self.calls.append(("clear", None))


def ticking() -> Iterator[float]:
    t = 100.0
    while True:
        yield t
        t += 0.5


def test_phases_are_recorded_in_order_with_their_start() -> None:
    clock = ticking()
    progress = Progress(clock=lambda: next(clock))
    for phase in Phase:
        progress.enter(phase)
    assert progress.phases == tuple((p, 100.0 + 0.5 * i) for i, p in enumerate(Phase))
    assert progress.durations_ms() == {p.value: 500.0 for p in list(Phase)[:-1]}
    assert progress.current is Phase.DONE


def test_phases_only_move_forward() -> None:
    recorder = Recorder()
    progress = Progress(recorder)
    progress.enter(Phase.BOOTING)
    progress.enter(Phase.VERIFYING)  # attesting not seen (no hook): skipped, not invented
    progress.enter(Phase.ATTESTING)  # late (a second report request): ignored
    progress.enter(Phase.VERIFYING)  # again: ignored
    progress.enter(Phase.LOADING)
    assert [p for p, _ in progress.phases] == [Phase.BOOTING, Phase.VERIFYING, Phase.LOADING]
    assert recorder.calls == [("phase", Phase.BOOTING), ("phase", Phase.VERIFYING), ("phase", Phase.LOADING)]


def test_done_and_close_end_the_progress() -> None:
    recorder = Recorder()
    progress = Progress(recorder)
    progress.enter(Phase.RUNNING)
    progress.enter(Phase.DONE)
    progress.enter(Phase.DONE)
    assert recorder.calls == [("phase", Phase.RUNNING), ("phase", Phase.DONE)]

    recorder = Recorder()
    failed = Progress(recorder)
    failed.enter(Phase.BOOTING)
    failed.close()
    failed.close()
    failed.enter(Phase.ATTESTING)  # e.g. the PSP thread, after the deploy failed
    assert recorder.calls == [("phase", Phase.BOOTING), ("clear", None), ("clear", None)]
    assert [p for p, _ in failed.phases] == [Phase.BOOTING]


def test_clear_reaches_the_listener_and_is_harmless_without_one() -> None:
    recorder = Recorder()
    Progress(recorder).clear()
    assert recorder.calls == [("clear", None)]
    Progress().clear()  # no listener: nothing to do


def test_enter_from_two_threads_keeps_one_order() -> None:
    progress = Progress()
    progress.enter(Phase.BOOTING)
    threads = [threading.Thread(target=progress.enter, args=(Phase.ATTESTING,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p for p, _ in progress.phases] == [Phase.BOOTING, Phase.ATTESTING]


# ----------------------------------------------------------------------------- when it is shown


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def opts(**kw: object) -> RunOptions:
    return run_options(HELLO, **kw)


@pytest.mark.parametrize(
    ("stream", "kw", "shown"),
    [
        (io.StringIO(), {}, False),  # a pipe, a file, a CI log
        (Tty(), {"quiet": True}, False),
        (Tty(), {"as_json": True}, False),
        (Tty(), {}, True),
    ],
)
def test_shown_only_on_a_terminal_without_json_or_quiet(
    stream: io.StringIO, kw: dict[str, object], shown: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TERM", raising=False)
    progress = progress_for(opts(**kw), stream)
    try:
        assert progress.current is Phase.BOOTING
        assert (progress._listener is not None) is shown
    finally:
        progress.close()
    if not shown:
        assert stream.getvalue() == ""


def test_a_dumb_terminal_gets_no_status_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "dumb")
    stream = Tty()
    progress_for(opts(), stream).close()
    assert stream.getvalue() == ""


def test_status_line_shows_each_phase_and_is_gone_when_cleared() -> None:
    from rich.console import Console

    out = io.StringIO()
    progress = Progress(StatusLine(Console(file=out, force_terminal=True, width=120), refresh_per_second=50))
    progress.enter(Phase.BOOTING)
    time.sleep(0.1)  # a few redraws by rich's refresh thread
    progress.enter(Phase.ATTESTING)
    progress.enter(Phase.VERIFYING)
    progress.clear()
    out.write("summary line\n")
    progress.enter(Phase.LOADING)
    progress.enter(Phase.RUNNING)
    progress.clear()
    out.write("workload output\n")
    progress.enter(Phase.DONE)
    raw = out.getvalue()
    assert shown_phases(raw) == ORDER
    assert screen(raw) == ["summary line", "workload output"]
    # Nothing is drawn after the workload's output, not even by the refresh thread.
    time.sleep(0.1)
    assert out.getvalue().endswith("workload output\n")


# ----------------------------------------------------------------------------- the sim PSP's hook


def test_sim_psp_tells_when_the_first_request_arrives(state_dir: Path) -> None:
    from stockade.evidence.sim.attester import SimAttester
    from stockade.evidence.sim.local import serve_in_thread

    calls: list[float] = []
    sock = serve_in_thread(state_dir, b"\x11" * 48, on_first_request=lambda: calls.append(time.monotonic()))
    with sock:
        time.sleep(0.2)
        assert calls == []  # the Keep has not asked yet: still booting
        attester = SimAttester(sock)
        first = attester.evidence(b"\x01" * 64)
        second = attester.evidence(b"\x02" * 64)
    assert len(calls) == 1
    assert first.report != second.report  # both requests served in full: the peek lost no byte


def test_a_failing_hook_does_not_stop_the_sim_psp(state_dir: Path) -> None:
    from stockade.evidence.sim.attester import SimAttester
    from stockade.evidence.sim.local import serve_in_thread

    def broken() -> None:
        raise OSError("the terminal went away")

    with serve_in_thread(state_dir, b"\x11" * 48, on_first_request=broken) as sock:
        assert SimAttester(sock).evidence(b"\x01" * 64).report


def test_the_hook_is_not_called_when_the_keep_never_asks(state_dir: Path) -> None:
    from stockade.evidence.sim.local import serve_in_thread

    calls: list[int] = []
    sock = serve_in_thread(state_dir, b"\x11" * 48, on_first_request=lambda: calls.append(1))
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    time.sleep(0.2)
    assert calls == []


# ----------------------------------------------------------------------------- stockade run


def _invoke(args: list[str], state_dir: Path) -> Result:
    """The CLI in this process (CliRunner), with stdout and stderr captured
    apart and interleaved (``Result.output``, as a terminal shows them)."""
    from stockade import cli

    def exit_now(code: int) -> NoReturn:
        raise SystemExit(code)  # the CLI's os._exit would end pytest

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "exit_now", exit_now)
        return CliRunner().invoke(cli.main, args, env={"STOCKADE_STATE_DIR": str(state_dir), "TERM": "xterm"})


def force_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """stderr counts as a terminal; the status line is drawn by a rich
    console forced to terminal mode on it (CliRunner's stream)."""
    from rich.console import Console

    monkeypatch.setattr(_progress, "is_terminal", lambda stream: True)
    monkeypatch.setattr(
        _progress, "terminal_console", lambda stream: Console(file=stream, force_terminal=True, width=120)
    )


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    force_terminal(monkeypatch)


@pytest.mark.slow
def test_run_not_on_a_terminal_adds_nothing(state_dir: Path) -> None:
    result = _invoke(["run", "--allow-sim", str(HELLO), "Bob"], state_dir)
    assert result.exit_code == 0, result.output
    assert result.stdout == "Hello, Bob!\narguments: 1\n"
    assert result.stderr.startswith("stockade: Keep attested and verified\n")
    assert "\x1b" not in result.output and "\r" not in result.output
    assert shown_phases(result.output) == []
    assert not any(name in result.stderr for name in ("booting", "attesting", "loading"))


@pytest.mark.slow
def test_run_on_a_terminal_shows_the_phases_and_clears_them_before_output(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = _invoke(["run", "--allow-sim", str(HELLO), "Bob"], state_dir)
    force_terminal(monkeypatch)
    result = _invoke(["run", "--allow-sim", str(HELLO), "Bob"], state_dir)
    assert result.exit_code == 0, result.output
    raw = result.output  # stdout and stderr interleaved, as on the terminal
    assert shown_phases(raw) == ORDER
    # The status is gone from the screen before the workload's first byte ...
    first_output = raw.index("Hello, Bob!")
    assert not any("stockade: running" in line for line in screen(raw[:first_output]))
    assert shown_phases(raw[first_output:]) == []
    # ... and the screen ends up exactly as without a terminal: the summary
    # lines as they are, then the workload's output.
    assert plain.exit_code == 0, plain.output
    assert screen(raw) == (plain.stderr + plain.stdout).splitlines()
    assert result.stdout == plain.stdout == "Hello, Bob!\narguments: 1\n"


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["-q", "--json"])
def test_run_on_a_terminal_with_quiet_or_json_shows_no_status(
    state_dir: Path, terminal: None, flag: str
) -> None:
    result = _invoke(["run", "--allow-sim", flag, str(HELLO), "Bob"], state_dir)
    assert result.exit_code == 0, result.output
    assert shown_phases(result.output) == []
    assert "\x1b" not in result.output


@pytest.mark.slow
def test_run_on_a_terminal_clears_the_status_before_an_error(state_dir: Path, terminal: None) -> None:
    # No --allow-sim: the default policy refuses the sim Keep after verifying it.
    result = _invoke(["run", str(HELLO), "Bob"], state_dir)
    assert result.exit_code != 0
    assert shown_phases(result.output) == ["booting", "attesting", "verifying"]
    shown = screen(result.output)
    assert len(shown) == 1 and shown[0].startswith("stockade: "), shown
    assert "policy" in shown[0]


@pytest.mark.slow
def test_run_does_not_import_rich_when_stderr_is_not_a_terminal(state_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "stockade", "run", "--allow-sim", str(HELLO), "Bob"],
        capture_output=True,
        timeout=120,
        env={**os.environ, "STOCKADE_STATE_DIR": str(state_dir)},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    imported = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", proc.stderr.decode(), re.MULTILINE)
    assert "stockade.commands._progress" in imported  # the measurement saw the progress path
    assert [m for m in imported if m == "rich" or m.startswith("rich.")] == []


# ----------------------------------------------------------------------------- stockade deploy --host


@pytest.fixture(scope="module")
def server(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from manager_support import running_server

    with running_server(state_dir, tmp_path_factory) as srv:
        yield srv


@pytest.mark.slow
def test_deploy_on_a_terminal_shows_the_phases_and_clears_them_before_output(
    server: object, state_dir: Path, terminal: None
) -> None:
    from manager_support import Server

    assert isinstance(server, Server)
    args = ["deploy", "--host", server.url, "--token-file", str(server.token_file)]
    args += ["--allow-sim", "--sim-root", str(server.state / "sim" / "chip" / "ark.der"), str(HELLO), "Bob"]
    result = _invoke(args, state_dir)
    assert result.exit_code == 0, result.output
    raw = result.output
    assert shown_phases(raw) == ORDER
    first_output = raw.index("Hello, Bob!")
    assert shown_phases(raw[first_output:]) == []
    shown = screen(raw)
    assert shown[0] == "stockade: Keep attested and verified"
    assert shown[-2:] == ["Hello, Bob!", "arguments: 1"]
    assert not any("stockade: running" in line or "stockade: booting" in line for line in shown)


@pytest.mark.slow
def test_timings_prints_phases_and_steps_after_the_run(stockade) -> None:
    proc = stockade("run", "--allow-sim", "-q", "--timings", str(HELLO), "Ann")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"Hello, Ann!\narguments: 1\n"
    err = proc.stderr.decode()
    table = err[err.index("stockade: timings (ms)") :]
    for name in ("booting", "attesting", "verifying", "loading", "running"):
        assert re.search(rf"^    {name} +\d+\.\d$", table, re.M), name
    for step in ("attest_and_handshake", "verify", "identity", "evidence", "compile", "wait_hello"):
        assert re.search(rf"^    {step} +\d+\.\d", table, re.M), step
    assert "Keep steps (measured inside the Keep)" in table
    as_json = stockade("run", "--allow-sim", "--json", "--timings", str(HELLO))
    doc = json.loads(as_json.stdout)
    assert {"phase_booting", "phase_running", "keep_compile", "verify"} <= set(doc["timing_ms"])
    assert b"stockade: timings" not in as_json.stderr  # --json carries them instead
