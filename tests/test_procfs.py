"""The one /proc reader (src/stockade/procfs.py): live processes and fake
/proc trees with every way a stat or status file can fail to parse."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stockade import procfs

STAT = "4242 (name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 {start} 1000 10 {rest}\n"


def fake(tmp_path: Path, pid: int, stat: bytes | None = None, status: bytes | None = None) -> Path:
    d = tmp_path / str(pid)
    d.mkdir()
    if stat is not None:
        (d / "stat").write_bytes(stat)
    if status is not None:
        (d / "status").write_bytes(status)
    return tmp_path


def test_own_process() -> None:
    me = procfs.start_time(os.getpid())
    assert isinstance(me, int) and me > 0
    assert procfs.start_time("self") == me
    assert procfs.is_alive(os.getpid(), me)
    assert not procfs.is_alive(os.getpid(), me + 1)
    assert not procfs.is_alive(os.getpid(), None)
    assert procfs.status_number("Threads") >= 1  # type: ignore[operator]
    assert procfs.status_number("VmHWM") > 0  # type: ignore[operator]


def test_ended_process_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        st = procfs.start_time(child.pid)
        assert st is not None
    finally:
        child.wait()
    assert not procfs.is_alive(child.pid, st)
    assert procfs.start_time(child.pid) is None


@pytest.mark.parametrize("pid", [0, -1])
def test_no_process_for_nonpositive_pids(pid: int) -> None:
    assert procfs.read_stat(pid) is None
    assert procfs.start_time(pid) is None
    assert not procfs.is_alive(pid, 1)


def test_comm_with_spaces_and_parentheses(tmp_path: Path) -> None:
    stat = STAT.replace("(name)", "(a) b (c) Z)").format(start=777, rest="0 0").encode()
    proc = fake(tmp_path, 4242, stat=stat)
    fields = procfs.read_stat(4242, proc=proc)
    assert fields is not None and fields[0] == "S"
    assert procfs.start_time(4242, proc=proc) == 777
    assert procfs.is_alive(4242, 777, proc=proc)


@pytest.mark.parametrize("state", ["Z", "X", "x"])
def test_zombie_or_dead_is_not_alive(tmp_path: Path, state: str) -> None:
    stat = STAT.replace(") S ", f") {state} ").format(start=5, rest="").encode()
    proc = fake(tmp_path, 4242, stat=stat)
    assert procfs.start_time(4242, proc=proc) == 5
    assert not procfs.is_alive(4242, 5, proc=proc)


@pytest.mark.parametrize(
    "stat",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"4242 name S 1 2 3\n", id="no-comm"),
        pytest.param(b"4242 name) S 1 2 3\n", id="no-open-paren"),
        pytest.param(b"4242 (name) S 1 2 3\n", id="truncated"),
        pytest.param(STAT.format(start="12x", rest="").encode(), id="start-not-a-number"),
        pytest.param(b"\xff\xfe (\xff) S" + b" \xff" * 30, id="binary"),
    ],
)
def test_malformed_stat_is_unknown_not_an_exception(tmp_path: Path, stat: bytes) -> None:
    proc = fake(tmp_path, 4242, stat=stat)
    assert procfs.start_time(4242, proc=proc) is None
    assert not procfs.is_alive(4242, 12, proc=proc)


def test_missing_or_unreadable_files(tmp_path: Path) -> None:
    assert procfs.read_stat(4242, proc=tmp_path) is None  # no such process
    (tmp_path / "4243").write_text("a file, not a directory")
    assert procfs.read_stat(4243, proc=tmp_path) is None
    assert procfs.status_number("Threads", 4243, proc=tmp_path) is None
    fake(tmp_path, 4244)
    (tmp_path / "4244" / "stat").mkdir()  # EISDIR
    assert procfs.start_time(4244, proc=tmp_path) is None


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param(b"Name:\tx\nThreads:\t3\nVmHWM:\t  1024 kB\n", 3, id="present"),
        pytest.param(b"Name:\tx\n", None, id="absent"),
        pytest.param(b"Threads:\n", None, id="empty-value"),
        pytest.param(b"Threads:\t-1\n", None, id="negative"),
        pytest.param(b"Threads:\tmany\n", None, id="not-a-number"),
        pytest.param(b"ThreadsX:\t3\n", None, id="other-key"),
    ],
)
def test_status_number(tmp_path: Path, status: bytes, expected: int | None) -> None:
    proc = fake(tmp_path, 4242, status=status)
    assert procfs.status_number("Threads", 4242, proc=proc) == expected


def test_status_unit_is_dropped(tmp_path: Path) -> None:
    proc = fake(tmp_path, 4242, status=b"VmHWM:\t  1024 kB\n")
    assert procfs.status_number("VmHWM", 4242, proc=proc) == 1024


def test_cpu_seconds_and_memory_of_a_fake_process(tmp_path: Path) -> None:
    from stockade.procfs import cpu_seconds, memory_mib

    proc = tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    ticks = os.sysconf("SC_CLK_TCK")
    fields = ["S"] + ["0"] * 10 + [str(3 * ticks), str(ticks)] + ["0"] * 30
    (proc / "42" / "stat").write_text("42 (x y) " + " ".join(fields) + "\n")
    assert cpu_seconds(42, proc=proc) == 4.0
    (proc / "42" / "smaps_rollup").write_text(
        "00400000-7fff [rollup]\nRss:  2048 kB\nPss:  1024 kB\nPrivate_Clean: 256 kB\nPrivate_Dirty: 256 kB\n"
    )
    assert memory_mib(42, proc=proc) == {"rss": 2.0, "pss": 1.0, "uss": 0.5}
    assert memory_mib(43, proc=proc) is None and cpu_seconds(43, proc=proc) == 0.0
