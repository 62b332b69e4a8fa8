"""The Keep launch measurement covers what the Keep loads (ADR 0013).

- the Keep's ``sys.path`` as the loader computes it is the one a real
  ``python -I`` gets;
- ``.pth`` files: path lines extend the path, code lines are refused (by the
  loader's measurement, by ``policy reference`` and by the Keep itself);
- the import guard refuses unmeasured modules, in a real Keep entry point;
- real Keeps (fresh interpreter and fork-server child) through a sim deploy
  load nothing outside the measured set, from no other file than the one
  measured;
- the per-file hash cache sees a rewritten file.

Tampered copies of each kind of file: tests/adversarial/test_measurement_tamper.py.
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stockade.errors import UnmeasuredCode
from stockade.keep import guard
from stockade.measure import keep_modules, launch, sitecheck
from stockade.testing import keepload

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"


def isolated(code: str, *args: str, python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-I", "-c", code, *args], capture_output=True, text=True, timeout=60, check=False
    )


# == the Keep's sys.path and .pth files ==============================================================


def test_keep_sys_path_is_what_python_isolated_gets() -> None:
    proc = isolated("import sys; print(repr(sys.path))")
    assert proc.returncode == 0, proc.stderr
    assert ast.literal_eval(proc.stdout) == launch.keep_sys_path()


def test_editable_install_is_a_plain_path_line() -> None:
    """scripts/bootstrap.sh installs stockade editable: setuptools writes a
    ``__editable__.*.pth`` whose one line is the ``src`` directory (a path,
    not code), so the Keep imports stockade from the worktree and the
    measurement resolves the same files."""
    src = str(Path(launch.package_root()).parent)
    if not any(src in sitecheck.pth_paths(d) for d in sitecheck.site_dirs()):
        pytest.skip("stockade is not installed editable here")
    assert src in launch.keep_sys_path()
    assert launch.resolve("stockade.package.format", launch.keep_sys_path(), {}) == (
        "source",
        str(Path(src, "stockade", "package", "format.py")),
    )


def test_pth_path_lines_comments_and_code(tmp_path: Path) -> None:
    (tmp_path / "extra").mkdir()
    (tmp_path / "a.pth").write_text("# a comment\n\nextra\nmissing-dir\n")
    (tmp_path / ".hidden.pth").write_text("import os\n")  # site skips hidden files
    assert sitecheck.pth_paths(str(tmp_path)) == [str(tmp_path / "extra")]
    for line in ("import os; os.system('true')", "import\tsys"):
        (tmp_path / "b.pth").write_text(f"extra\n{line}\n")
        with pytest.raises(UnmeasuredCode, match=r"b\.pth line 2 runs code"):
            sitecheck.pth_paths(str(tmp_path))
    (tmp_path / "b.pth").write_text("importlib-is-a-path-not-code\n")  # site: startswith("import ") only
    assert sitecheck.pth_paths(str(tmp_path)) == [str(tmp_path / "extra")]


@pytest.fixture(scope="module")
def venv_with_code_pth(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A throw-away venv (same base interpreter) that sees this stockade and
    its dependencies through path lines, plus a ``.pth`` that runs code."""
    base = Path(tmp_path_factory.mktemp("venv"))
    subprocess.run(
        [getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(base)],
        check=True,
        timeout=60,
    )
    python = str(base / "bin" / "python")
    site_dir = isolated("import site; print(site.getsitepackages()[0])", python=python).stdout.strip()
    ours = [p for p in launch.keep_sys_path() if "site-packages" in p or p.endswith("src")]
    Path(site_dir, "deps.pth").write_text("".join(f"{p}\n" for p in ours))
    evil = Path(site_dir, "zz-evil.pth")
    evil.write_text("import os; os.environ.setdefault('PWNED', '1')\n")
    return python, evil


def test_measurement_refuses_a_pth_that_runs_code(venv_with_code_pth: tuple[str, Path]) -> None:
    python, evil = venv_with_code_pth
    proc = isolated(
        "from stockade.measure.launch import keep_measurement\n"
        "from stockade.errors import UnmeasuredCode\n"
        "try:\n    keep_measurement()\nexcept UnmeasuredCode as e:\n    print(e.exit_code, e)\n",
        python=python,
    )
    assert proc.stdout.startswith(f"120 {evil} line 1 runs code"), (proc.stdout, proc.stderr)


