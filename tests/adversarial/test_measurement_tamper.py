"""The host as the adversary: a changed byte in any file the Keep loads
changes the launch measurement (issue 13, ADR 0013).

Works on a COPY: a temporary tree laid out like an installation (stdlib,
lib-dynload, site-packages with stockade and third-party code, the
interpreter and libpython), measured with the same code the loader uses
(stockade.measure.launch.measured_files with that tree's search path). The real
installed files are only read. One byte of each kind of Keep-loaded file
is flipped: a stockade.package module (the unmeasured code of the finding),
a stockade.keep module, a third-party .py, a stdlib module, an extension
module (site-packages and lib-dynload), a ctypes library, the interpreter
and libpython.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from stockade.errors import UnmeasuredCode
from stockade.measure import keep_modules, launch, sitecheck


@dataclass
class Tree:
    root: Path
    modules: set[str]
    libraries: list[tuple[str, str]]
    search_path: list[str]
    interpreter: list[tuple[str, str]]
    files: dict[str, Path]  # kind of file -> its copy

    def measure(self, modules: set[str] | None = None) -> bytes:
        entries = launch.measured_files(
            self.modules if modules is None else modules, self.libraries, self.search_path, self.interpreter
        )
        for entry in entries:  # never the installed files: only the copy
            assert entry.path is None or self.root in entry.path.parents, entry
        return launch.keep_measurement(entries)


def _origin(name: str) -> Path:
    kind, origin = launch.resolve(name, launch.keep_sys_path(), {})
    assert origin is not None, (name, kind)
    return Path(origin)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    root = tmp_path_factory.mktemp("keep-image")
    stdlib, dynload, site, bindir = (
        root / "stdlib",
        root / "lib-dynload",
        root / "site-packages",
        root / "bin",
    )
    for d in (stdlib, dynload, site, bindir):
        d.mkdir()
    shutil.copytree(launch.package_root(), site / "stockade", ignore=shutil.ignore_patterns("__pycache__"))
    search = launch.keep_sys_path()
    files: dict[str, Path] = {}

    def copy(kind: str, name: str, into: Path) -> None:
        src = _origin(name)
        dst = into / src.name
        shutil.copy2(src, dst)
        files[kind] = dst

    copy("third-party .py", "typing_extensions", site)
    copy("third-party extension", "_cffi_backend", site)
    copy("stdlib module", "base64", stdlib)
    dyn = sorted(
        n
        for n in keep_modules.MODULES
        if "." not in n
        and launch.resolve(n, search, {})[0] == "extension"
        and "lib-dynload" in _origin(n).parts
    )
    assert dyn, "no lib-dynload extension in the measured list"
    copy("lib-dynload extension", dyn[0], dynload)
    files["stockade.package module"] = site / "stockade" / "package" / "format.py"
    files["stockade.keep module"] = site / "stockade" / "keep" / "session.py"

    (top, rel), *_ = keep_modules.LIBRARIES
    lib = next(Path(p, top, rel) for p in search if Path(p, top, rel).is_file())
    (site / top / rel).parent.mkdir(parents=True)
    shutil.copy2(lib, site / top / rel)
    files["ctypes library"] = site / top / rel

    interpreter = []
    for label, path in launch.interpreter_files():
        dst = bindir / Path(path).name
        shutil.copy2(path, dst)
        interpreter.append((label, str(dst)))
        files[label] = dst

    modules = {
        "stockade",
        "stockade.package",
        "stockade.package.format",
        "stockade.keep",
        "stockade.keep.session",
        "typing_extensions",
        "_cffi_backend",
        "base64",
        dyn[0],
        "sys",  # built in: its code is the interpreter's
        "evil_absent",  # not found anywhere: measured as absent
    }
    time.sleep(0.02)  # past the coarse clock tick of the copies' ctime (the hash cache key)
    return Tree(root, modules, [(top, rel)], [str(stdlib), str(dynload), str(site)], interpreter, files)


KINDS = [
    "stockade.package module",
    "stockade.keep module",
    "third-party .py",
    "third-party extension",
    "stdlib module",
    "lib-dynload extension",
    "ctypes library",
    "interpreter:executable",
    "interpreter:libpython",
]


@pytest.mark.parametrize("kind", KINDS)
def test_a_changed_byte_changes_the_measurement(tree: Tree, kind: str) -> None:
    if kind not in tree.files:
        pytest.skip(f"no {kind} in this Python build")
    path = tree.files[kind]
    before = tree.measure()
    original = path.read_bytes()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0x01
    try:
        path.write_bytes(bytes(changed))  # same size, in place
        assert tree.measure() != before
    finally:
        time.sleep(0.02)
        path.write_bytes(original)
        time.sleep(0.02)
    assert tree.measure() == before


def test_a_backdoor_appended_to_package_format_changes_the_measurement(tree: Tree) -> None:
    """The finding of issue 13: package/format.py was outside the digest."""
    path = tree.files["stockade.package module"]
    before = tree.measure()
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\nimport os  # backdoor: write the secret to the host log\n")
        assert tree.measure() != before
    finally:
        path.write_bytes(original)
        time.sleep(0.02)


def test_a_planted_module_changes_the_measurement(tree: Tree) -> None:
    """A file planted for a name that resolved to nothing (or shadowing a
    later search-path entry) is found by the same resolution the Keep's
    import system does, so it is measured."""
    before = tree.measure()
    planted = Path(tree.search_path[-1]) / "evil_absent.py"
    try:
        planted.write_text("print('planted')\n")
        assert tree.measure() != before
    finally:
        planted.unlink()
    shadow = Path(tree.search_path[0]) / "typing_extensions.py"  # earlier on the path than site-packages
    try:
        shadow.write_text("print('shadow')\n")
        assert tree.measure() != before
    finally:
        shadow.unlink()
    assert tree.measure() == before


def test_a_planted_sitecustomize_changes_the_measurement(tree: Tree) -> None:
    """site runs sitecustomize before any Keep code; it is always measured."""
    modules = tree.modules | launch.STARTUP_HOOKS
    before = tree.measure(modules)
    planted = Path(tree.search_path[-1]) / "sitecustomize.py"
    try:
        planted.write_text("import os  # runs in every start-up\n")
        assert tree.measure(modules) != before
    finally:
        planted.unlink()


def test_a_module_added_to_the_list_changes_the_measurement(tree: Tree) -> None:
    assert tree.measure(tree.modules | {"json"}) != tree.measure()


def test_a_pth_that_runs_code_is_refused(tree: Tree) -> None:
    site = tree.search_path[-1]
    pth = Path(site, "zz-hook.pth")
    pth.write_text("import os; os.system('cat /secrets/* > /tmp/leak')\n")
    try:
        with pytest.raises(UnmeasuredCode, match=r"zz-hook\.pth line 1 runs code"):
            sitecheck.pth_paths(site)
    finally:
        pth.unlink()


def test_the_installed_files_are_untouched(tree: Tree) -> None:
    """The copies are separate files (this suite never writes the installation)."""
    for label, path in launch.interpreter_files():
        assert os.path.realpath(path) != os.path.realpath(dict(tree.interpreter)[label])
