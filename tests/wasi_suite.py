"""Harness for the vendored WASI conformance tests (WebAssembly/wasi-testsuite).

The prebuilt ``wasm32-wasip1`` test programs live in ``tests/data/wasi-testsuite``
(see its PROVENANCE.md). Each ``*.wasm`` is a test case; a ``.json`` file of the
same base name holds its specification (SPECIFICATION.md next to the data).

The harness has four steps, kept apart so that any runner can reuse them:

``discover(suite_dir) -> list[Case]``
    Parse every case's specification into a frozen :class:`Case` (arguments,
    environment, preopened root, expected exit code / stdout / stderr). A case
    the harness cannot drive (sockets ``connect``/``send``/``recv``, WASI
    proposals, HTTP servers, ...) carries a ``skip_reason``.
``prepare(case, tmp_path) -> PreparedCase``
    Copy the module and its root directory into a scratch directory (the tests
    write into their root), delete ``*.cleanup`` artifacts there, and compute
    the exact WASI configuration: ``argv``, ``env`` and the host directory to
    preopen as ``/``.
a runner: ``(PreparedCase) -> (exit_code, stdout, stderr)``
    Executes the module with exactly that WASI configuration and returns the
    exit status and the raw bytes of the guest's stdout and stderr.
    :func:`run_bare` is the reference runner: plain wasmtime-py in a fresh
    subprocess.
``check(case, exit_code, stdout, stderr) -> list[str]``
    Compare the outcome with the specification; an empty list means pass.

Plugging in another runner -- e.g. stockade's own ``stockade run`` -- only needs
a callable with the runner signature. It must honour ``prepared.argv``
(``argv[0]`` is the module's file name, as the wasmtime CLI passes it),
``prepared.env`` (the complete WASI environment; nothing inherited from the
host) and ``prepared.root`` (when not ``None``, preopen that host directory as
the guest's ``/``, writable), and run ``prepared.wasm``. It should report the
guest's exit status the way the wasmtime CLI does: ``0`` when ``_start``
returns, ``n`` for ``proc_exit(n)``, ``134`` for a trap. For example::

    def run_stockade(prepared: PreparedCase) -> tuple[int, bytes, bytes]:
        cmd = ["stockade", "run", str(prepared.wasm), "--", *prepared.argv[1:]]
        ...  # map prepared.env / prepared.root onto stockade's options
        proc = subprocess.run(cmd, capture_output=True, timeout=60, cwd=prepared.workdir)
        return proc.returncode, proc.stdout, proc.stderr

    @pytest.mark.parametrize("case", pytest_params(discover(SUITE_DIR), KNOWN_STOCKADE_FAILURES))
    def test_wasi_stockade(case, tmp_path):
        assert run_case(case, tmp_path, run_stockade) == []

:data:`KNOWN_BARE_FAILURES` lists the cases that fail on bare wasmtime-py (with
the reason); a runner that promises "same behaviour as wasmtime" should start
from that list rather than from an empty one.

Checking rules (SPECIFICATION.md, and the upstream reference executor where the
specification is silent):

* the exit code must equal the expected one (default ``0``);
* stdout / stderr are compared only when the specification names them (legacy
  ``"stdout"`` / ``"stderr"`` keys, or ``read`` operations, whose payloads are
  concatenated per stream). The reference executor skips absent streams too.
  Where it compares, this harness is stricter than upstream: the whole stream
  must equal the expected UTF-8 bytes, while upstream's ``read`` consumes only
  ``len(payload)`` characters (a prefix check, so an empty payload checks
  nothing).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUITE_DIR = Path(__file__).resolve().parent / "data" / "wasi-testsuite"
"""The vendored copy of the upstream test suite."""

SUBSUITES = ("c", "assemblyscript")
"""Subdirectories of the suite that hold test cases."""

TRAP_EXIT_CODE = 134
"""Exit status of the wasmtime CLI when the guest traps (128 + SIGABRT on Unix)."""

ERROR_EXIT_CODE = 1
"""Exit status of the wasmtime CLI for a non-trap error (e.g. instantiation fails)."""

KNOWN_BARE_FAILURES: dict[str, str] = {}
"""Case id -> precise reason, for cases that fail on bare wasmtime-py.

