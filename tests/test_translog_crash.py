"""Crash safety of the log's files (stockade.translog.store docstring): a
crash during an append leaves a log that opens consistently at its last
complete entry, and every tree head a client saw before stays provably a
prefix of the log."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.errors import LogProofError
from stockade.translog import RefusalDigestEntry, TransparencyLog, encode_entry, store, verify_consistency


def refusal(i: int) -> RefusalDigestEntry:
    return RefusalDigestEntry(hashlib.sha256(b"refusal %d" % i).digest())


def snapshot(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in (store.ENTRIES_FILE, store.HEADS_FILE)}


def restore(directory: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (directory / name).write_bytes(data)


def check_consistent(directory: Path, expected_size: int, old_heads: list[bytes]) -> None:
    with TransparencyLog.open(directory) as log:
        assert log.size == log.signed_size == expected_size
        report = log.verify()
        assert report.size == expected_size and not report.recovery
        for old in old_heads:
            size = store.verify_tree_head(old, [log.key]).size
            verify_consistency(old, log.tree_head, log.consistency_proof(size), [log.key])


@pytest.fixture
def no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cut tests write the files themselves: fsync adds only time."""
    monkeypatch.setattr(store.os, "fsync", lambda fd: None)


@pytest.mark.usefixtures("no_fsync")
def test_entries_file_cut_at_every_byte_of_the_last_record(tmp_path: Path) -> None:
    """The crash came while the entry was written: the tree head of the
    append was never written. Every cut opens at the previous size (or,
    with the record complete, signs a head for it)."""
    d = tmp_path / "log"
    with TransparencyLog.create(d) as log:
        log.append([refusal(i) for i in range(4)])
        held = [log.tree_head]
        before = snapshot(d)
        log.append([refusal(4)])
        after = snapshot(d)
    last = store.record(encode_entry(refusal(4)))
    full = after[store.ENTRIES_FILE]
    assert full.endswith(last)
    start = len(full) - len(last)
    for cut in range(start, len(full) + 1):
        restore(d, {store.ENTRIES_FILE: full[:cut], store.HEADS_FILE: before[store.HEADS_FILE]})
        with TransparencyLog.open(d, writable=False) as ro:
            assert ro.recovery.torn_entry_bytes == (cut - start if cut < len(full) else 0)
        expected = 5 if cut == len(full) else 4
        check_consistent(d, expected, held)
        assert (d / store.ENTRIES_FILE).stat().st_size == (cut if cut == len(full) else start)
        # and the log goes on
        with TransparencyLog.open(d) as log:
            log.append([refusal(99)])
        check_consistent(d, expected + 1, held)


@pytest.mark.usefixtures("no_fsync")
def test_tree_heads_file_cut_at_every_byte_of_its_last_record(tmp_path: Path) -> None:
    """The crash came while the tree head was written: the entries are
    durable, so the log opens with them and signs a head for them."""
    d = tmp_path / "log"
    with TransparencyLog.create(d) as log:
        log.append([refusal(i) for i in range(3)])
        held = [log.tree_head]
        log.append([refusal(3), refusal(4)])
        after = snapshot(d)
        last = store.record(log.tree_head)
    heads = after[store.HEADS_FILE]
    start = len(heads) - len(last)
    for cut in range(start, len(heads) + 1):
        restore(d, {store.ENTRIES_FILE: after[store.ENTRIES_FILE], store.HEADS_FILE: heads[:cut]})
        check_consistent(d, 5, held)


@pytest.mark.parametrize("name", [store.ENTRIES_FILE, store.HEADS_FILE])
def test_zero_filled_tail_is_a_torn_append(tmp_path: Path, name: str) -> None:
    """Blocks allocated but never written read back as zeros."""
    d = tmp_path / "log"
    with TransparencyLog.create(d) as log:
        log.append([refusal(0), refusal(1)])
        held = [log.tree_head]
    with open(d / name, "ab") as f:
        f.write(b"\x00" * 4096)
    check_consistent(d, 2, held)
    assert (d / name).read_bytes()[-4096:] != b"\x00" * 4096


def test_damage_before_the_last_record_is_not_taken_for_a_crash(tmp_path: Path) -> None:
    d = tmp_path / "log"
    with TransparencyLog.create(d) as log:
        log.append([refusal(i) for i in range(3)])
    data = bytearray((d / store.ENTRIES_FILE).read_bytes())
    first_len = len(store.record(encode_entry(refusal(0))))
    for pos in (0, 5, first_len - 1, first_len + 4):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        (d / store.ENTRIES_FILE).write_bytes(bytes(bad))
        with pytest.raises(LogProofError):
            TransparencyLog.open(d)
    (d / store.ENTRIES_FILE).write_bytes(bytes(data))
    check_consistent(d, 3, [])


