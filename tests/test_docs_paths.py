"""Every repository path, module and `stockade` command a doc names in backticks exists.

Docs drift when code moves (issue 14 moved `wire/launch.py` to `measure/launch.py`, split
`host/manager.py` into a package, ...). This test reads the inline code spans of the docs and
checks the ones that name something in this repository:

- a path starting with a top-level directory of the repository (`src/`, `docs/`, `tests/`, ...)
  or a top-level file (`pyproject.toml`, ...) must exist;
- a path under the package written without `src/stockade/` (`evidence/pki.py`, `host/manager/`)
  must exist under `src/stockade/` when its first part is one of the package's subpackages;
- a dotted name `stockade.x.y` must be a module, or an attribute of one;
- a command `stockade <group> <command> ...` must be a command of the CLI.

A span on a line that says *planned* names something not built yet and is skipped.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import click
import pytest

from stockade.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "stockade"

# ADRs are history: they name files as they were when the decision was taken (a later move gets a
# note, not a rewrite), so only their links are checked.
ADRS = sorted((ROOT / "docs" / "adr").glob("*.md"))
DOCS = sorted(
    [
        *(ROOT / "docs").glob("*.md"),
        ROOT / "README.md",
        ROOT / "bench" / "README.md",
        ROOT / "examples" / "README.md",
        ROOT / "src" / "stockade" / "evidence" / "intel" / "README.md",
    ]
)

TOP_DIRS = ("src/", "docs/", "tests/", "bench/", "examples/", "scripts/", ".ci/")
TOP_FILES = ("pyproject.toml", "README.md", "SECURITY.md", "CONTRIBUTING.md")
SUBPACKAGES = tuple(sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()))
CODE_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
PATH_TOKEN = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_./-]*$")
DOTTED = re.compile(r"^(stockade(?:\.[A-Za-z_][A-Za-z0-9_]*)+)(?:\(.*\))?$")
# Files the tools create at run time, not stored in the repository.
GENERATED = ("examples/hello/hello.stk", "examples/wordcount/wordcount.stk")


FENCED_COMMAND = re.compile(r"^\s*(?:\$ )?(?:\.venv/bin/)?(stockade [^#]*)")


def _inline_spans(text: str) -> list[tuple[int, str]]:
    """(line number, code span): inline code, and `stockade ...` command lines of code blocks."""
    spans: list[tuple[int, str]] = []
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            command = FENCED_COMMAND.match(line)
            if command:
                spans.append((number, command.group(1).strip()))
            continue
        if "*planned" in line:
            continue
        spans.extend((number, m.group(1).strip()) for m in CODE_SPAN.finditer(line))
    return spans


def _spans() -> list[tuple[Path, int, str]]:
    found: list[tuple[Path, int, str]] = []
    for doc in DOCS:
        found.extend((doc, n, span) for n, span in _inline_spans(doc.read_text()))
    return found


EVIDENCE_PARTS = ("intel", "snp", "tdx", "sgx")


def _candidates(doc: Path, word: str) -> list[Path] | None:
    """Where a path-like word may live, or None if it does not name a repository path.

    `src/...`, `docs/...`: from the repository root; `evidence/pki.py`: under the package;
    `intel/verify.py`: under `evidence/`; `hello/hello.c`: beside the doc; `test_x.py`,
    `errors.py`: a file of that name in the source, tests or benchmarks.
    """
    word = word.rstrip(".,:;").split("#", 1)[0]
    if not PATH_TOKEN.match(word) or word.startswith("../"):
        return None
    if word.startswith(TOP_DIRS) or word in TOP_FILES:
        return [ROOT / word]
    first = word.split("/", 1)[0]
    if "/" in word and first == "stockade":
        return [ROOT / "src" / word]
    if "/" in word and first in SUBPACKAGES:
        return [PACKAGE / word]
    if "/" in word and first in EVIDENCE_PARTS:
        return [PACKAGE / "evidence" / word]
    if "/" in word and (doc.parent / first).is_dir() and doc.parent != ROOT:
        return [doc.parent / word]
    if "/" not in word and word.endswith(".py"):
        return [p for top in ("src", "tests", "bench", "scripts") for p in (ROOT / top).rglob(word)] or [
            ROOT / "src" / word
        ]
    return None


def _repo_paths(doc: Path, span: str) -> list[tuple[str, list[Path]]]:
    """The path-like words of a span (a span may be a whole command line) and their candidates."""
    found = []
    for word in span.split():
        candidates = _candidates(doc, word)
        if candidates is not None:
            found.append((word, candidates))
    return found


def _resolve_dotted(span: str) -> bool:
    """True if `stockade.a.b` (or a call `stockade.a.b(...)`) names a module or an attribute of one."""
    match = DOTTED.match(span)
    assert match is not None
    parts = match.group(1).split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            spec = importlib.util.find_spec(module_name)
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            continue
        obj: object = importlib.import_module(module_name)
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def _command_words(span: str) -> list[str] | None:
    words = span.split()
    if len(words) < 2 or words[0] != "stockade":
        return None
    return words[1:]


def _options(command: click.Command) -> set[str]:
    names = {"--help"}
    for param in command.params:
        names.update(param.opts)
        names.update(param.secondary_opts)
    return names


def _resolve_command(words: list[str]) -> bool:
    """True if the words name a command path of the CLI and every `--option` is one of its options.

    `keeps ls|logs|wait` names three commands; `--tls-cert/--tls-key` two options; the first word
    after a command that is not a group is an argument (`stockade run app.wasm`).
    """
    command: click.Command = cli_main
    ctx = click.Context(cli_main)
    for word in (w.strip("[]") for w in words):
        if word.startswith("--"):
            for option in word.split("=", 1)[0].split("/"):
                if re.match(r"^--[a-z][a-z0-9-]*$", option) and option not in _options(command):
                    return False
            continue
        if word.startswith("-") or not isinstance(command, click.Group):
            continue
        names = word.split("|")
        if not all(re.match(r"^[a-z][a-z0-9-]*$", n) for n in names):
            continue
        subs = [command.get_command(ctx, n) for n in names]
        if any(sub is None for sub in subs):
            # A group takes a command here, not an argument.
            return False
        last = subs[-1]
        assert last is not None
        command = last
    return True


SPANS = _spans()


def _rel(doc: Path) -> str:
    return doc.relative_to(ROOT).as_posix()


def test_the_scan_sees_the_docs() -> None:
    """The scanner finds spans of each kind, so the checks below are not vacuous."""
    assert len(DOCS) >= 12
    paths = [w for doc, _, s in SPANS for w in _repo_paths(doc, s)]
    dotted = [s for _, _, s in SPANS if DOTTED.match(s)]
    commands = [s for _, _, s in SPANS if _command_words(s)]
    assert len(paths) > 100 and len(dotted) > 10 and len(commands) > 20


def test_a_missing_path_module_or_command_is_reported() -> None:
    """The checks fail on names that do not exist."""
    readme = ROOT / "README.md"
    for moved in ("src/stockade/wire/launch.py", "host/manager.py", "wire/binding.py", "tdx/verify.py"):
        ((word, candidates),) = _repo_paths(readme, f"`{moved}`".strip("`"))
        assert word == moved and not any(p.exists() for p in candidates)
    assert _repo_paths(readme, "a/b") == [] and _repo_paths(readme, "/dev/sev-guest") == []
    ((_, found),) = _repo_paths(readme, "intel/verify.py")
    assert any(p.exists() for p in found)
    assert not _resolve_dotted("stockade.wire.launch")
    assert not _resolve_dotted("stockade.client.plan.NoSuchThing(x)")
    assert _resolve_dotted("stockade.measure.launch.keep_measurement()")
    assert not _resolve_command(["no-such-command"])
    assert not _resolve_command(["keeps", "ls|no-such"])
    assert not _resolve_command(["keeps", "no-such", "ID"])
    assert not _resolve_command(["run", "--no-such-option", "app.wasm"])
    assert not _resolve_command(["host", "serve", "--tls-cert/--no-such"])
    assert _resolve_command(["host", "serve", "--tls-cert/--tls-key"])
    assert _resolve_command(["evidence", "verify", "--help"])
    assert _resolve_command(["run", "--allow-sim", "app.wasm"])
    text = "`src/x.py` is *planned*\n`src/y.py`\n```\n`src/z.py`\n$ stockade run x  # y\n```\n"
    assert _inline_spans(text) == [(2, "src/y.py"), (5, "stockade run x")]


def test_every_backticked_repository_path_exists() -> None:
    missing = []
    for doc, line, span in SPANS:
        for word, candidates in _repo_paths(doc, span):
            if word.rstrip(".,:;") in GENERATED or any(p.exists() for p in candidates):
                continue
            missing.append(f"{_rel(doc)}:{line}: `{word}`")
    assert not missing, "paths named in docs that do not exist:\n" + "\n".join(missing)


def test_every_backticked_stockade_module_exists() -> None:
    missing = [
        f"{_rel(doc)}:{line}: `{span}`"
        for doc, line, span in SPANS
        if DOTTED.match(span) and not _resolve_dotted(span)
    ]
    assert not missing, "modules named in docs that do not exist:\n" + "\n".join(missing)


def test_every_backticked_stockade_command_exists() -> None:
    missing = []
    for doc, line, span in SPANS:
        words = _command_words(span)
        if words is not None and not _resolve_command(words):
            missing.append(f"{_rel(doc)}:{line}: `{span}`")
    assert not missing, "commands named in docs that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("doc", DOCS + ADRS, ids=_rel)
def test_relative_markdown_links_resolve(doc: Path) -> None:
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert not missing, f"{doc.name}: links to missing files: {missing}"


CDDL_NAME = re.compile(r"(?<![\w./:-])(stockade(?:\.[A-Za-z_][A-Za-z0-9_]*)+|(?:src|tests)/[\w/.-]*\w/?)")


def test_the_cddl_comments_name_modules_and_files_that_exist() -> None:
    """`docs/*.cddl` comments name the classes that produce each message: they stay true."""
    missing = []
    seen = 0
    for cddl in sorted((ROOT / "docs").glob("*.cddl")):
        for number, line in enumerate(cddl.read_text().splitlines(), 1):
            comment = line.partition(";")[2]
            for name in CDDL_NAME.findall(comment):
                seen += 1
                exists = (ROOT / name).exists() if "/" in name else _resolve_dotted(name)
                if not exists:
                    missing.append(f"{_rel(cddl)}:{number}: {name}")
    assert seen > 10
    assert not missing, "names in CDDL comments that do not exist:\n" + "\n".join(missing)
