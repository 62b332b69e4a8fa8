"""The CLI's one error boundary (stockade.cli.StockadeGroup): every
StockadeError from any command becomes its class's exit code and one line
(or the command's --json error document), Ctrl-C becomes 130 and one line,
and no command module exits or catches errors by itself."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from stockade.cli import COMMANDS, StockadeGroup, main
from stockade.errors import ERROR_CLASSES, ExitStatus, ManagerError, StockadeError, WorkloadExit

SRC = Path(__file__).resolve().parent.parent / "src" / "stockade"


class Surprise(StockadeError):
    """A StockadeError subclass no command knows about."""

    exit_code = 97
    problem_type = "surprise"
    title = "surprise"


def _leaves(
    group: click.Group, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            yield from _leaves(command, (*prefix, name))
        else:
            yield (*prefix, name), command


LEAVES = sorted(_leaves(main), key=lambda item: item[0])


def _minimal_args(command: click.Command) -> list[str]:
    """Values for the command's required parameters (any value: the
    callback is replaced and never looks at them)."""
    args: list[str] = []
    for param in command.params:
        if not param.required:
            continue
        if isinstance(param, click.Argument):
            args.append("1" if isinstance(param.type, click.types.IntParamType) else "x")
        else:
            assert isinstance(param, click.Option)
            if isinstance(param.type, click.Choice):
                args += [param.opts[0], str(param.type.choices[0])]
            else:
                args += [param.opts[0], "1" if isinstance(param.type, click.types.IntParamType) else "x"]
    return args


def test_every_command_is_reached_lazily() -> None:
    assert {path[0] for path, _ in LEAVES} == set(COMMANDS)
    assert len(LEAVES) >= 20  # run, deploy, trust and the leaves of the groups


@pytest.mark.parametrize("path,command", LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_an_unexpected_error_from_any_command_is_one_line_with_its_code(
    path: tuple[str, ...], command: click.Command, monkeypatch: pytest.MonkeyPatch
) -> None:
    def raises(**_: object) -> None:
        raise Surprise("nobody expected \x1b[31mthis")

    monkeypatch.setattr(command, "callback", raises)
    result = CliRunner().invoke(main, [*path, *_minimal_args(command)], env={"STOCKADE_TOKEN": "t"})
    assert result.exit_code == Surprise.exit_code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr == "stockade: surprise: nobody expected \\x1b[31mthis\n"
    assert result.stdout == ""


def _root_raising(outcome: BaseException | int | None) -> click.Group:
    @click.group(cls=StockadeGroup)
    def root() -> None:
        pass

    from stockade.commands._output import json_option

    @root.command()
    @json_option("JSON.", indent=2, exit_code_source="stockade")
    def act(as_json: bool) -> int | None:
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return root


@pytest.mark.parametrize("cls", [*ERROR_CLASSES, ManagerError, Surprise])
def test_each_error_class_maps_to_its_code(cls: type[StockadeError]) -> None:
    result = CliRunner().invoke(_root_raising(cls("what went wrong")), ["act"])
    assert result.exit_code == cls.exit_code
    assert result.stderr == f"stockade: {cls.title}: what went wrong\n"
    doc_result = CliRunner().invoke(_root_raising(cls("what went wrong")), ["act", "--json"])
    assert doc_result.exit_code == cls.exit_code
    assert doc_result.stderr == ""
    doc = json.loads(doc_result.stdout)
    assert doc == {
        "exit_code": cls.exit_code,
        "exit_code_source": "stockade",
        "error": {
            "type": cls.problem_type,
            "title": cls.title,
            "detail": "what went wrong",
            "exit_code": cls.exit_code,
        },
    }
    assert doc_result.stdout.startswith('{\n  "exit_code"')  # indent=2, as the command asked


def test_interrupt_is_130_and_one_line() -> None:
    result = CliRunner().invoke(_root_raising(KeyboardInterrupt()), ["act"])
    assert result.exit_code == ExitStatus.INTERRUPTED == 130
    assert result.stderr == "stockade: interrupted\n"


@pytest.mark.parametrize("status", [None, ExitStatus.OK, ExitStatus.WAIT_TIMED_OUT, 115])
def test_a_returned_status_is_the_exit_status(status: int | None) -> None:
    result = CliRunner().invoke(_root_raising(status), ["act"])
    assert result.exit_code == (status or 0)
    assert result.output == ""


def test_an_error_that_is_not_a_stockade_error_is_not_swallowed() -> None:
    result = CliRunner().invoke(_root_raising(RuntimeError("a bug")), ["act"])
    assert isinstance(result.exception, RuntimeError)  # a bug shows as one, never as a clean exit


def test_a_workload_exit_code_passes_through(stockade, tmp_path: Path, wasm) -> None:  # type: ignore[no-untyped-def]
    proc = stockade("run", "--allow-sim", "--quiet", str(wasm("exit7")))
    assert proc.returncode == 7, proc.stderr
    assert isinstance(WorkloadExit(7), int)


def _calls(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func)


def test_no_command_module_exits_or_catches_errors_itself() -> None:
    """Only the boundary in stockade/cli.py exits and maps StockadeError and
    KeyboardInterrupt; command modules raise or return a status."""
    modules = sorted((SRC / "commands").glob("*.py"))
    assert len(modules) >= 10
    found: list[str] = []
    for path in modules:
        tree = ast.parse(path.read_text(), str(path))
        for call in _calls(tree):
            if call in (
                "sys.exit",
                "os._exit",
                "ctx.exit",
                "exit",
                "quit",
                "click.get_current_context().exit",
            ):
                found.append(f"{path.name}: {call}()")
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None and "SystemExit" in ast.unparse(node.exc):
                found.append(f"{path.name}: raise SystemExit")
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                caught = ast.unparse(node.type)
                if "KeyboardInterrupt" in caught or "SystemExit" in caught:
                    found.append(f"{path.name}: except {caught}")
                if "StockadeError" in caught:
                    # Allowed only where an error is an answer, not a failure
                    # of the command (the status poll of a remote Keep).
                    body = ast.unparse(node)
                    if "return None" not in body:
                        found.append(f"{path.name}: except {caught}")
    assert found == []


def test_only_the_boundary_exits_in_cli_module() -> None:
    tree = ast.parse((SRC / "cli.py").read_text())
    exits = [
        f"{fn.name}: {call}"
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef)
        for call in _calls(fn)
        if call in ("sys.exit", "os._exit")
    ]
    assert sorted(exits) == ["exit_now: os._exit", "invoke: sys.exit", "invoke: sys.exit", "invoke: sys.exit"]


@pytest.mark.skipif(sys.platform != "linux", reason="POSIX signals")
def test_ctrl_c_during_a_run_exits_130_with_one_line(state_dir: Path, wasm) -> None:  # type: ignore[no-untyped-def]
    """SIGINT to `stockade run` while its workload runs: 130, one line, no
    traceback; the workload does not finish."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "stockade", "run", "--allow-sim", "--quiet", str(wasm("sleep"))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "STOCKADE_STATE_DIR": str(state_dir)},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"sleeping\n"  # the workload runs in its Keep
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert b"Traceback" not in err
    assert err.splitlines()[-1] == b"stockade: interrupted"
    assert err.count(b"stockade: interrupted") == 1
    assert b"awake" not in out
