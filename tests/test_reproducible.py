"""Reproducible packages of the example workloads (issue 8 part 5;
docs/reproducible.md).

`stockade package build` of each example, run twice by the real CLI from two
copies of the example directory that differ in everything but content: path,
file times, permissions, creation order, umask, working directory, TZ, LC_ALL
and SOURCE_DATE_EPOCH. The packages must be equal byte for byte and have the
digests that docs/reproducible.md publishes. No toolchain is needed: the
committed modules are packaged (their own rebuild is tests/test_examples.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stockade.package import Package, build

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DOC = ROOT / "docs" / "reproducible.md"
NAMES = ("hello", "wordcount", "csvstat")

SETUPS = (
    {"dir": "a", "mtime": 0, "mode": 0o644, "reverse": False, "umask": 0o022, "env": {}},
    {
        "dir": "b/much deeper/path",
        "mtime": 1_900_000_000,
        "mode": 0o600,
        "reverse": True,
        "umask": 0o077,
        "env": {"TZ": "Asia/Kathmandu", "LC_ALL": "C.UTF-8", "SOURCE_DATE_EPOCH": "1"},
    },
)


def copy_example(name: str, dest: Path, mtime: int, mode: int, reverse: bool) -> Path:
    """A copy of examples/NAME with the given file times and modes, its files
    created in sorted or reverse order."""
    src = EXAMPLES / name
    files = sorted((p for p in src.rglob("*") if p.is_file()), reverse=reverse)
    for path in files:
        target = dest / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
        target.chmod(mode)
        os.utime(target, (mtime, mtime))
    for d in sorted((p for p in dest.rglob("*") if p.is_dir()), reverse=True):
        os.utime(d, (mtime + 7, mtime + 7))
    return dest


def cli_build(
    directory: Path, cwd: Path, umask: int, env: dict[str, str], out: Path | None
) -> tuple[Path, str]:
    """Runs `stockade package build DIRECTORY [-o OUT] --json` under ``umask``
    in ``cwd``; returns the package path and the digest it printed."""
    args = [sys.executable, "-m", "stockade", "package", "build", str(directory), "--json"]
    if out is not None:
        args += ["-o", str(out)]
    p = subprocess.run(
        ["sh", "-c", f'umask {umask:03o} && exec "$@"', "sh", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    path = Path(doc["package"])
    return (path if path.is_absolute() else cwd / path), doc["digest"]


def published_digests() -> dict[str, str]:
    """name -> digest from the table in docs/reproducible.md."""
    return dict(re.findall(r"^\| `(\w+)` \| `sha256:([0-9a-f]{64})` \|", DOC.read_text(), re.M))


@pytest.mark.parametrize("name", NAMES)
def test_package_is_reproducible_across_directories_times_and_environments(name: str, tmp_path: Path) -> None:
    results = []
    for i, setup in enumerate(SETUPS):
        root = tmp_path / f"build{i}"
        src = copy_example(
            name, root / str(setup["dir"]) / name, setup["mtime"], setup["mode"], setup["reverse"]
        )
        cwd = root / "cwd"
        cwd.mkdir()
        # The first build writes the default NAME.stockade in its working
        # directory, the second an explicit -o somewhere else.
        out = None if i == 0 else root / "out" / "pkg.stockade"
        if out is not None:
            out.parent.mkdir()
        path, digest = cli_build(src, cwd, setup["umask"], setup["env"], out)
        if out is None:
            assert path == cwd / f"{name}.stockade"
        results.append((path.read_bytes(), digest))
    (first, d1), (second, d2) = results
    assert first == second
    assert d1 == d2 == Package.from_bytes(first).digest.hex()
    # The same bytes as an in-process build of the committed example.
    assert first == build(EXAMPLES / name)
    assert published_digests()[name] == d1, (
        f"docs/reproducible.md publishes another digest for {name}; update it to sha256:{d1}"
    )


def test_doc_publishes_every_example() -> None:
    assert sorted(published_digests()) == sorted(NAMES)


def git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, timeout=60, check=False)


@pytest.mark.parametrize("name", NAMES)
def test_declared_source_commit_holds_these_files(name: str) -> None:
    """The [source] commit of each example manifest is a commit of this
    repository whose copy of the example's source and module is byte for
    byte the one in the work tree."""
    pkg = Package.from_bytes(build(EXAMPLES / name))
    source = dict(pkg.manifest.source)
    assert f"directory examples/{name}" in source["repository"]
    commit = source["commit"]
    assert re.fullmatch(r"[0-9a-f]{40}", commit)
    if shutil.which("git") is None or git("rev-parse", "--is-inside-work-tree").returncode != 0:
        pytest.skip("not a git checkout: the declared commit cannot be looked up")
    if git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        shallow = git("rev-parse", "--is-shallow-repository").stdout.strip() == b"true"
        if shallow:
            pytest.skip(f"shallow clone without commit {commit}")
        pytest.fail(
            f"examples/{name}/Stockade.toml declares commit {commit}, which is not in this repository"
        )
    sources = {"hello": ["hello.c"], "wordcount": ["src/main.rs"], "csvstat": ["csvstat.cpp"]}[name]
    for rel in [*sources, pkg.manifest.entry, *pkg.manifest.files]:
        path = f"examples/{name}/{rel}"
        at_commit = git("show", f"{commit}:{path}")
        assert at_commit.returncode == 0, f"{path} is not in commit {commit}"
        assert at_commit.stdout == (ROOT / path).read_bytes(), (
            f"{path} changed since the declared commit {commit}: commit it, then declare that commit "
            f"in examples/{name}/Stockade.toml"
        )
