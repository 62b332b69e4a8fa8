"""What the Keep actually loads: record it from real runs, write the measured list.

    python -m stockade.testing.keepload --write      # regenerate stockade/measure/keep_modules.py
    python -m stockade.testing.keepload --check      # exit 1 if a run loads anything unlisted

Runs real sim deploys through the CLI (``stockade run``), with Keeps started
both ways the host starts them: a fresh ``python -I -m stockade.keep`` and
a child of the fork server ``python -I -m stockade.keep.zygote``, through
successful runs and error paths. Each Keep-side process is started by a
small wrapper (:data:`WRAPPER`, the same interpreter with ``-I``) that
turns the import guard (stockade.keep.guard) into recording mode and, when
the process ends (``os._exit``, which every Keep-side process ends with),
appends the names in ``sys.modules`` and the files mapped into the process
(``/proc/self/maps``: shared libraries loaded with ``ctypes``, such as
wasmtime's) to a record file.

This is a development tool (ADR 0013): never part of a Keep's start.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Started as ``python -I -c WRAPPER RECORD MODULE ARGS...``: runs MODULE as
#: ``python -m`` would, with the guard recording instead of refusing.
WRAPPER = """\
import os, sys, runpy
_out = sys.argv[1]
_mod = sys.argv[2]
import stockade.keep.guard as _g
_g.record_only()
_real_exit = os._exit
def _exit(code, _real=_real_exit, _out=_out):
    try:
        with open("/proc/self/maps") as f:
            maps = sorted({line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6})
        # Entry modules run as __main__: their own names come from __spec__.
        names = set(sys.modules)
        names.update(m.__spec__.name for m in list(sys.modules.values()) if getattr(m, "__spec__", None))
        lines = ["M " + n for n in sorted(names)]
        lines += ["F " + p for p in maps if p.startswith("/")]
        for m in list(sys.modules.values()):
            spec = getattr(m, "__spec__", None)
            if spec is not None and spec.has_location and spec.origin:
                lines.append("O " + spec.name + "\\t" + spec.origin)
        lines.append("E %d" % os.getpid())
        # One write(2) on an O_APPEND file: records of processes ending
        # together do not interleave.
        fd = os.open(_out, os.O_WRONLY | os.O_APPEND)
        os.write(fd, ("\\n".join(lines) + "\\n").encode("utf-8", "surrogateescape"))
        os.close(fd)
    finally:
        _real(code)
