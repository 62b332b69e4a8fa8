"""``stockade package init``: starter projects, one per language.

The templates are package data under ``stockade/package/templates/LANG/``:
each ``*.tmpl`` file is written without that suffix, with ``{{name}}`` (the
project name) and ``{{crate_name}}`` (the same with ``-`` as ``_``, for
Rust) substituted; ``build.sh`` is written executable. Imports errors and the
standard library only."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

from stockade.errors import UsageError

#: Languages with a template, in the order `--help` lists them.
LANGUAGES = ("c", "cpp", "rust", "python", "js")

#: A project name: also the module's file name, the package name and (with
#: ``-`` as ``_``) a Rust crate name, so it is kept to a portable subset.
NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")

_SUFFIX = ".tmpl"


@dataclass(frozen=True)
class Starter:
    """What :func:`write_starter` wrote: the project name and the files,
    relative to the directory, in the order written."""

    name: str
    files: tuple[str, ...]


def _templates(lang: str) -> list[tuple[str, str]]:
    """(relative path without .tmpl, text) of each template of ``lang``, sorted."""
    root = resources.files("stockade.package").joinpath("templates", lang)
    out: list[tuple[str, str]] = []

    def walk(node: Traversable, rel: PurePosixPath) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child, rel / child.name)
            elif child.name.endswith(_SUFFIX):
                out.append((str(rel / child.name[: -len(_SUFFIX)]), child.read_text(encoding="utf-8")))

    walk(root, PurePosixPath())
    if not out:
        # A broken installation (the wheel without its package data), not a user error.
        raise RuntimeError(f"no templates for {lang!r} in this installation of stockade")
    return sorted(out)


def project_name(directory: Path, name: str | None) -> str:
    """The project name: ``name`` if given, else the directory's own name."""
    chosen = name if name is not None else directory.resolve().name
    if not NAME.fullmatch(chosen):
        source = "" if name is not None else f" (the name of {directory}; give --name NAME)"
        raise UsageError(
            f"project name {chosen!r}{source} must be 1-64 characters: a lower-case letter, "
            "then lower-case letters, digits, '-' or '_'"
        )
    return chosen


def write_starter(lang: str, directory: Path, *, name: str | None = None, force: bool = False) -> Starter:
    """Writes the ``lang`` starter project into ``directory`` (created if
    needed). Refuses a directory that is not empty unless ``force``; with
    ``force``, files of the same name are replaced and other files are left
    alone. Every refusal is a UsageError that names the path."""
    if lang not in LANGUAGES:
        raise UsageError(f"unknown language {lang!r} (known: {', '.join(LANGUAGES)})")
    project = project_name(directory, name)
    templates = _templates(lang)
    if directory.exists() or directory.is_symlink():
        if not directory.is_dir():
            raise UsageError(f"{directory} exists and is not a directory")
        try:
            entries = sorted(p.name for p in directory.iterdir())
        except OSError as exc:
            raise UsageError(f"cannot list {directory}: {exc.strerror}") from None
        if entries and not force:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise UsageError(
                f"{directory} is not empty ({shown}); choose an empty or new directory, "
                "or --force to write the starter files into it (replacing files of the same name)"
            )
    written: list[str] = []
    for rel, text in templates:
        content = text.replace("{{name}}", project).replace("{{crate_name}}", project.replace("-", "_"))
        target = directory.joinpath(*PurePosixPath(rel).parts)
        mode = 0o755 if target.name == "build.sh" else 0o644
        _write(target, content.encode("utf-8"), mode)
        written.append(rel)
    return Starter(name=project, files=tuple(written))


def _write(path: Path, data: bytes, mode: int) -> None:
    """Writes ``path`` through a temporary file and a rename, so that an
    existing file (or a symbolic link) of that name is replaced, never written
    through."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
