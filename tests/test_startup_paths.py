"""The pieces the cold path of ``stockade run`` was rebuilt from (issue 18):
the one-shot result that replaced concurrent.futures, the loader's hashing
threads, and the Keep's wasmtime version without importlib.metadata."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from stockade import oneshot
from stockade.keep.loading import distribution_version
from stockade.measure import launch


def test_oneshot_hands_over_a_value_and_an_exception() -> None:
    assert oneshot.start(lambda: 42, "t").result(timeout=10) == 42

    def fail() -> int:
        raise ValueError("refused")

    failed = oneshot.start(fail, "t")
    with pytest.raises(ValueError, match="refused"):
        failed.result(timeout=10)
    with pytest.raises(ValueError, match="refused"):  # every reader sees it
        failed.result(timeout=10)


def test_oneshot_result_times_out_while_unset() -> None:
    pending: oneshot.OneShot[int] = oneshot.OneShot()
    assert not pending.done()
    with pytest.raises(TimeoutError):
        pending.result(timeout=0.01)
    pending.set_result(7)
    assert pending.done() and pending.result() == 7


def test_hash_all_hashes_every_file_and_raises_for_an_unreadable_one(tmp_path: Path) -> None:
    files = []
    for i in range(7):
        f = tmp_path / f"f{i}"
        f.write_bytes(bytes([i]) * (1000 * i + 1))
        files.append(str(f))
    launch.clear_cache()
    digests = launch._hash_all([*files, files[0]])  # a file named twice is hashed once
    assert digests == {f: hashlib.sha256(Path(f).read_bytes()).digest() for f in files}
    with pytest.raises(FileNotFoundError):
        launch._hash_all([*files, str(tmp_path / "missing")])


def test_distribution_version_reads_the_first_dist_info_on_sys_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for where, version in ((first, "1.2.3"), (second, "9.9.9")):
        meta = where / f"fakedist-{version}.dist-info"
        meta.mkdir(parents=True)
        (meta / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: fakedist\nVersion: {version}\n\nVersion: 0.0.0 (body)\n"
        )
    monkeypatch.setattr(sys, "path", [str(tmp_path / "none"), str(first), str(second)])
    assert distribution_version("fakedist") == "1.2.3"
    assert distribution_version("otherdist") == "unknown"


def test_distribution_version_agrees_with_importlib_metadata() -> None:
    from importlib.metadata import version

    assert distribution_version("wasmtime") == version("wasmtime")