Shared with other runners' tests: they are expected to fail there too unless the
runner fixes them. Used with ``pytest.mark.xfail(strict=True)``, so an entry
that starts passing turns the test red and must be removed.
"""

LEGACY_KEYS = frozenset({"args", "root", "env", "exit_code", "stderr", "stdout"})
OPERATION_KEYS = frozenset({"operations", "proposals", "world", "servers"})
UNSUPPORTED_OPERATIONS = frozenset({"connect", "send", "recv", "write", "request", "kill"})


@dataclass(frozen=True)
class Case:
    """One test case of the suite and what its specification expects."""

    id: str
    """``<subsuite>/<base name>``, e.g. ``"c/lseek"``."""
    wasm: Path
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict, hash=False)
    root: str | None = None
    """Directory, relative to the wasm's directory, to preopen as ``/``."""
    exit_code: int = 0
    stdout: str | None = None
    """Expected stdout; ``None`` when not checked."""
    stderr: str | None = None
    """Expected stderr; ``None`` when not checked."""
    skip_reason: str | None = None
    """Why this harness cannot run the case (``None``: it can)."""

    @property
    def spec_path(self) -> Path:
        return self.wasm.with_suffix(".json")


@dataclass(frozen=True)
class PreparedCase:
    """A case copied into a scratch directory, with its exact WASI configuration."""

    case: Case
    workdir: Path
    """Scratch directory holding the copies; a good working directory for a runner."""
    wasm: Path
    """The copy of the module to run."""
    argv: tuple[str, ...]
    """Complete WASI argv: ``(<wasm file name>, *case.args)``."""
    env: dict[str, str] = field(hash=False)
    """Complete WASI environment (nothing may be inherited from the host)."""
    root: Path | None
    """Host directory to preopen as the guest's ``/`` (writable), or ``None``."""


Runner = Callable[[PreparedCase], tuple[int, bytes, bytes]]
"""A runner executes a prepared case and returns ``(exit_code, stdout, stderr)``."""


# --------------------------------------------------------------------------- discovery


def discover(suite_dir: Path = SUITE_DIR) -> list[Case]:
    """Every ``*.wasm`` in the suite's ``c/`` and ``assemblyscript/``, sorted by id."""
    suite_dir = Path(suite_dir)
    cases = []
    for sub in SUBSUITES:
        sub_dir = suite_dir / sub
        if not sub_dir.is_dir():
            raise FileNotFoundError(f"WASI test suite directory missing: {sub_dir}")
        for wasm in sorted(sub_dir.glob("*.wasm")):
            cases.append(load_case(wasm, f"{sub}/{wasm.stem}"))
    return cases


def load_case(wasm: Path, case_id: str) -> Case:
    """Build the :class:`Case` for ``wasm`` from its ``.json`` (or the default spec)."""
    spec_path = wasm.with_suffix(".json")
    spec: dict[str, Any] = {}
    if spec_path.exists():
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
        if not isinstance(spec, dict):
            raise ValueError(f"{spec_path}: specification must be a JSON object")
    try:
        fields = _parse_spec(spec)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{spec_path}: {exc}") from exc
    return Case(id=case_id, wasm=wasm, **fields)


def _parse_spec(spec: dict[str, Any]) -> dict[str, Any]:
    keys = set(spec)
    if keys & OPERATION_KEYS and keys & LEGACY_KEYS:
        raise ValueError("cannot mix legacy and operation-based configuration keys")
    if keys & OPERATION_KEYS:
        return _parse_operation_spec(spec)
    unknown = keys - LEGACY_KEYS
    if unknown:
        raise ValueError(f"unknown configuration keys {sorted(unknown)}")
    return {
        **_run_fields(spec),
        "exit_code": _int(spec.get("exit_code", 0), "exit_code"),
        "stdout": _opt_str(spec.get("stdout"), "stdout"),
        "stderr": _opt_str(spec.get("stderr"), "stderr"),
    }


