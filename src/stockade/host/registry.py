"""Keep registry of the keep manager: which Keeps exist and what became of them.

Host code (untrusted side): it imports only the standard library,
``stockade.errors`` and ``stockade.procfs`` (the one /proc reader). The registry is one SQLite file in the manager's state
directory, in WAL mode, written with ``synchronous=FULL``:

* one row per Keep: id, backend, state, owner (token id), limits, pid and the
  process start time (``/proc/<pid>/stat`` field 22, to detect pid reuse),
  timestamps (UTC), exit status, log path and a short detail line;
* an append-only ``transitions`` table with every state change.

There is no column for workload data, secrets or keys: the registry only
ever holds what the untrusted host already knows.

Every write is one ``BEGIN IMMEDIATE`` transaction, so concurrent writers
(threads sharing a :class:`Registry`, several :class:`Registry` objects, or
several processes) serialise on SQLite's write lock and wait up to
``busy_timeout`` for it. A writer killed mid-transaction loses only that
uncommitted transaction.

State machine::

    created --> attesting --> running --> exited | failed | killed | lost
       |            |                        ^
       +------------+------------------------+   (any non-final -> any final)

``created`` may also go straight to ``running`` (backends without a separate
attestation phase). ``exited``, ``failed``, ``killed`` and ``lost`` are
final. Records are never deleted, by recovery or otherwise.

After a crash of the manager, :meth:`Registry.reconcile` walks the rows in a
non-final state: a live process whose start time matches the recorded one is
re-adopted (state kept), anything else becomes ``exited`` (if an exit status
is known) or ``lost``.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from stockade.errors import StockadeError
from stockade.procfs import is_alive as proc_is_alive
from stockade.procfs import start_time as proc_start_time

__all__ = [
    "ACTIVE_STATES",
    "ALLOWED_TRANSITIONS",
    "FINAL_STATES",
    "SCHEMA_VERSION",
    "STATES",
    "InvalidTransition",
    "KeepNotFound",
    "KeepRecord",
    "Limits",
    "ReconcileReport",
    "Registry",
    "RegistryError",
    "proc_is_alive",
    "proc_start_time",
]


class RegistryError(StockadeError):
    """The Keep registry cannot be opened, read or written as asked."""

    exit_code = 1
    problem_type = "registry-error"
    title = "registry error"


class KeepNotFound(RegistryError):
    """No Keep with the given id is in the registry."""


class InvalidTransition(RegistryError):
    """A state change that the Keep state machine does not allow."""

    def __init__(self, detail: str, keep_id: str, from_state: str, to_state: str) -> None:
        super().__init__(detail)
        self.keep_id = keep_id
        self.from_state = from_state
        self.to_state = to_state


STATES: Final = ("created", "attesting", "running", "exited", "failed", "killed", "lost")
FINAL_STATES: Final = frozenset({"exited", "failed", "killed", "lost"})
ACTIVE_STATES: Final = frozenset({"created", "attesting", "running"})
_FINALS = ("exited", "failed", "killed", "lost")
ALLOWED_TRANSITIONS: Final[Mapping[str, frozenset[str]]] = {
    "created": frozenset({"attesting", "running", *_FINALS}),
    "attesting": frozenset({"running", *_FINALS}),
    "running": frozenset(_FINALS),
    "exited": frozenset(),
    "failed": frozenset(),
    "killed": frozenset(),
    "lost": frozenset(),
}
#: States that mean "a process exists": entering one needs a pid.
_PROCESS_STATES = frozenset({"attesting", "running"})

#: Bumped with every schema change; ``_MIGRATIONS[n]`` takes version n to n+1.
SCHEMA_VERSION: Final = 1
#: PRAGMA application_id of a stockade registry ("STKR"), to tell it from
#: other SQLite files.
APPLICATION_ID: Final = 0x53544B52

_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_BACKEND_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_OWNER_RE = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces
_DETAIL_MAX = 500
_BUSY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Limits:
    """Resource limits of one Keep (None: no limit of that kind)."""

    timeout_ms: int | None = None
    memory_bytes: int | None = None
    output_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("timeout_ms", "memory_bytes", "output_bytes"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value >= 2**63:
                raise RegistryError(f"limit {name} must be a positive integer below 2**63, got {value!r}")


@dataclass(frozen=True)
class KeepRecord:
    """One Keep as the registry knows it (a snapshot; never updated in place)."""

    keep_id: str
    backend: str
    state: str
    owner: str
    limits: Limits
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    exit_status: int | None
    pid: int | None
    pid_start_time: int | None
    log_path: Path | None
    detail: str | None

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class ReconcileReport:
    """What :meth:`Registry.reconcile` did, by Keep id."""

    adopted: tuple[str, ...] = ()
    lost: tuple[str, ...] = ()
    exited: tuple[str, ...] = ()

    @property
    def changed(self) -> tuple[str, ...]:
        return self.lost + self.exited


# -- schema --------------------------------------------------------------------


def _migrate_0_to_1(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE keeps (
            keep_id        TEXT PRIMARY KEY NOT NULL,
            backend        TEXT NOT NULL,
            state          TEXT NOT NULL CHECK (state IN
                               ('created','attesting','running','exited','failed','killed','lost')),
            owner          TEXT NOT NULL,
            timeout_ms     INTEGER CHECK (timeout_ms IS NULL OR timeout_ms > 0),
            memory_bytes   INTEGER CHECK (memory_bytes IS NULL OR memory_bytes > 0),
            output_bytes   INTEGER CHECK (output_bytes IS NULL OR output_bytes > 0),
            created_at     TEXT NOT NULL,
            updated_at     TEXT NOT NULL,
            started_at     TEXT,
            ended_at       TEXT,
            exit_status    INTEGER,
            pid            INTEGER,
            pid_start_time INTEGER,
            log_path       TEXT,
            detail         TEXT
        ) STRICT
        """
    )
    db.execute("CREATE INDEX keeps_owner_state ON keeps (owner, state)")
    db.execute("CREATE INDEX keeps_state ON keeps (state)")
    db.execute(
        """
        CREATE TABLE transitions (
            seq        INTEGER PRIMARY KEY AUTOINCREMENT,
            keep_id    TEXT NOT NULL REFERENCES keeps (keep_id),
            from_state TEXT,
            to_state   TEXT NOT NULL,
            at         TEXT NOT NULL,
            detail     TEXT
        ) STRICT
        """
    )
    db.execute("CREATE INDEX transitions_keep ON transitions (keep_id, seq)")