WRITER = """
import sys
from pathlib import Path
from stockade.translog import CertificateEntry, TransparencyLog
d = Path(sys.argv[1])
with TransparencyLog.open(d) as log:
    print("ready", log.size, flush=True)
    i = 0
    while True:
        # large entries, so that a kill often lands inside a write
        log.append([CertificateEntry(bytes([i % 256]) * 200_000 + i.to_bytes(4, "big"))])
        print("appended", log.size, flush=True)
        i += 1
"""


def test_writer_killed_mid_append_leaves_a_consistent_log(tmp_path: Path) -> None:
    """SIGKILL a writer process at random moments; each time the log opens
    with at least every append the writer had acknowledged, verifies, and
    extends every tree head seen before."""
    d = tmp_path / "log"
    TransparencyLog.create(d).close()
    rng = random.Random(17)
    held: list[bytes] = []
    interrupted = 0
    deadline = time.monotonic() + 60
    for _round in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(d)], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
        )
        try:
            assert proc.stdout is not None
            acknowledged = int(proc.stdout.readline().split()[1])
            target = rng.randint(1, 4)
            for _ in range(target):
                line = proc.stdout.readline()
                assert line.startswith("appended"), line
                acknowledged = int(line.split()[1])
            time.sleep(rng.uniform(0, 0.02))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        with TransparencyLog.open(d, writable=False) as ro:
            interrupted += bool(ro.recovery)
        with TransparencyLog.open(d) as log:
            assert log.size >= acknowledged
            assert log.size == log.signed_size
            log.verify()
            for old in held:
                size = store.verify_tree_head(old, [log.key]).size
                verify_consistency(old, log.tree_head, log.consistency_proof(size), [log.key])
            held.append(log.tree_head)
        assert time.monotonic() < deadline
    with TransparencyLog.open(d, writable=False) as log:
        assert log.size >= 6
    print(f"{interrupted} of 6 kills interrupted an append")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(st.integers(1, 5), min_size=1, max_size=6),
    crash_file=st.sampled_from([store.ENTRIES_FILE, store.HEADS_FILE]),
    cut=st.floats(0, 1),
)
def test_property_any_crash_point_of_the_last_append(
    tmp_path_factory: pytest.TempPathFactory, batches: list[int], crash_file: str, cut: float
) -> None:
    """Random appends, then a crash somewhere in the last one: the entry
    file cut anywhere in the new records (the head never written), or the
    head file cut anywhere in the new head. The log opens at the last
    complete entry and extends every head seen before the last append."""
    d = tmp_path_factory.mktemp("prop") / "log"
    i = 0
    with TransparencyLog.create(d) as log:
        held = []
        for n in batches[:-1]:
            log.append([refusal(i + k) for k in range(n)])
            i += n
            held.append(log.tree_head)
        before = snapshot(d)
        size_before = log.size
        log.append([refusal(i + k) for k in range(batches[-1])])
        after = snapshot(d)
    if crash_file == store.ENTRIES_FILE:
        grown = after[store.ENTRIES_FILE]
        start = len(before[store.ENTRIES_FILE])
        at = start + int(cut * (len(grown) - start))
        restore(d, {store.ENTRIES_FILE: grown[:at], store.HEADS_FILE: before[store.HEADS_FILE]})
        complete = len(store.read_records(grown[:at], "entries").payloads)
        expected = complete
    else:
        grown = after[store.HEADS_FILE]
        start = len(before[store.HEADS_FILE])
        at = start + int(cut * (len(grown) - start))
        restore(d, {store.ENTRIES_FILE: after[store.ENTRIES_FILE], store.HEADS_FILE: grown[:at]})
        expected = size_before + batches[-1]
    check_consistent(d, expected, held)


def test_failed_append_stops_the_writer_and_reopening_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails half-way (disk full) leaves a torn record: the
    same log object refuses to write after it; a reopen cuts it."""
    d = tmp_path / "log"
    log = TransparencyLog.create(d)
    log.append([refusal(0)])
    held = [log.tree_head]
    real_write = os.write

    def half_write(fd: int, data: bytes) -> int:
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(store.os, "write", half_write)
    with pytest.raises(store.LogWriteFailed, match="short write"):
        log.append([refusal(1)])
    monkeypatch.setattr(store.os, "write", real_write)
    with pytest.raises(store.LogWriteFailed, match="reopen"):
        log.append([refusal(2)])
    log.close()
    check_consistent(d, 1, held)
    with TransparencyLog.open(d) as again:
        again.append([refusal(1)])
    check_consistent(d, 2, held)
