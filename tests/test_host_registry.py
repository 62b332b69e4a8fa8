"""Keep registry of the keep manager (src/stockade/host/registry.py)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade.errors import StockadeError
from stockade.host import registry as regmod
from stockade.host.registry import (
    ALLOWED_TRANSITIONS,
    FINAL_STATES,
    STATES,
    InvalidTransition,
    KeepNotFound,
    Limits,
    Registry,
    RegistryError,
    proc_is_alive,
    proc_start_time,
)

LIMITS = Limits(timeout_ms=5000, memory_bytes=64 << 20, output_bytes=1 << 20)
SRC = str(Path(regmod.__file__).resolve().parents[2])


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "registry.sqlite3"


@pytest.fixture
def reg(db_path: Path) -> Iterator[Registry]:
    with Registry(db_path) as r:
        yield r


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _drive_to(reg: Registry, state: str) -> str:
    """A new Keep brought to ``state`` along an allowed path."""
    rec = reg.create("sim", LIMITS, "tok-a")
    me = os.getpid()
    if state == "created":
        return rec.keep_id
    if state == "attesting":
        reg.transition(rec.keep_id, "attesting", pid=me)
    elif state == "running":
        reg.transition(rec.keep_id, "running", pid=me)
    else:
        reg.transition(rec.keep_id, "running", pid=me)
        reg.transition(rec.keep_id, state, exit_status=0 if state == "exited" else None)
    assert reg.get(rec.keep_id).state == state
    return rec.keep_id


# -- state machine --------------------------------------------------------------


ALLOWED = [(a, b) for a in STATES for b in sorted(ALLOWED_TRANSITIONS[a])]


@pytest.mark.parametrize(("old", "new"), ALLOWED, ids=[f"{a}->{b}" for a, b in ALLOWED])
def test_allowed_transitions(reg: Registry, old: str, new: str) -> None:
    keep_id = _drive_to(reg, old)
    before = reg.get(keep_id)
    pid = os.getpid() if new in ("attesting", "running") else None
    status = 3 if new == "exited" else None
    after = reg.transition(keep_id, new, pid=pid, exit_status=status, detail=f"to {new}")
    assert after.state == new
    assert after.detail == f"to {new}"
    assert after.created_at == before.created_at
    assert after.updated_at >= before.updated_at
    if new in ("attesting", "running"):
        assert after.started_at is not None
        assert after.pid == os.getpid()
        assert after.pid_start_time == proc_start_time(os.getpid())
        if before.started_at is not None:
            assert after.started_at == before.started_at  # first start is kept
    if new in FINAL_STATES:
        assert after.ended_at is not None and after.ended_at >= after.created_at
        assert after.is_final
    if new == "exited":
        assert after.exit_status == 3
    assert reg.history(keep_id)[-1][:2] == (old, new)


def test_final_states_have_no_way_out() -> None:
    for s in FINAL_STATES:
        assert ALLOWED_TRANSITIONS[s] == frozenset()
    assert set(ALLOWED_TRANSITIONS) == set(STATES)


REFUSED = [
    ("exited", "running"),
    ("exited", "lost"),
    ("lost", "running"),
    ("lost", "exited"),
    ("killed", "exited"),
    ("failed", "failed"),
    ("running", "attesting"),
    ("running", "created"),
    ("running", "running"),
    ("attesting", "created"),
    ("created", "created"),
]


@pytest.mark.parametrize(("old", "new"), REFUSED, ids=[f"{a}->{b}" for a, b in REFUSED])
def test_refused_transitions(reg: Registry, old: str, new: str) -> None:
    keep_id = _drive_to(reg, old)
    before = reg.get(keep_id)
    n_history = len(reg.history(keep_id))
    with pytest.raises(InvalidTransition) as info:
        reg.transition(keep_id, new, pid=os.getpid() if new in ("attesting", "running") else None)
    msg = str(info.value)
    assert f"'{old}'" in msg and f"'{new}'" in msg and keep_id in msg
    assert (info.value.from_state, info.value.to_state) == (old, new)
    assert isinstance(info.value, StockadeError)
    assert info.value.exit_code == 1 and info.value.problem_type == "registry-error"
    assert reg.get(keep_id) == before
    assert len(reg.history(keep_id)) == n_history


def test_transition_argument_checks(reg: Registry) -> None:
    k = reg.create("sim", LIMITS, "tok-a").keep_id
    with pytest.raises(RegistryError, match="needs the pid"):
        reg.transition(k, "running")
    with pytest.raises(RegistryError, match="unknown Keep state 'paused'"):
        reg.transition(k, "paused")
    with pytest.raises(RegistryError, match="exit status can only be recorded"):
        reg.transition(k, "running", pid=os.getpid(), exit_status=0)
    with pytest.raises(RegistryError, match="pid must be a positive integer"):
        reg.transition(k, "running", pid=0)
    with pytest.raises(RegistryError, match="one line"):
        reg.transition(k, "failed", detail="a\nb")
    with pytest.raises(KeepNotFound, match="no Keep with id 'nope'"):
        reg.transition("nope", "failed")
    assert reg.get(k).state == "created"
    assert reg.history(k) == [(None, "created", reg.get(k).created_at, None)]


def test_create_checks_and_ids(reg: Registry, tmp_path: Path) -> None:
    rec = reg.create("sim", LIMITS, "tok-a", log_path=tmp_path / "logs" / "k.log")
    assert len(rec.keep_id) == 16 and int(rec.keep_id, 16) >= 0
    assert rec.state == "created" and rec.limits == LIMITS and rec.owner == "tok-a"
    assert rec.log_path == tmp_path / "logs" / "k.log"
    assert rec.pid is None and rec.started_at is None and rec.ended_at is None and rec.exit_status is None
    assert rec.created_at.utcoffset() is not None and rec.created_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    fixed = reg.create("sim", Limits(), "tok-a", keep_id="0123456789abcdef")
    assert fixed.limits == Limits(None, None, None)
    with pytest.raises(RegistryError, match="already in the registry"):
        reg.create("sim", LIMITS, "tok-a", keep_id="0123456789abcdef")
    with pytest.raises(RegistryError, match="backend"):
        reg.create("SIM; drop", LIMITS, "tok-a")
    with pytest.raises(RegistryError, match="owner"):
        reg.create("sim", LIMITS, "")
    with pytest.raises(RegistryError, match="Keep id"):
        reg.create("sim", LIMITS, "tok-a", keep_id="../x")
    with pytest.raises(RegistryError, match="timeout_ms"):
        Limits(timeout_ms=0)
    with pytest.raises(RegistryError, match="memory_bytes"):
        Limits(memory_bytes=True)
    with pytest.raises(KeepNotFound):
        reg.get("ffffffffffffffff")
    assert len(reg.list()) == 2


def test_list_and_count_active(reg: Registry) -> None:
    a1 = reg.create("sim", LIMITS, "tok-a").keep_id
    a2 = reg.create("sim", LIMITS, "tok-a").keep_id
    a3 = reg.create("sim", LIMITS, "tok-a").keep_id
    b1 = reg.create("snp", LIMITS, "tok-b").keep_id
    reg.transition(a2, "running", pid=os.getpid())
    reg.transition(a3, "killed", detail="stopped by owner")
    assert reg.count_active("tok-a") == 2
    assert reg.count_active("tok-b") == 1
    assert reg.count_active("tok-c") == 0
    assert [r.keep_id for r in reg.list()] == [a1, a2, a3, b1]
    assert [r.keep_id for r in reg.list(owner="tok-a")] == [a1, a2, a3]
    assert [r.keep_id for r in reg.list(states=["running", "killed"])] == [a2, a3]
    assert [r.keep_id for r in reg.list(owner="tok-b", states={"created"})] == [b1]
    assert reg.list(states=[]) == []
    with pytest.raises(RegistryError, match="unknown Keep state 'zombie'"):
        reg.list(states=["zombie"])


# -- storage --------------------------------------------------------------------


def test_persistence_across_reopen(db_path: Path) -> None:
    with Registry(db_path) as r:
        k1 = r.create("sim", LIMITS, "tok-a").keep_id
        k2 = r.create("sim", Limits(timeout_ms=10), "tok-b").keep_id
        r.transition(k1, "attesting", pid=os.getpid())
        r.transition(k1, "running")
        r.transition(k1, "exited", exit_status=7, detail="workload exit")
        snapshot = r.list()
        hist = r.history(k1)
    with Registry(db_path) as r:
        assert r.list() == snapshot
        assert r.history(k1) == hist
        assert [h[1] for h in hist] == ["created", "attesting", "running", "exited"]
        assert r.get(k1).exit_status == 7
        assert r.get(k2).limits == Limits(timeout_ms=10)
        r.integrity_check()


def test_wal_mode_permissions_and_schema(db_path: Path, tmp_path: Path) -> None:
    with Registry(db_path) as r:
        r.create("sim", LIMITS, "tok-a")
        raw = sqlite3.connect(db_path)
        try:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert raw.execute("PRAGMA user_version").fetchone()[0] == regmod.SCHEMA_VERSION
            assert raw.execute("PRAGMA application_id").fetchone()[0] == regmod.APPLICATION_ID
            cols = {row[1] for row in raw.execute("PRAGMA table_info(keeps)")}
        finally:
            raw.close()
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    # No column could hold workload data, secrets or keys.
    assert cols == {
        "keep_id", "backend", "state", "owner", "timeout_ms", "memory_bytes", "output_bytes",
        "created_at", "updated_at", "started_at", "ended_at", "exit_status", "pid",
        "pid_start_time", "log_path", "detail",
    }  # fmt: skip
    with Registry.open_state_dir(tmp_path / "state") as r2:
        assert r2.path == tmp_path / "state" / "registry.sqlite3"
        assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


def test_closed_registry_refuses(db_path: Path) -> None:
    r = Registry(db_path)
    r.close()
    r.close()
    with pytest.raises(RegistryError, match="closed"):
        r.list()


def test_migration_hook(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Registry(db_path) as r:
        k = r.create("sim", LIMITS, "tok-a").keep_id

    def to_v2(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE extra (x INTEGER) STRICT")

    monkeypatch.setattr(regmod, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(regmod._MIGRATIONS, 1, to_v2)
    with Registry(db_path) as r:
        assert r.get(k).state == "created"
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 2
        assert raw.execute("SELECT count(*) FROM extra").fetchone()[0] == 0
    finally:
        raw.close()
    monkeypatch.setattr(regmod, "SCHEMA_VERSION", 1)
    with pytest.raises(RegistryError, match="schema version 2, newer than this stockade supports"):
        Registry(db_path)


def test_corrupt_file_gives_clear_error(db_path: Path) -> None:
    db_path.write_bytes(b"this is not an SQLite database, just some bytes\n" * 100)
    with pytest.raises(RegistryError, match="corrupt or not an SQLite database") as info:
        Registry(db_path)
    assert str(db_path) in str(info.value)
    assert info.value.exit_code == 1 and info.value.problem_type == "registry-error"
    assert db_path.read_bytes().startswith(b"this is not")  # left untouched


def test_damaged_registry_gives_clear_error(db_path: Path) -> None:
    with Registry(db_path) as r:
        for _ in range(300):
            r.create("sim", LIMITS, "tok-a", log_path="/var/lib/stockade/logs/" + "x" * 200)
    # Closing the last connection checkpoints the WAL into the main file.
    data = bytearray(db_path.read_bytes())
    assert len(data) > 4 * 4096
    data[2 * 4096 : len(data) - 4096] = b"\xa5" * (len(data) - 3 * 4096)
    db_path.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match=r"registry .*(corrupt|integrity)"), Registry(db_path) as r:
        r.integrity_check()
        r.list()


def test_foreign_sqlite_file(db_path: Path) -> None:
    raw = sqlite3.connect(db_path)
    raw.execute("CREATE TABLE accounts (id INTEGER)")
    raw.commit()
    raw.close()
    with pytest.raises(RegistryError, match="not a stockade registry"):
        Registry(db_path)
    raw = sqlite3.connect(db_path)
    try:  # not switched to WAL, not modified
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 0
    finally:
        raw.close()


def test_path_errors(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="is a directory"):
        Registry(tmp_path)
    with pytest.raises(RegistryError, match="does not exist"):
        Registry(tmp_path / "missing" / "registry.sqlite3")


# -- concurrency ----------------------------------------------------------------


def _lifecycle(r: Registry, owner: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        k = r.create("sim", LIMITS, owner).keep_id
        r.transition(k, "running", pid=os.getpid())
        r.transition(k, "exited", exit_status=i)
        ids.append(k)
    return ids


def test_threads(db_path: Path) -> None:
    shared = Registry(db_path)
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(20)

    def work(i: int) -> None:
        try:
            barrier.wait()
            if i % 2:
                results.append(_lifecycle(shared, f"tok-{i}", 5))
            else:
                with Registry(db_path) as own:
                    results.append(_lifecycle(own, f"tok-{i}", 5))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    all_ids = {k for ids in results for k in ids}
    assert len(all_ids) == 100
    records = shared.list()
    assert {r.keep_id for r in records} == all_ids
    assert all(r.state == "exited" for r in records)
    assert all(len(shared.history(k)) == 3 for k in all_ids)
    shared.integrity_check()
    shared.close()


def _process_worker(path: str, owner: str) -> list[str]:
    with Registry(path) as r:
        return _lifecycle(r, owner, 25)


def test_processes(db_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(_process_worker, [(str(db_path), f"tok-{i}") for i in range(4)])
    with Registry(db_path) as r:
        records = r.list()
        assert len(records) == 100
        assert {k for ids in results for k in ids} == {rec.keep_id for rec in records}
        assert all(rec.state == "exited" for rec in records)
        for i in range(4):
            assert [rec.exit_status for rec in r.list(owner=f"tok-{i}")] == list(range(25))
        r.integrity_check()


# -- recovery -------------------------------------------------------------------


def test_proc_helpers() -> None:
    me = proc_start_time(os.getpid())
    assert isinstance(me, int) and me > 0
    assert proc_is_alive(os.getpid(), me)
    assert not proc_is_alive(os.getpid(), me + 1)
    assert not proc_is_alive(os.getpid(), None)
    assert proc_start_time(0) is None
    child = _sleeper()
    try:
        st = proc_start_time(child.pid)
        assert proc_is_alive(child.pid, st)
        child.kill()
        while True:  # the unreaped child is a zombie: not alive
            fields = Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()
            if fields[0] == "Z":
                break
        assert not proc_is_alive(child.pid, st)
    finally:
        child.kill()
        child.wait()
    assert proc_start_time(child.pid) is None or not proc_is_alive(child.pid, st)


def test_reconcile_with_real_processes(db_path: Path) -> None:
    alive, dead, dead_with_status, reused = _sleeper(), _sleeper(), _sleeper(), _sleeper()
    try:
        with Registry(db_path) as r:
            k_alive = r.create("sim", LIMITS, "tok-a").keep_id
            r.transition(k_alive, "attesting", pid=alive.pid)
            r.transition(k_alive, "running")
            k_dead = r.create("sim", LIMITS, "tok-a").keep_id
            r.transition(k_dead, "running", pid=dead.pid)
            k_status = r.create("sim", LIMITS, "tok-a").keep_id
            r.transition(k_status, "attesting", pid=dead_with_status.pid)
            # Same pid, different start time: the pid was reused by another process.
            k_reused = r.create("sim", LIMITS, "tok-a").keep_id
            real_start = proc_start_time(reused.pid)
            assert real_start is not None
            r.transition(k_reused, "running", pid=reused.pid, pid_start_time=real_start - 1)
            k_never = r.create("sim", LIMITS, "tok-a").keep_id
            k_done = r.create("sim", LIMITS, "tok-a").keep_id
            r.transition(k_done, "running", pid=dead.pid)
            r.transition(k_done, "exited", exit_status=0)
            done_before = r.get(k_done)
        # The manager "dies" here (the registry is closed without any cleanup).
        for p in (dead, dead_with_status):
            p.kill()
            p.wait()
        with Registry(db_path) as r:
            report = r.reconcile(exit_status_of=lambda rec: 9 if rec.keep_id == k_status else None)
            assert set(report.adopted) == {k_alive}
            assert set(report.lost) == {k_dead, k_reused, k_never}
            assert set(report.exited) == {k_status}
            assert set(report.changed) == {k_dead, k_reused, k_never, k_status}
            assert r.get(k_alive).state == "running" and r.get(k_alive).pid == alive.pid
            lost = r.get(k_dead)
            assert lost.state == "lost" and lost.ended_at is not None and lost.exit_status is None
            assert lost.detail is not None and "gone" in lost.detail and "'running'" in lost.detail
            assert r.get(k_status).state == "exited" and r.get(k_status).exit_status == 9
            assert r.get(k_reused).state == "lost"
            assert r.get(k_never).state == "lost" and "no process" in (r.get(k_never).detail or "")
            assert r.get(k_done) == done_before  # final rows are never touched
            assert len(r.list()) == 6  # nothing deleted
            assert r.history(k_dead)[-1][:2] == ("running", "lost")
            # Idempotent: a second pass only re-adopts.
            again = r.reconcile()
            assert again.adopted == (k_alive,) and again.changed == ()
            # A live re-adopted Keep ends normally afterwards.
            alive.kill()
            alive.wait()
            assert r.reconcile().lost == (k_alive,)
    finally:
        for p in (alive, dead, dead_with_status, reused):
            p.kill()
            p.wait()


def test_reconcile_custom_liveness(reg: Registry) -> None:
    k = reg.create("sim", LIMITS, "tok-a").keep_id
    reg.transition(k, "running", pid=123456, pid_start_time=42)
    seen: list[tuple[int, int | None]] = []

    def alive(pid: int, start: int | None) -> bool:
        seen.append((pid, start))
        return True

    assert reg.reconcile(alive).adopted == (k,)
    assert seen == [(123456, 42)]
    assert reg.reconcile(lambda pid, start: False).lost == (k,)


# -- crash safety ---------------------------------------------------------------

CRASH_WRITER = textwrap.dedent(
    """
    import sqlite3, sys, time
    from stockade.host.registry import Limits, Registry

    path = sys.argv[1]
    r = Registry(path)
    for i in range(100):
        k = r.create("sim", Limits(timeout_ms=1000), "tok-crash").keep_id
        print(k, flush=True)  # printed only after the commit
        if i == 60 and sys.argv[2] == "hold":
            # Open a write transaction on the same file and die inside it.
            raw = sqlite3.connect(path, isolation_level=None)
            raw.execute("BEGIN IMMEDIATE")
            raw.execute("UPDATE keeps SET state = 'lost', detail = 'uncommitted'")
            raw.execute(
                "INSERT INTO keeps (keep_id, backend, state, owner, created_at, updated_at) "
                "VALUES ('uncommitted', 'sim', 'created', 'tok-crash', 'x', 'x')"
            )
            print("HOLD", flush=True)
            time.sleep(60)
    """
)


@pytest.mark.parametrize("mode", ["hold", "race"])
def test_kill_9_mid_transaction_loses_no_committed_record(db_path: Path, mode: str) -> None:
    """SIGKILL a writer: in "hold" mode inside an open write transaction, in
    "race" mode at whatever point of its create loop it has reached."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_WRITER, str(db_path), mode], stdout=subprocess.PIPE, text=True, env=env
    )
    committed: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "HOLD":
                break
            committed.append(line.strip())
            if mode == "race" and len(committed) == 40:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    with Registry(db_path) as r:
        r.integrity_check()
        records = r.list()
        ids = [rec.keep_id for rec in records]
        if mode == "hold":
            assert len(committed) == 61
            assert ids == committed
        else:
            # Rows committed after the last one read may be there too.
            # (A writer that outran the kill may even have finished.)
            assert ids[: len(committed)] == committed
        assert all(rec.state == "created" and rec.detail is None for rec in records)
        assert all(len(r.history(k)) == 1 for k in ids)
        with pytest.raises(KeepNotFound):
            r.get("uncommitted")
        # The registry is writable again after the crash.
        r.transition(committed[0], "failed", detail="after crash")
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        raw.close()