#: Migration hook: ``_MIGRATIONS[n]`` upgrades a version-n registry to n+1,
#: inside the caller's transaction. Add an entry (and bump SCHEMA_VERSION)
#: for every schema change; never edit an existing entry.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {0: _migrate_0_to_1}

_COLUMNS = (
    "keep_id, backend, state, owner, timeout_ms, memory_bytes, output_bytes, created_at, updated_at, "
    "started_at, ended_at, exit_status, pid, pid_start_time, log_path, detail"
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _ts(value: object) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(str(value))


def _record(row: tuple[object, ...]) -> KeepRecord:
    (
        keep_id,
        backend,
        state,
        owner,
        t_ms,
        mem,
        out,
        created,
        updated,
        started,
        ended,
        status,
        pid,
        pst,
        log,
        detail,
    ) = row

    def opt_int(v: object) -> int | None:
        return None if v is None else int(str(v))

    created_at = _ts(created)
    updated_at = _ts(updated)
    assert created_at is not None and updated_at is not None
    return KeepRecord(
        keep_id=str(keep_id),
        backend=str(backend),
        state=str(state),
        owner=str(owner),
        limits=Limits(opt_int(t_ms), opt_int(mem), opt_int(out)),
        created_at=created_at,
        updated_at=updated_at,
        started_at=_ts(started),
        ended_at=_ts(ended),
        exit_status=opt_int(status),
        pid=opt_int(pid),
        pid_start_time=opt_int(pst),
        log_path=None if log is None else Path(str(log)),
        detail=None if detail is None else str(detail),
    )


def _check_detail(detail: str | None) -> str | None:
    if detail is None:
        return None
    if len(detail) > _DETAIL_MAX or any(ord(c) < 0x20 for c in detail):
        raise RegistryError(f"detail must be one line of at most {_DETAIL_MAX} characters")
    return detail


def _check_states(states: Iterable[str]) -> tuple[str, ...]:
    out = tuple(states)
    for s in out:
        if s not in STATES:
            raise RegistryError(f"unknown Keep state {s!r}; known states: {', '.join(STATES)}")
    return out


# -- the registry --------------------------------------------------------------


class Registry:
    """The Keep registry in one SQLite file.

    One object may be shared by threads (calls are serialised by a lock);
    other objects and other processes may open the same file at the same
    time. Use as a context manager or call :meth:`close`.
    """

    FILENAME: Final = "registry.sqlite3"

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = _BUSY_TIMEOUT_S) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        if self.path.is_dir():
            raise RegistryError(f"registry {self.path} is a directory; expected an SQLite file")
        if not self.path.parent.is_dir():
            raise RegistryError(f"registry directory {self.path.parent} does not exist")
        # Create the file owner-only before SQLite does (its -wal and -shm
        # files inherit the mode).
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        with self._errors("open"):
            db = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        try:
            with self._errors("open"):
                db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
                self._db = db
                self._open_schema(db)
                mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise RegistryError(f"registry {self.path}: cannot switch to WAL mode (got {mode!r})")
                db.execute("PRAGMA synchronous = FULL")
                db.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            self._db = None
            db.close()
            raise

    @classmethod
    def open_state_dir(cls, state_dir: str | os.PathLike[str]) -> Registry:
        """Open (creating if needed, mode 0700) ``<state_dir>/registry.sqlite3``."""
        d = Path(state_dir)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        return cls(d / cls.FILENAME)

    # -- plumbing

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            msg = str(exc)
            if type(exc) is sqlite3.DatabaseError or "not a database" in msg or "malformed" in msg:
                raise RegistryError(
                    f"registry {self.path} is corrupt or not an SQLite database ({action}: {msg})"
                ) from exc
            if "locked" in msg or "busy" in msg:
                raise RegistryError(
                    f"registry {self.path} is busy; gave up waiting ({action}: {msg})"
                ) from exc
            raise RegistryError(f"registry {self.path}: {action} failed: {msg}") from exc

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RegistryError(f"registry {self.path} is closed")
        return self._db

    @contextlib.contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on error)."""
        with self._lock, self._errors(action):
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _open_schema(self, db: sqlite3.Connection) -> None:
        # A foreign or corrupt file fails here, before anything is written.
        db.execute("BEGIN IMMEDIATE")
        try:
            app_id = int(db.execute("PRAGMA application_id").fetchone()[0])
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            n_objects = int(db.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0])
            if app_id == 0 and version == 0 and n_objects == 0:
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            elif app_id != APPLICATION_ID:
                raise RegistryError(
                    f"{self.path} is an SQLite database but not a stockade registry "
                    f"(application_id {app_id:#x}, expected {APPLICATION_ID:#x})"
                )
            if version > SCHEMA_VERSION:
                raise RegistryError(
                    f"registry {self.path} has schema version {version}, newer than this stockade "
                    f"supports ({SCHEMA_VERSION}); upgrade stockade"
                )
            while version < SCHEMA_VERSION:
                _MIGRATIONS[version](db)
                version += 1
                db.execute(f"PRAGMA user_version = {version}")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading

    def get(self, keep_id: str) -> KeepRecord:
        """The record of ``keep_id``; :class:`KeepNotFound` if there is none."""
        with self._lock, self._errors("read"):
            sql = f"SELECT {_COLUMNS} FROM keeps WHERE keep_id = ?"  # noqa: S608 (constants only)
            row = self._conn().execute(sql, (keep_id,)).fetchone()
        if row is None:
            raise KeepNotFound(f"no Keep with id {keep_id!r} in the registry")
        return _record(row)

    def list(self, owner: str | None = None, states: Iterable[str] | None = None) -> list[KeepRecord]:
        """Records, oldest first, optionally only of ``owner`` and in ``states``."""
        # Only constants and "?" placeholders are formatted into SQL here.
        sql = f"SELECT {_COLUMNS} FROM keeps"  # noqa: S608
        where: list[str] = []
        args: list[object] = []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if states is not None:
            wanted = _check_states(states)
            if not wanted:
                return []
            where.append(f"state IN ({', '.join('?' * len(wanted))})")
            args.extend(wanted)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at, rowid"
        with self._lock, self._errors("read"):
            rows = self._conn().execute(sql, args).fetchall()
        return [_record(r) for r in rows]

    def count_active(self, owner: str) -> int:
        """How many of ``owner``'s Keeps are in a non-final state (for quotas)."""
        with self._lock, self._errors("read"):
            row = (
                self._conn()
                .execute(
                    "SELECT count(*) FROM keeps WHERE owner = ? AND state IN ('created', 'attesting', 'running')",
                    (owner,),
                )
                .fetchone()
            )
        return int(row[0])

    def history(self, keep_id: str) -> builtins.list[tuple[str | None, str, datetime, str | None]]:
        """State changes of ``keep_id`` as (from, to, at, detail), oldest first."""
        with self._lock, self._errors("read"):
            rows = (
                self._conn()
                .execute(
                    "SELECT from_state, to_state, at, detail FROM transitions WHERE keep_id = ? ORDER BY seq",
                    (keep_id,),
                )
                .fetchall()
            )
        out: builtins.list[tuple[str | None, str, datetime, str | None]] = []
        for f, t, at, d in rows:
            when = _ts(at)
            assert when is not None
            out.append((None if f is None else str(f), str(t), when, None if d is None else str(d)))
        return out

    def integrity_check(self) -> None:
        """Run SQLite's integrity check; :class:`RegistryError` unless it is ok."""
        with self._lock, self._errors("integrity check"):
            rows = self._conn().execute("PRAGMA integrity_check").fetchall()
        result = "; ".join(str(r[0]) for r in rows)
        if result != "ok":
            raise RegistryError(f"registry {self.path} failed the integrity check: {result[:300]}")

    # -- writing

    def create(
        self,
        backend: str,
        limits: Limits,
        owner: str,
        *,
        keep_id: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        running_pid: int | None = None,
    ) -> KeepRecord:
        """Add a Keep in state ``created``. ``keep_id`` defaults to 16 random
        hex digits (the loader's format). ``running_pid``: the Keep process
        already runs (a warm Keep handed out by stockade.host.keeppool):
        record it ``created`` then ``running`` with that pid in the same
        transaction (one write to disk instead of two)."""
        if not isinstance(backend, str) or not _BACKEND_RE.fullmatch(backend):
            raise RegistryError(f"backend must match {_BACKEND_RE.pattern}, got {backend!r}")
        if not isinstance(owner, str) or not _OWNER_RE.fullmatch(owner):
            raise RegistryError("owner must be 1 to 128 printable ASCII characters without spaces")
        if not isinstance(limits, Limits):
            raise RegistryError(f"limits must be a Limits, got {type(limits).__name__}")
        if keep_id is None:
            keep_id = secrets.token_hex(8)
        elif not _ID_RE.fullmatch(keep_id):
            raise RegistryError(f"Keep id must match {_ID_RE.pattern}, got {keep_id!r}")
        log = None if log_path is None else os.fspath(log_path)
        now = _now()
        try:
            with self._write("create") as db:
                db.execute(
                    "INSERT INTO keeps (keep_id, backend, state, owner, timeout_ms, memory_bytes, output_bytes, "
                    "created_at, updated_at, log_path) VALUES (?, ?, 'created', ?, ?, ?, ?, ?, ?, ?)",
                    (
                        keep_id,
                        backend,
                        owner,
                        limits.timeout_ms,
                        limits.memory_bytes,
                        limits.output_bytes,
                        now,
                        now,
                        log,
                    ),
                )
                db.execute(
                    "INSERT INTO transitions (keep_id, from_state, to_state, at) VALUES (?, NULL, 'created', ?)",
                    (keep_id, now),
                )
                if running_pid is not None:
                    self._transition_locked(
                        db, keep_id, "running", running_pid, proc_start_time(running_pid), None, None
                    )
        except RegistryError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise RegistryError(f"a Keep with id {keep_id!r} is already in the registry") from exc
            raise
        return self.get(keep_id)

    def transition(
        self,
        keep_id: str,
        new_state: str,
        *,
        pid: int | None = None,
        exit_status: int | None = None,
        detail: str | None = None,
        pid_start_time: int | None = None,
    ) -> KeepRecord:
        """Move ``keep_id`` to ``new_state`` in one transaction.

        ``pid`` records the Keep process (required when entering
        ``attesting`` or ``running`` unless one is recorded already); its
        start time is read from /proc unless ``pid_start_time`` is given.
        ``exit_status`` may be recorded on entering a final state.
        Refused changes raise :class:`InvalidTransition` naming both states.
        """
        if new_state not in STATES:
            raise RegistryError(f"unknown Keep state {new_state!r}; known states: {', '.join(STATES)}")
        detail = _check_detail(detail)
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0):
            raise RegistryError(f"pid must be a positive integer, got {pid!r}")
        if pid is None and pid_start_time is not None:
            raise RegistryError("pid_start_time given without a pid")
        if exit_status is not None:
            if isinstance(exit_status, bool) or not isinstance(exit_status, int):
                raise RegistryError(f"exit status must be an integer, got {exit_status!r}")
            if new_state not in FINAL_STATES:
                raise RegistryError(
                    f"an exit status can only be recorded on entering a final state, not {new_state!r}"
                )
        if pid is not None and pid_start_time is None:
            pid_start_time = proc_start_time(pid)  # None if it is already gone
        with self._write("transition") as db:
            self._transition_locked(db, keep_id, new_state, pid, pid_start_time, exit_status, detail)
        return self.get(keep_id)

    def _transition_locked(
        self,
        db: sqlite3.Connection,
        keep_id: str,
        new_state: str,
        pid: int | None,
        pid_start_time: int | None,
        exit_status: int | None,
        detail: str | None,
        *,
        expect: str | None = None,
    ) -> str:
        row = db.execute("SELECT state, pid FROM keeps WHERE keep_id = ?", (keep_id,)).fetchone()
        if row is None:
            raise KeepNotFound(f"no Keep with id {keep_id!r} in the registry")
        old_state, old_pid = str(row[0]), row[1]
        if expect is not None and old_state != expect:
            return old_state
        if new_state not in ALLOWED_TRANSITIONS[old_state]:
            why = (
                f"{old_state!r} is final"
                if old_state in FINAL_STATES
                else (f"allowed from {old_state!r}: {', '.join(sorted(ALLOWED_TRANSITIONS[old_state]))}")
            )
            raise InvalidTransition(
                f"Keep {keep_id}: refused transition from {old_state!r} to {new_state!r} ({why})",
                keep_id,
                old_state,
                new_state,
            )
        if new_state in _PROCESS_STATES and pid is None and old_pid is None:
            raise RegistryError(f"Keep {keep_id}: entering {new_state!r} needs the pid of the Keep process")
        now = _now()
        sets = ["state = ?", "updated_at = ?", "detail = ?"]
        args: list[object] = [new_state, now, detail]
        if pid is not None:
            sets += ["pid = ?", "pid_start_time = ?"]
            args += [pid, pid_start_time]
        if new_state in _PROCESS_STATES:
            sets.append("started_at = coalesce(started_at, ?)")
            args.append(now)
        if new_state in FINAL_STATES:
            sets.append("ended_at = ?")
            args.append(now)
            if exit_status is not None:
                sets.append("exit_status = ?")
                args.append(exit_status)
        # sets holds constant column clauses; all values are bound parameters.
        db.execute(f"UPDATE keeps SET {', '.join(sets)} WHERE keep_id = ?", [*args, keep_id])  # noqa: S608
        db.execute(
            "INSERT INTO transitions (keep_id, from_state, to_state, at, detail) VALUES (?, ?, ?, ?, ?)",
            (keep_id, old_state, new_state, now, detail),
        )
        return new_state

    # -- recovery

    def reconcile(
        self,
        is_alive: Callable[[int, int | None], bool] = proc_is_alive,
        *,
        exit_status_of: Callable[[KeepRecord], int | None] | None = None,
    ) -> ReconcileReport:
        """Match rows in a non-final state against live processes (run at
        manager start, before serving requests).

        ``is_alive(pid, start_time)`` says whether the recorded process still
        runs (default: /proc, with the start time guarding against pid
        reuse). Alive: the Keep is re-adopted, its row untouched. Not alive
        (or no pid recorded): ``exited`` if an exit status is known (in the
        row, or from ``exit_status_of``), else ``lost``. Each change is its
        own transaction and re-checks the state first; no row is deleted.
        """
        adopted: list[str] = []
        lost: list[str] = []
        exited: list[str] = []
        for rec in self.list(states=ACTIVE_STATES):
            if rec.pid is not None and is_alive(rec.pid, rec.pid_start_time):
                adopted.append(rec.keep_id)
                continue
            status = rec.exit_status
            if status is None and exit_status_of is not None:
                status = exit_status_of(rec)
            if rec.pid is None:
                why = f"manager restarted; no process was recorded (state was {rec.state!r})"
            elif rec.pid_start_time is None:
                why = f"manager restarted; process {rec.pid} has no recorded start time (state was {rec.state!r})"
            else:
                why = f"manager restarted; process {rec.pid} is gone (state was {rec.state!r})"
            target = "exited" if status is not None else "lost"
            with self._write("reconcile") as db:
                done = self._transition_locked(
                    db, rec.keep_id, target, None, None, status, why, expect=rec.state
                )
            if done == target:
                (exited if target == "exited" else lost).append(rec.keep_id)
        return ReconcileReport(tuple(adopted), tuple(lost), tuple(exited))