os._exit = _exit
sys.argv = [_mod, *sys.argv[3:]]
runpy.run_module(_mod, run_name="__main__", alter_sys=True)
"""

KEEP_ENTRY_POINTS = ("stockade.keep", "stockade.keep.zygote")


def wrap_argv(argv: list[str], record: Path) -> list[str]:
    """``[python, -I, -m, ENTRY, ...]`` -> the recording wrapper; other argv unchanged."""
    if len(argv) < 4 or argv[1:3] != ["-I", "-m"] or argv[3] not in KEEP_ENTRY_POINTS:
        return argv
    if argv[3] == "stockade.keep.zygote" and argv[argv.index("--role") + 1] != "keep":
        return argv  # the sim PSP's fork server is host-side, not the Keep
    return [argv[0], "-I", "-c", WRAPPER, str(record), argv[3], *argv[4:]]


@contextlib.contextmanager
def recording(record: Path, fork_server: bool) -> Iterator[None]:
    """Patch this process's host code so that the Keeps it starts record what
    they load into ``record``; with ``fork_server``, local runs start their
    Keep from a fork server instead of a fresh interpreter."""
    from stockade.host import forkserver, loader

    real_popen = subprocess.Popen

    def popen(argv: Any, *args: Any, **kwargs: Any) -> Any:
        return real_popen(wrap_argv(list(argv), record), *args, **kwargs)

    # One subprocess module for the whole process: the loader's and the
    # fork server's Popen both go through this one (this is a throw-away
    # process that runs one CLI command).
    saved_popen, saved_start = subprocess.Popen, loader.start_keep
    setattr(subprocess, "Popen", popen)  # noqa: B010
    spawner: forkserver.ForkSpawner | None = None
    if fork_server:
        spawner = forkserver.ForkSpawner(Path(tempfile.mkdtemp(prefix="stockade-keepload-")))
        sp = spawner

        def start_keep(*args: Any, **kwargs: Any) -> loader.KeepHandle:
            kwargs["spawner"] = sp
            return saved_start(*args, **kwargs)

        setattr(loader, "start_keep", start_keep)  # noqa: B010
    try:
        yield
    finally:
        setattr(subprocess, "Popen", saved_popen)  # noqa: B010
        setattr(loader, "start_keep", saved_start)  # noqa: B010
        if spawner is not None:
            spawner.close()
            shutil.rmtree(spawner.log_dir, ignore_errors=True)


def _cli(argv: list[str]) -> None:
    """``python -m stockade.testing.keepload --cli RECORD fork|popen ARGS...``:
    one CLI run whose Keep records what it loads."""
    record, mode, *args = argv
    from stockade.cli import main

    with recording(Path(record), fork_server=mode == "fork"):
        try:
            main(args, prog_name="stockade", standalone_mode=True)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        else:
            code = 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def scenarios(
    work: Path, state: Path | None = None, steward: tuple[str, Path] | None = None
) -> list[tuple[list[str], bytes]]:
    """CLI runs (args, stdin) covering success and the error paths a Keep meets;
    with ``steward`` (its URL and CA file), a run whose Keep gets a service
    certificate from it (issue 17)."""
    root = Path(__file__).resolve().parents[3]
    examples = root / "examples"
    hello = examples / "hello" / "hello.wasm"
    wordcount = examples / "wordcount" / "wordcount.wasm"
    # A WASI preview 2 component (ADR 0020): the Keep imports wasmtime.component.
    component = examples / "hello-component" / "hello.component.wasm"
    if not hello.exists():
        raise SystemExit(f"keepload: needs the repository's examples/ next to src/ ({examples})")
    secret = work / "secret.txt"
    secret.write_text("not-a-real-secret\n")
    notwasm = work / "not.wasm"
    notwasm.write_bytes(b"\x00asm\x01\x00\x00\x00garbage")
    empty_component = work / "empty.component.wasm"
    empty_component.write_bytes(b"\x00asm\x0d\x00\x01\x00")  # valid, but not a WASI command
    import wasmtime

    trap = work / "trap.wasm"
    trap.write_bytes(
        wasmtime.wat2wasm('(module (memory (export "memory") 1) (func (export "_start") unreachable))')
    )
    # A signed package, and a second key that did not sign it.
    pkg, key, other = work / "hello.stockade", work / "author.key", work / "other.key"
    if not pkg.exists():
        for args in (
            ["package", "build", str(examples / "hello"), "-o", str(pkg)],
            ["key", "generate", "--out", str(key)],
            ["key", "generate", "--out", str(other)],
            ["package", "sign", "--key", str(key), str(pkg)],
        ):
            subprocess.run([sys.executable, "-m", "stockade", *args], check=True, capture_output=True)
    common = ["run", "--allow-sim", "-q", "--state-dir", str(state or work / "state")]
    certified: list[tuple[list[str], bytes]] = []
    if steward is not None:
        url, ca = steward
        certified.append(
            ([*common, "--steward", url, "--steward-ca", str(ca), str(hello), "--", "Alice"], b"")
        )
    return [
        *certified,
        ([*common, str(hello), "--", "Alice"], b""),
        (
            [
                *common,
                "--json",
                "--stdin",
                "-",
                "--file",
                f"{examples / 'wordcount'}:/in",
                str(wordcount),
                "--",
                "-",
            ],
            b"a b\nc\n",
        ),
        ([*common, "--secret", f"s=@{secret}", "--env", "A=B", str(hello)], b""),
        ([*common, "--expect-digest", "00" * 32, str(hello)], b""),
        ([*common, str(notwasm)], b""),
        ([*common, str(trap)], b""),
        ([*common, "--timeout", "1", "--memory", "1M", str(hello)], b""),
        ([*common, "--max-output", "1", str(hello), "--", "Alice"], b""),
        ([*common, "--signer", f"{key}.pub", str(pkg), "--", "Alice"], b""),
        ([*common, "--signer", f"{other}.pub", str(pkg)], b""),
        ([*common, "--env", "GREETING=Hi", str(component), "--", "Alice"], b""),
        ([*common, str(empty_component)], b""),
    ]


def run_cli(
    record: Path,
    args: list[str],
    stdin: bytes = b"",
    fork_server: bool = False,
    timeout: float = 120,
    cache: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """One ``stockade ARGS`` run in a fresh process whose Keeps record what
    they load into ``record``. With ``fork_server``, wait (bounded) for the
    fork server to end and record too. ``cache``: the XDG cache directory
    (the local sealed compile cache goes below it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["STOCKADE_WARM"] = "0"  # the Keeps are started here, recording (not by a warm server)
    if cache is not None:
        env["XDG_CACHE_HOME"] = str(cache)
    mode = "fork" if fork_server else "popen"
    cmd = [sys.executable, "-m", "stockade.testing.keepload", "--cli", str(record), mode, *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout, env=env, check=False)
    deadline = time.monotonic() + 10
    while fork_server and _zygotes_running() and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc


def record_runs(
    record: Path,
    work: Path,
    fork_server: bool,
    state: Path | None = None,
    steward: tuple[str, Path] | None = None,
) -> None:
    # A fresh compile cache: the first run of a module misses (compiles,
    # seals, stores), the next hits (authenticates, deserializes).
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=work))
    for args, stdin in scenarios(work, state, steward):
        proc = run_cli(record, args, stdin, fork_server, cache=cache)
        last = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        print(
            f"keepload: exit {proc.returncode:3d} {' '.join(args[5:])[:70]} | {last[0][:90]}", file=sys.stderr
        )