def _parse_operation_spec(spec: dict[str, Any]) -> dict[str, Any]:
    unknown = set(spec) - OPERATION_KEYS
    if unknown:
        raise ValueError(f"unknown configuration keys {sorted(unknown)}")
    skip: list[str] = []
    proposals = spec.get("proposals") or []
    if proposals:
        skip.append(f"needs WASI proposals {list(proposals)}")
    if spec.get("servers"):
        skip.append("needs HTTP servers")
    if spec.get("world", "wasi:cli/command") != "wasi:cli/command":
        skip.append(f"targets world {spec['world']!r}")

    operations = spec.get("operations")
    if operations is None:  # SPECIFICATION.md: default is run + wait
        operations = [{"type": "run"}, {"type": "wait"}]
    if not isinstance(operations, list):
        raise ValueError("operations must be a list")

    fields: dict[str, Any] = {"exit_code": 0, "stdout": None, "stderr": None}
    runs = waits = 0
    running = False
    for op in operations:
        kind = op.get("type") if isinstance(op, dict) else None
        if kind == "run":
            if running:
                raise ValueError("run operation while a run is still unwaited")
            runs += 1
            running = True
            fields.update(_run_fields(op))
        elif kind == "wait":
            if not running:
                raise ValueError("wait operation without a preceding run")
            waits += 1
            running = False
            fields["exit_code"] = _int(op.get("exit_code", 0), "exit_code")
        elif kind == "read":
            if not running:
                raise ValueError("read operation outside a run")
            stream = op.get("id", "stdout")
            if stream not in ("stdout", "stderr"):
                raise ValueError(f"read from unknown stream {stream!r}")
            payload = _opt_str(op.get("payload", ""), "payload") or ""
            fields[stream] = (fields[stream] or "") + payload
        elif kind in UNSUPPORTED_OPERATIONS:
            if not running:
                raise ValueError(f"{kind} operation outside a run")
            skip.append(f"needs operation {kind!r}")
        else:
            raise ValueError(f"unsupported operation {op!r}")
    if running:
        raise ValueError("run operation without a matching wait")
    if runs != 1:
        skip.append(f"has {runs} run operations; the harness runs exactly one")
    if skip:
        fields["skip_reason"] = "; ".join(dict.fromkeys(skip))
    return fields


def _run_fields(spec: Mapping[str, Any]) -> dict[str, Any]:
    args = spec.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError("args must be a list of strings")
    env = spec.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ValueError("env must map strings to strings")
    root = _opt_str(spec.get("root"), "root") or None
    if root is not None and (Path(root).is_absolute() or ".." in Path(root).parts):
        raise ValueError(f"root must be a relative path inside the suite: {root!r}")
    return {"args": tuple(args), "env": dict(env), "root": root}


def _int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer")
    return value