@pytest.mark.parametrize(
    "command",
    [
        ["policy", "reference"],
        ["policy", "reference", "--json", "--files"],
        ["policy", "default", "--allow-sim"],
        ["run", "--allow-sim", str(HELLO)],
        ["host", "serve", "--listen", "127.0.0.1:PORT"],
    ],
    ids=["policy-reference", "policy-reference-json", "policy-default", "run", "host-serve"],
)
def test_commands_refuse_a_pth_that_runs_code(
    venv_with_code_pth: tuple[str, Path], state_dir: Path, tmp_path: Path, command: list[str]
) -> None:
    python, evil = venv_with_code_pth
    sdir = state_dir if command[0] == "run" else tmp_path
    if command[-1] == "127.0.0.1:PORT":  # a free loopback port (refused before it binds)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            command = [*command[:-1], f"127.0.0.1:{s.getsockname()[1]}"]
    proc = subprocess.run(
        [python, "-m", "stockade", *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "STOCKADE_STATE_DIR": str(sdir)},
    )
    assert proc.returncode == UnmeasuredCode.exit_code, (proc.stdout, proc.stderr)
    assert f"{evil} line 1 runs code" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("entry", ["stockade.keep", "stockade.keep.zygote"])
def test_keep_refuses_to_start_after_a_pth_ran_code(venv_with_code_pth: tuple[str, Path], entry: str) -> None:
    python, evil = venv_with_code_pth
    args = (
        ["--conn-fd", "0", "--backend", "sim"]
        if entry == "stockade.keep"
        else ["--role", "keep", "--control-fd", "0"]
    )
    proc = subprocess.run(
        [python, "-I", "-m", entry, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == UnmeasuredCode.exit_code, proc.stderr
    assert f"refusing to start: {evil} line 1 runs code" in proc.stderr


def test_this_environment_has_no_pth_that_runs_code() -> None:
    """What the real Keeps of this checkout run with (scripts/bootstrap.sh
    removes setuptools' distutils-precedence.pth)."""
    sitecheck.check()


# == the import guard ================================================================================


def test_guard_refuses_unlisted_names_and_passes_listed_ones() -> None:
    finder = guard.MeasuredImportsOnly(frozenset({"json"}))
    assert finder.find_spec("json") is None  # the next finders resolve it
    with pytest.raises(
        ModuleNotFoundError, match="'evil' refused: it is not part of the measured Keep runtime"
    ):
        finder.find_spec("evil")


@pytest.mark.parametrize(
    ("entry", "args"),
    [
        ("stockade.keep.__main__", "['--conn-fd', '999', '--backend', 'sim', '--psp-fd', '998']"),
        ("stockade.keep.zygote", "['--role', 'keep', '--control-fd', '999']"),
    ],
)
def test_keep_entry_points_refuse_a_planted_module(tmp_path: Path, entry: str, args: str) -> None:
    """The entry point installs the guard first; a module planted where the
    import system would find it is refused, a measured one still imports."""
    (tmp_path / "planted.py").write_text("print('planted code ran')\n")
    code = (
        "import sys, importlib\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        f"m = importlib.import_module({entry!r})\n"
        f"try:\n    m.main({args})\nexcept (OSError, SystemExit):\n    pass\n"
        "import json\n"
        "import planted\n"
    )
    proc = isolated(code)
    assert "planted code ran" not in proc.stdout
    assert "ModuleNotFoundError: stockade keep: import of 'planted' refused" in proc.stderr, proc.stderr
    assert f"found at {tmp_path / 'planted.py'}" in proc.stderr  # the log line


def test_guard_refuses_to_start_after_unmeasured_early_imports() -> None:
    """A module loaded before the guard (by a sitecustomize, say) that is not
    in the measured set: the Keep must not serve a session."""
    assert "xml.dom.minidom" not in keep_modules.MODULES
    proc = isolated(
        "import xml.dom.minidom\nfrom stockade.keep import guard\nguard.install()\nprint('served')"
    )
    assert proc.returncode == UnmeasuredCode.exit_code, proc.stderr
    assert "served" not in proc.stdout
    assert "modules loaded before the import guard are not in the measured set: xml" in proc.stderr


def test_startup_hooks_are_always_measured() -> None:
    """site imports sitecustomize (Debian's python3.11 ships one) before any
    Keep code: its bytes, or its absence, are in the digest."""
    assert launch.STARTUP_HOOKS <= keep_modules.MODULES
    labels = {m.label for m in launch.measured_files()}
    assert {"module:sitecustomize", "module:usercustomize"} <= labels


# == real Keeps load nothing outside the measurement ===================================================


@pytest.mark.slow
@pytest.mark.parametrize("fork_server", [False, True], ids=["python-m-stockade.keep", "fork-server-zygote"])
def test_real_keeps_load_only_measured_files(tmp_path: Path, state_dir: Path, fork_server: bool) -> None:
    """A real sim deploy, the Keep started by the recording wrapper (guard
    off, so that this is a check and not a consequence of the guard): every
    module in its ``sys.modules`` is in the list, was loaded from the very
    file the measurement hashed, and every file mapped into it from the
    Python trees is a measured module or library, or the interpreter."""
    record = tmp_path / "record.txt"
    record.touch()
    args = ["run", "--allow-sim", "-q", "--state-dir", str(state_dir), str(HELLO), "--", "Alice"]
    proc = keepload.run_cli(record, args, fork_server=fork_server)
    assert proc.returncode == 0, proc.stderr
    assert b"Hello, Alice!" in proc.stdout
    rec = keepload.parse(record)
    assert rec.processes == (2 if fork_server else 1)  # the zygote records too
    measured = {m.label: m for m in launch.measured_files()}

    unlisted = sorted(n for n in rec.modules if launch.recordable(n) and f"module:{n}" not in measured)
    assert unlisted == [], f"loaded but not measured: {unlisted}"
    assert any(n.startswith("stockade.package") for n in rec.modules)  # the finding of issue 13
    for name, origin in sorted(rec.origins):
        entry = measured[f"module:{name}"]
        assert entry.path is not None and os.path.realpath(entry.path) == os.path.realpath(origin), name

    measured_paths = {os.path.realpath(m.path) for m in measured.values() if m.path is not None}
    trees = launch.keep_sys_path()
    for path in sorted(rec.files):
        if any(path.startswith(t.rstrip("/") + "/") for t in trees):
            assert os.path.realpath(path) in measured_paths, f"mapped but not measured: {path}"
    for label in ("interpreter:executable", "interpreter:libpython"):
        if label in measured:
            assert str(measured[label].path) in {os.path.realpath(p) for p in rec.files}


@pytest.mark.slow
def test_the_generated_list_is_current(state_dir: Path) -> None:
    """Every scenario of the generator (success and error paths, both entry
    points) loads nothing outside the committed list. If this fails after
    adding an import to Keep code: ``python -m stockade.testing.keepload --write``."""
    proc = subprocess.run(
        [sys.executable, "-m", "stockade.testing.keepload", "--check", "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 Keep-side processes" not in proc.stdout


def test_the_list_is_generated_and_names_the_finding() -> None:
    text = Path(keep_modules.__file__).read_text()
    assert "GENERATED by ``python -m stockade.testing.keepload --write``" in text
    names = [n for n in keep_modules.MODULES]
    assert len(names) == len(set(names)) > 100
    for required in (
        "stockade.package.format",
        "stockade.keep.guard",
        "stockade.measure.keep_modules",
        "_cffi_backend",
    ):
        assert required in keep_modules.MODULES


# == hashing cache ===================================================================================


def test_hash_cache_sees_a_same_size_rewrite_with_the_old_mtime(tmp_path: Path) -> None:
    f = tmp_path / "mod.py"
    f.write_bytes(b"X = 1\n")
    first = launch.file_sha256(str(f))
    assert launch.file_sha256(str(f)) == first  # cached
    st = f.stat()
    time.sleep(0.05)  # past the coarse clock tick of the first write's ctime
    f.write_bytes(b"X = 2\n")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime and size as before; ctime moves
    assert launch.file_sha256(str(f)) != first


def test_measurement_cold_and_warm_in_one_process() -> None:
    launch.clear_cache()
    cold = launch.keep_measurement()
    warm = launch.keep_measurement()
    assert cold == warm and len(cold) == 48
