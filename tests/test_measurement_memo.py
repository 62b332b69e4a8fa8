"""keep_measurement's memo (ADR 0028, item 8): the launch digest reused
only while every directory looked in and every file hashed keeps the stat
key it had when it was used; any change is measured again."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from stockade.measure import launch

MODULES = ["app", "app.core", "app.absent", "helper", "missing"]


@pytest.fixture
def tree(tmp_path: Path) -> tuple[list[str], list[tuple[str, str]]]:
    lib = tmp_path / "lib"
    (lib / "app").mkdir(parents=True)
    (lib / "app" / "__init__.py").write_text("")
    (lib / "app" / "core.py").write_text("CORE = 1\n")
    (lib / "helper.py").write_text("HELP = 1\n")
    (lib / "native").mkdir()
    (lib / "native" / "libx.so").write_bytes(b"\x7fELF")
    exe = tmp_path / "python"
    exe.write_bytes(b"interpreter")
    launch.clear_cache()
    return [str(lib)], [("interpreter:executable", str(exe))]


def _fresh(tree: tuple[list[str], list[tuple[str, str]]]) -> bytes:
    search_path, interpreter = tree
    files = launch.measured_files(MODULES, [("native", "libx.so")], search_path, interpreter)
    return launch.launch_digest(m.entry() for m in files)


def _memo(tree: tuple[list[str], list[tuple[str, str]]]) -> bytes:
    search_path, interpreter = tree
    return launch.memoized_measurement(MODULES, [("native", "libx.so")], search_path, interpreter)


def _calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = launch.measured_files

    def counting(*args: object, **kwargs: object) -> list[launch.MeasuredFile]:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(launch, "measured_files", counting)
    return calls


def test_the_memo_is_the_full_measurement_and_is_reused(
    tree: tuple[list[str], list[tuple[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _calls(monkeypatch)
    first = _memo(tree)
    assert first == _fresh(tree)
    assert _memo(tree) == first
    assert len(calls) == 2  # the memo's one computation and _fresh's; the second _memo reused it


def test_a_rewritten_file_is_measured_again(tree: tuple[list[str], list[tuple[str, str]]]) -> None:
    before = _memo(tree)
    core = Path(tree[0][0], "app", "core.py")
    st = core.stat()
    time.sleep(0.05)  # past the coarse clock tick of the first write's ctime
    core.write_text("CORE = 2\n")  # same size
    os.utime(core, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: only ctime moves
    after = _memo(tree)
    assert after != before and after == _fresh(tree)


@pytest.mark.parametrize(
    "plant",
    [
        "missing.py",  # an absent module appears in the search path
        "app/absent.py",  # an absent submodule appears in its package
        "helper/__init__.py",  # a package now shadows the module helper.py
        "native/../native2",  # a new entry in a directory looked in for nothing else
    ],
)
def test_a_planted_or_removed_module_is_measured_again(
    tree: tuple[list[str], list[tuple[str, str]]], plant: str
) -> None:
    lib = Path(tree[0][0])
    before = _memo(tree)
    target = lib / plant
    time.sleep(0.05)
    if plant.endswith("native2"):
        target.mkdir()
        # Nothing measured changed, but the search path's directory did: measured again, same digest.
        assert _memo(tree) == before == _fresh(tree)
        return
    target.parent.mkdir(exist_ok=True)
    target.write_text("# planted\n")
    planted = _memo(tree)
    assert planted != before and planted == _fresh(tree)
    target.unlink()
    time.sleep(0.05)
    assert _memo(tree) == before


def test_a_changed_library_or_interpreter_is_measured_again(
    tree: tuple[list[str], list[tuple[str, str]]],
) -> None:
    before = _memo(tree)
    Path(tree[0][0], "native", "libx.so").write_bytes(b"\x7fELF2")
    changed = _memo(tree)
    assert changed != before and changed == _fresh(tree)
    Path(tree[1][0][1]).write_bytes(b"another interpreter")
    assert _memo(tree) not in (before, changed)


def test_keep_measurement_uses_the_memo_and_clear_cache_drops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    first = launch.keep_measurement()
    calls = _calls(monkeypatch)
    assert launch.keep_measurement() == first
    assert calls == []
    launch.clear_cache()
    assert launch.keep_measurement() == first
    assert calls == [1]