def _opt_str(value: Any, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    return value


# --------------------------------------------------------------------------- preparation


def prepare(case: Case, tmp_path: Path) -> PreparedCase:
    """Copy the case's module and root directory into ``tmp_path``.

    ``*.cleanup`` artifacts are removed from the copy (SPECIFICATION.md,
    "Execution Preparation") and everything is made writable, since the vendored
    files may be read-only and tests create files in their root.
    """
    if case.skip_reason is not None:
        raise ValueError(f"{case.id} cannot be run by this harness: {case.skip_reason}")
    workdir = Path(tmp_path)
    workdir.mkdir(parents=True, exist_ok=True)
    wasm = workdir / case.wasm.name
    shutil.copyfile(case.wasm, wasm)
    root = None
    if case.root is not None:
        source = case.wasm.parent / case.root
        if not source.is_dir():
            raise FileNotFoundError(f"{case.id}: root directory missing: {source}")
        root = workdir / case.root
        shutil.copytree(source, root, symlinks=True)
        remove_cleanup_artifacts(root)
        _make_writable(root)
    return PreparedCase(
        case=case,
        workdir=workdir,
        wasm=wasm,
        argv=(case.wasm.name, *case.args),
        env=dict(case.env),
        root=root,
    )


def remove_cleanup_artifacts(directory: Path) -> None:
    """Delete ``*.cleanup`` files and directories below ``directory`` (not symlinks)."""
    for path in sorted(directory.glob("**/*.cleanup"), reverse=True):
        if path.is_symlink() or not path.exists():
            continue
        if path.is_dir():
            _make_writable(path)
            shutil.rmtree(path)
        else:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
            path.unlink()


def _make_writable(directory: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in [".", *dirnames, *filenames]:
            path = Path(dirpath, name)
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | stat.S_IWUSR | stat.S_IRUSR)


# --------------------------------------------------------------------------- checking


def check(case: Case, exit_code: int, stdout: bytes, stderr: bytes) -> list[str]:
    """Human-readable mismatches between an outcome and the case's spec (empty = pass)."""
    problems = []
    if exit_code != case.exit_code:
        problems.append(f"exit code: expected {case.exit_code}, got {exit_code}")
    streams = (("stdout", case.stdout, stdout), ("stderr", case.stderr, stderr))
    for name, expected, actual in streams:
        if expected is not None and actual != expected.encode("utf-8"):
            problems.append(f"{name}: expected {_show(expected.encode('utf-8'))}, got {_show(actual)}")
    if problems:
        # Context for the reader: what the guest printed that was not compared.
        for name, expected, actual in streams:
            if expected is None and actual:
                problems.append(f"({name} was {_show(actual)})")
    return problems


def _show(data: bytes, limit: int = 400) -> str:
    text = repr(data[:limit])
    return text + f"... ({len(data)} bytes)" if len(data) > limit else text


def run_case(case: Case, tmp_path: Path, runner: Runner) -> list[str]:
    """Prepare ``case`` in ``tmp_path``, run it with ``runner`` and check the outcome."""
    prepared = prepare(case, tmp_path)
    exit_code, stdout, stderr = runner(prepared)
    return check(case, exit_code, stdout, stderr)


# --------------------------------------------------------------------------- bare runner

_BARE_RUNNER = r"""
import json, sys
import wasmtime

cfg = json.loads(sys.argv[1])
result = {"exit_code": None, "message": None}
engine = wasmtime.Engine()
store = wasmtime.Store(engine)
wasi = wasmtime.WasiConfig()
wasi.argv = cfg["argv"]
wasi.env = sorted(cfg["env"].items())
if cfg["root"] is not None:
    wasi.preopen_dir(cfg["root"], "/")
wasi.stdout_file = cfg["stdout"]
wasi.stderr_file = cfg["stderr"]
# Always configure WASI before instantiating: a WASI module instantiated in a
# store without set_wasi() kills the process.
store.set_wasi(wasi)
linker = wasmtime.Linker(engine)
linker.define_wasi()
try:
    module = wasmtime.Module.from_file(engine, cfg["wasm"])
    instance = linker.instantiate(store, module)
    instance.exports(store)["_start"](store)
    result["exit_code"] = 0
except wasmtime.ExitTrap as exc:
    result["exit_code"] = exc.code
except wasmtime.Trap as exc:
    result["exit_code"] = TRAP_EXIT_CODE
    result["message"] = str(exc)
except (wasmtime.WasmtimeError, KeyError) as exc:
    result["exit_code"] = ERROR_EXIT_CODE
    result["message"] = f"{type(exc).__name__}: {exc}"
with open(cfg["result"], "w", encoding="utf-8") as f:
    json.dump(result, f)
""".replace("TRAP_EXIT_CODE", str(TRAP_EXIT_CODE)).replace("ERROR_EXIT_CODE", str(ERROR_EXIT_CODE))


def run_bare(prepared: PreparedCase, timeout: float = 30) -> tuple[int, bytes, bytes]:
    """Run a prepared case on bare wasmtime-py in a fresh ``sys.executable`` subprocess.

    WASI is configured exactly per the spec: ``prepared.argv``, only
    ``prepared.env``, ``prepared.root`` preopened as ``/``; the guest's stdout
    and stderr go to files. Exit code: ``0`` when ``_start`` returns, the code
    of a ``proc_exit`` (``wasmtime.ExitTrap``), 134 for any other trap and 1 for
    other errors (as the wasmtime CLI); the trap or error message is appended
    to stderr as ``Error: <message>``.
    """
    with tempfile.TemporaryDirectory(prefix="wasi-bare-") as scratch:
        out, err, res = (Path(scratch, n) for n in ("stdout", "stderr", "result.json"))
        cfg = {
            "wasm": str(prepared.wasm),
            "argv": list(prepared.argv),
            "env": prepared.env,
            "root": None if prepared.root is None else str(prepared.root),
            "stdout": str(out),
            "stderr": str(err),
            "result": str(res),
        }
        proc = subprocess.run(
            [sys.executable, "-c", _BARE_RUNNER, json.dumps(cfg)],
            cwd=prepared.workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0 or not res.exists():
            raise RuntimeError(
                f"bare wasmtime runner died (status {proc.returncode}) for {prepared.case.id}:\n"
                f"{proc.stderr.decode(errors='replace')}"
            )
        result = json.loads(res.read_text(encoding="utf-8"))
        stdout = out.read_bytes() if out.exists() else b""
        stderr = err.read_bytes() if err.exists() else b""
    if result["message"] is not None:
        stderr += f"Error: {result['message']}\n".encode()
    return result["exit_code"], stdout, stderr


# --------------------------------------------------------------------------- pytest glue


def pytest_params(cases: Iterable[Case], known_failures: Mapping[str, str]) -> list[Any]:
    """``pytest.param`` per case: id = case id, skip / strict xfail marks applied."""
    import pytest

    cases = list(cases)
    stale = set(known_failures) - {c.id for c in cases}
    if stale:
        raise ValueError(f"known failures name unknown cases: {sorted(stale)}")
    params = []
    for case in cases:
        marks = []
        if case.skip_reason is not None:
            marks.append(pytest.mark.skip(reason=case.skip_reason))
        elif case.id in known_failures:
            marks.append(pytest.mark.xfail(strict=True, reason=known_failures[case.id]))
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params