def _zygotes_running() -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if WRAPPER.encode() in cmdline.read_bytes() and b"stockade.keep.zygote" in cmdline.read_bytes():
                return True
    return False


@dataclass
class Record:
    """What the recorded Keep-side processes loaded."""

    modules: set[str] = field(default_factory=set)  # names in sys.modules
    files: set[str] = field(default_factory=set)  # files mapped into the process
    origins: set[tuple[str, str]] = field(default_factory=set)  # (module name, file it was loaded from)
    processes: int = 0


def parse(record: Path) -> Record:
    out = Record()
    for line in record.read_text().splitlines():
        tag, _, value = line.partition(" ")
        if tag == "M":
            out.modules.add(value)
        elif tag == "F":
            out.files.add(value)
        elif tag == "O":
            name, _, origin = value.partition("\t")
            out.origins.add((name, origin))
        elif tag == "E":
            out.processes += 1
    return out


def collect(work: Path, state: Path | None = None) -> Record:
    """Record every scenario, both ways of starting Keeps, with a steward
    on loopback for the Keeps that get a service certificate."""
    from stockade.evidence.sim.chip import ensure_chip
    from stockade.testing.steward import steward_server

    record = work / "record.txt"
    record.touch()
    state = state or work / "state"
    ensure_chip(state)  # the steward trusts this sim chip
    with steward_server(work, state) as steward:
        for fork_server in (False, True):
            record_runs(record, work, fork_server, state, (steward.url, steward.ca))
    record_vm_guest(record)
    return parse(record)


def record_vm_guest(record: Path) -> None:
    """The modules a VM Keep adds (stockade.keep.vmguest: its virtio-serial
    ports and the attesters of SNP and TDX guests, whose hardware paths
    cannot run here): recorded by running that module, which imports them
    all and exits."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    cmd = [sys.executable, "-I", "-c", WRAPPER, str(record), "stockade.keep.vmguest"]
    proc = subprocess.run(cmd, capture_output=True, timeout=60, env=env, check=False)
    print(f"keepload: exit {proc.returncode:3d} VM guest modules (stockade.keep.vmguest)", file=sys.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"recording the VM guest's modules failed: {proc.stderr.decode(errors='replace')}")


def render(modules: set[str], libraries: list[tuple[str, str]]) -> str:
    from stockade.measure.launch import STARTUP_HOOKS, recordable

    names = sorted({n for n in modules if recordable(n)} | STARTUP_HOOKS)
    lines = [
        '"""The modules and libraries the Keep runtime loads: its measured set (ADR 0013).',
        "",
        "GENERATED by ``python -m stockade.testing.keepload --write`` from real runs of",
        "the Keep entry points (``python -I -m stockade.keep`` and the fork server",
        "``stockade.keep.zygote``) through sim deploys, including error paths. Do not",
        "edit by hand: regenerate. stockade.measure.launch resolves each name to its file",
        "without importing it and hashes the bytes; stockade.keep.guard refuses, inside",
        "the Keep, any import of a module not listed here.",
        '"""',
        "",
        "MODULES: frozenset[str] = frozenset(",
        "    {",
        *[f'        "{n}",' for n in names],
        "    }",
        ")",
        "",
        "#: Shared libraries loaded without the import system (ctypes), as",
        "#: (top-level package they ship in, path relative to that package).",
        "LIBRARIES: tuple[tuple[str, str], ...] = (",
        *[f'    ("{p}", "{r}"),' for p, r in libraries],
        ")",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--cli"]:
        _cli(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m stockade.testing.keepload")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help="regenerate stockade/measure/keep_modules.py")
    group.add_argument("--check", action="store_true", help="fail if a Keep loads anything unmeasured")
    parser.add_argument("--state-dir", type=Path, help="state directory with a sim chip (default: a new one)")
    args = parser.parse_args(argv)
    from stockade.measure import keep_modules, launch

    with tempfile.TemporaryDirectory(prefix="stockade-keepload-") as tmp:
        rec = collect(Path(tmp), args.state_dir)
    modules = rec.modules
    libraries = launch.ctypes_libraries(rec.files)
    print(
        f"keepload: {rec.processes} Keep-side processes, {len(modules)} modules, {len(libraries)} ctypes libraries"
    )
    if args.write:
        target = Path(keep_modules.__file__)
        target.write_text(render(modules, sorted(set(libraries))))
        # The project's formatter, so that a regenerated file diffs cleanly.
        subprocess.run([sys.executable, "-m", "ruff", "format", "-q", str(target)], check=False)
        print(f"keepload: wrote {target}")
        return 0
    missing = sorted(n for n in modules if launch.recordable(n) and n not in keep_modules.MODULES)
    libs_missing = sorted(set(libraries) - set(keep_modules.LIBRARIES))
    for name in missing:
        print(f"keepload: loaded but not measured: module {name}")
    for pkg, rel in libs_missing:
        print(f"keepload: loaded but not measured: library {pkg}/{rel}")
    return 1 if missing or libs_missing else 0


if __name__ == "__main__":
    sys.exit(main())
