"""The journal: one SQLite file in the state_dir, the only record of each file's state.

Every change of a file's state goes through ``Journal.transition``: it checks the move
against ``lifecycle.ALLOWED`` and against the state the writer expects (compare-and-set:
of two writers, the daemon's threads or the daemon and an operator's command, only one
can move a record; the other gets ``lifecycle.Conflict``), writes the row and an event in
one ``BEGIN IMMEDIATE`` transaction (WAL, ``synchronous=FULL``: durable once it returns)
and logs one line.
Rows are never deleted: a row stays open until its file is in done/ or failed/, so a
crash at any point leaves a record that start-up can finish. Other processes (``status``,
the operator commands) open the same file while the daemon runs.

A file that is not a journal (corrupt, or another kind of file) raises ``JournalError``
with one line naming it and saying what to do; the journal remembers when it was made
(``created``), so start-up can tell a file taken before it existed (the journal was lost).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sisdropd.folders import STATE_MODE, journal_file, make_dir, readable
from sisdropd.lifecycle import ACTIVE, CLOSED, OPEN, Conflict, State, check
from sisdropd.logs import logger  # loguru's, imported on first use: status never needs it

SCHEMA_VERSION = 4

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    original_name TEXT NOT NULL,
    stored_name TEXT NOT NULL,
    state TEXT NOT NULL,
    size INTEGER,
    mtime REAL,
    sha256 TEXT,
    upload_name TEXT,
    members TEXT,
    counts TEXT,
    import_id INTEGER,
    workflow_state TEXT,
    progress INTEGER,
    outcome TEXT,
    outcome_reason TEXT,
    sis_import TEXT,
    problems TEXT,
    errors_file TEXT,
    taken_at TEXT NOT NULL,
    post_started REAL,
    posted_at TEXT,
    finished_at TEXT,
    next_attempt REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    guard_accepted INTEGER NOT NULL DEFAULT 0,
    guard TEXT,
    import_params TEXT,
    updated REAL NOT NULL,
    post_user_id INTEGER,
    waiting_for INTEGER,
    absent_since REAL,
    intent TEXT,
    refusals INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS files_state ON files(state);
CREATE INDEX IF NOT EXISTS files_queue ON files(state, mtime, original_name, id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    file_id INTEGER NOT NULL REFERENCES files(id),
    at TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    note TEXT,
    workflow_state TEXT
);
CREATE INDEX IF NOT EXISTS events_to_state ON events(to_state);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS datasets (
    key TEXT PRIMARY KEY,
    counts TEXT NOT NULL,
    file_id INTEGER,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    command TEXT NOT NULL,
    name TEXT,
    who TEXT,
    result TEXT,
    logged INTEGER NOT NULL DEFAULT 0
);
"""
# Columns added after a journal was first created: (table, column, definition).
_MIGRATIONS = (
    ("files", "guard_accepted", "INTEGER NOT NULL DEFAULT 0"),
    ("files", "guard", "TEXT"),
    # The parameters a file was posted with, fixed at the post (a reload never changes them).
    ("files", "import_params", "TEXT"),
    # Canvas's state when a file's import ended: imports_total counts events, not rows.
    ("events", "workflow_state", "TEXT"),
    ("files", "post_user_id", "INTEGER"),  # the Canvas user of the token that made the post
    ("files", "waiting_for", "INTEGER"),  # a look-alike import a lost post waits on
    ("files", "absent_since", "REAL"),  # since when Canvas shows no candidate of a lost post
    ("files", "intent", "TEXT"),  # MOVING: from where to where, and the state after
    ("files", "refusals", "INTEGER NOT NULL DEFAULT 0"),  # posts Canvas refused for this file
)

_JSON_COLUMNS = ("members", "counts", "sis_import", "problems", "guard", "import_params", "intent")
_QUEUE_ORDER = "mtime, original_name, id"  # the contract's point 3 (served by files_queue)


def _backfill_event_states(db: sqlite3.Connection) -> None:
    """A journal from before events had workflow_state: an ended import's FINISHING event
    carried Canvas's final state as its note (``outcome.decide``); copy it over, so the
    metrics' totals do not fall with the upgrade."""
    from sisdropd.importer import FINAL_STATES

    marks = ",".join("?" for _ in FINAL_STATES)
    db.execute(
        f"UPDATE events SET workflow_state = note WHERE to_state = 'finishing' AND note IN ({marks})",
        tuple(sorted(FINAL_STATES)),
    )


def utcnow() -> str:
    """Now, ISO 8601 UTC with seconds and a Z (``2026-11-27T08:22:16Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class FileRecord:
    """One journal row, JSON columns decoded."""

    id: int
    original_name: str
    stored_name: str
    state: State
    size: int | None
    mtime: float | None
    sha256: str | None
    upload_name: str | None
    members: list[list[Any]] | None
    counts: dict[str, int] | None
    import_id: int | None
    workflow_state: str | None
    progress: int | None
    outcome: str | None
    outcome_reason: str | None
    sis_import: dict[str, Any] | None
    problems: list[str] | None
    errors_file: str | None
    taken_at: str
    post_started: float | None
    posted_at: str | None
    finished_at: str | None
    next_attempt: float
    attempts: int
    last_error: str | None
    updated: float
    # Added after the first schema (defaults: an older journal opened read-only lacks them).
    guard_accepted: int = 0
    guard: dict[str, Any] | None = None
    import_params: dict[str, Any] | None = None
    post_user_id: int | None = None
    waiting_for: int | None = None
    absent_since: float | None = None
    intent: dict[str, Any] | None = None
    refusals: int = 0

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> FileRecord:
        d = {k: v for k, v in dict(row).items() if k in _FIELDS}  # a newer journal may have more
        for col in _JSON_COLUMNS:
            if d.get(col) is not None:
                d[col] = json.loads(d[col])
        d["state"] = State(d["state"])
        return cls(**d)


_FIELDS = frozenset(FileRecord.__dataclass_fields__)


class JournalError(Exception):
    """The journal cannot be used (not a database, corrupt): one line for the operator."""


class Journal:
    """The journal at ``<state_dir>/journal.sqlite3``; safe to share between threads."""

    def __init__(self, state_dir: Path, *, readonly: bool = False) -> None:
        """Open (and create, unless ``readonly``) the journal in ``state_dir``.

        ``readonly`` is for ``status`` run by an operator who may only read the file: no
        schema, no pragma that writes. Raises ``JournalError`` when the file is not a
        journal (corrupt, or another kind of file), ``sqlite3.OperationalError`` when it
        cannot be opened (permissions, busy).
        """
        self.path = journal_file(state_dir)
        self._lock = threading.RLock()
        try:
            self._open(state_dir, readonly)
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and "malformed" not in str(e) and "not a database" not in str(e):
                raise
            with contextlib.suppress(Exception):
                self._db.close()
            raise JournalError(
                f"the journal {self.path} is not a usable database ({e}): stop here and restore it from a "
                f"backup, or move it (and its -wal and -shm files) aside; a new journal then treats the "
                f"files left in processing/ as possibly posted and matches them against Canvas first"
            ) from None

    def _open(self, state_dir: Path, readonly: bool) -> None:
        if readonly:
            self._db = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, timeout=30, isolation_level=None, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout=30000")
            # Read it now: sqlite opens a file lazily, and a file that is no journal must be
            # a JournalError here, as it is for the daemon, not at the reader's first query.
            self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return
        make_dir(state_dir, STATE_MODE)  # 0700 whatever the umask (issue 12)
        self._db = sqlite3.connect(
            self.path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        with self.tx() as db:
            fresh = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'files'").fetchone() is None
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            # When this journal was made: a file taken before then was taken under another
            # (lost) journal. An older journal without the key counts as made long ago.
            db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('created', ?)", (repr(time.time()) if fresh else "0",)
            )
            for table, column, definition in _MIGRATIONS:
                have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
                    if (table, column) == ("events", "workflow_state"):
                        _backfill_event_states(db)
            db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def created(self) -> float:
        """When this journal was made (epoch seconds; 0 for a journal older than the key)."""
        return float(self.meta("created") or 0)

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``), committed on success, else rolled back."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- reads -----------------------------------------------------------------------
    def get(self, file_id: int) -> FileRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        if row is None:
            raise KeyError(file_id)
        return FileRecord.from_row(row)

    def select(
        self, where: str = "1", params: tuple[Any, ...] = (), order: str = "id", limit: int | None = None
    ) -> list[FileRecord]:
        tail = f" LIMIT {int(limit)}" if limit is not None else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM files WHERE {where} ORDER BY {order}{tail}", params
            ).fetchall()
        return [FileRecord.from_row(r) for r in rows]

    def in_states(self, states: frozenset[State] | set[State]) -> list[FileRecord]:
        marks = ",".join("?" for _ in states)
        return self.select(f"state IN ({marks})", tuple(str(s) for s in states))

    def open_records(self) -> list[FileRecord]:
        return self.in_states(OPEN)

    def active(self) -> list[FileRecord]:
        """The file in flight (``lifecycle.ACTIVE``): at most one, as one import runs at a time."""
        return self.in_states(ACTIVE)

    def queued(self, limit: int | None = None) -> list[FileRecord]:
        """QUEUED files in the order they are posted: oldest mtime first, ties by name."""
        return self.select("state = ?", (str(State.QUEUED),), order=_QUEUE_ORDER, limit=limit)

    def next_queued(self) -> FileRecord | None:
        """The file to work on next: an import already under way first, else the oldest mtime."""
        nxt = self.active() or self.queued(limit=1)
        return nxt[0] if nxt else None

    def recent(self, limit: int = 10) -> list[FileRecord]:
        marks = ",".join("?" for _ in CLOSED)
        return self.select(
            f"state IN ({marks})", tuple(str(s) for s in CLOSED), order="updated DESC, id DESC", limit=limit
        )

    def find_by_name(self, name: str, states: set[State]) -> list[FileRecord]:
        """Records whose original or stored name is ``name`` (typed as the file is named,
        ``$'M\\xfcller.csv'``, or as the journal shows it, ``M%FCller.csv``)."""
        marks = ",".join("?" for _ in states)
        name = readable(name)
        return self.select(
            f"(original_name = ? OR stored_name = ?) AND state IN ({marks})",
            (name, name, *[str(s) for s in states]),
            order="id DESC",
        )

    def known_import_ids(self) -> set[int]:
        """Import ids that belong to a file (or did, before a retry): never another post's."""
        with self._lock:
            rows = self._db.execute("SELECT import_id FROM files WHERE import_id IS NOT NULL")
            ids = {r[0] for r in rows}
        return ids | set(json.loads(self.meta("retired_import_ids") or "[]"))

    def retire_import_id(self, import_id: int) -> None:
        with self.tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'retired_import_ids'").fetchone()
            ids = set(json.loads(row[0])) if row else set()
            ids.add(import_id)
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('retired_import_ids', ?)", (json.dumps(sorted(ids)),))

    def totals(self) -> tuple[dict[str, int], dict[str, int]]:
        """Files by final state, and finished imports by Canvas workflow_state, over all time.

        The metrics' counters are derived from the journal, so a restart never resets them.
        """
        with self._lock:
            by_state = dict(self._db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall())
            by_ws = dict(
                self._db.execute(
                    "SELECT workflow_state, COUNT(*) FROM files WHERE import_id IS NOT NULL"
                    " AND workflow_state IS NOT NULL AND state IN ('done', 'failed') GROUP BY workflow_state"
                ).fetchall()
            )
        return by_state, by_ws

    def outcome_totals(self) -> tuple[dict[str, int], dict[str, int]]:
        """Outcomes as events over all time: how often a file entered done, failed, held or
        lost, and how often an import ended (a FINISHING event) by Canvas workflow_state.

        Counted from the events table, never from rows' current states, so the counts only
        ever rise: a retry (failed -> queued) or a release (held -> queued) adds an event
        and takes none away, and a restart reads the same numbers again.
        """
        with self._lock:
            by_state = dict(
                self._db.execute(
                    "SELECT to_state, COUNT(*) FROM events WHERE to_state IN ('done', 'failed', 'held', 'lost')"
                    " GROUP BY to_state"
                ).fetchall()
            )
            by_ws = dict(
                self._db.execute(
                    "SELECT workflow_state, COUNT(*) FROM events WHERE to_state = 'finishing'"
                    " AND workflow_state IS NOT NULL GROUP BY workflow_state"
                ).fetchall()
            )
        return by_state, by_ws

    def last_success(self) -> float | None:
        """When the last file reached done/ (epoch seconds), or None."""
        with self._lock:
            row = self._db.execute("SELECT MAX(updated) FROM files WHERE state = 'done'").fetchone()
        return row[0] if row and row[0] else None

    def dataset_counts(self, key: str) -> dict[str, int] | None:
        """Row counts per CSV type of the last successful import of data set ``key``."""
        with self._lock:
            row = self._db.execute("SELECT counts FROM datasets WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_dataset_counts(self, key: str, counts: dict[str, int], file_id: int) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO datasets(key, counts, file_id, updated) VALUES (?, ?, ?, ?)",
                (key, json.dumps(counts), file_id, time.time()),
            )

    def add_request(self, command: str, name: str | None, who: str, result: str) -> None:
        """Record an operator's command, for the daemon to log (it reads them each tick)."""
        with self.tx() as db:
            db.execute(
                "INSERT INTO requests(at, command, name, who, result) VALUES (?, ?, ?, ?, ?)",
                (utcnow(), command, None if name is None else readable(name), who, readable(result)),
            )

    def unlogged_requests(self) -> list[tuple[int, str, str | None, str, str]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, command, name, who, result FROM requests WHERE logged = 0 ORDER BY id"
            ).fetchall()
        return [tuple(r) for r in rows]

    def mark_logged(self, request_id: int) -> None:
        with self.tx() as db:
            db.execute("UPDATE requests SET logged = 1 WHERE id = ?", (request_id,))

    def last_taken(self) -> float | None:
        """When the newest file was taken (epoch seconds from its row), or None."""
        with self._lock:
            row = self._db.execute("SELECT MAX(taken_at) FROM files").fetchone()
        if not row or not row[0]:
            return None
        from datetime import datetime

        return datetime.fromisoformat(row[0].replace("Z", "+00:00")).timestamp()

    def events(self, file_id: int) -> list[tuple[str | None, str, str | None]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT from_state, to_state, note FROM events WHERE file_id = ? ORDER BY id",
                (file_id,),
            ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- writes ----------------------------------------------------------------------
    def add(self, *, original_name: str, stored_name: str, size: int, mtime: float) -> int:
        """Record a file just taken into processing/ as QUEUED; returns its id."""
        with self.tx() as db:
            cur = db.execute(
                "INSERT INTO files(original_name, stored_name, state, size, mtime, taken_at, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (original_name, stored_name, str(State.QUEUED), size, mtime, utcnow(), time.time()),
            )
            file_id = int(cur.lastrowid or 0)
            db.execute(
                "INSERT INTO events(file_id, at, from_state, to_state, note) VALUES (?, ?, NULL, ?, ?)",
                (file_id, utcnow(), str(State.QUEUED), "taken"),
            )
        return file_id

    def update(self, file_id: int, *, expect: State | None = None, **fields: Any) -> bool:
        """Set columns of a row without changing its state (progress, retry times, ...).

        With ``expect``, only while the row is in that state. Returns whether it was set.
        """
        if not fields:
            return True
        cols, vals = self._encode(fields)
        cond, args = ("", ()) if expect is None else (" AND state = ?", (str(expect),))
        with self.tx() as db:
            cur = db.execute(
                f"UPDATE files SET {', '.join(c + ' = ?' for c in cols)}, updated = ? WHERE id = ?{cond}",
                (*vals, time.time(), file_id, *args),
            )
        return cur.rowcount > 0

    def transition(
        self, file_id: int, new: State, note: str = "", *, expect: State | frozenset[State] | set[State],
        where: dict[str, Any] | None = None, **fields: Any,
    ) -> FileRecord:
        """Move a file from state ``expect`` to state ``new`` and set ``fields``, in one durable
        transaction (compare-and-set).

        ``expect`` is the state (or states) the writer saw; ``where`` columns the row must
        still hold (None: NULL). Raises ``lifecycle.Conflict`` when the row is in another
        state or holds other values (another writer moved it first: nothing is changed),
        ``lifecycle.TransitionError`` if the move is not allowed, ``KeyError`` if there is
        no such row. Returns the updated record.
        """
        if new is State.LOST and note:
            fields.setdefault("outcome_reason", note)  # what status shows of a closed record
        expected = {expect} if isinstance(expect, State) else set(expect)
        cols, vals = self._encode(fields)
        with self.tx() as db:
            row = db.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
            if row is None:
                raise KeyError(file_id)
            old = State(row["state"])
            if old not in expected:
                raise Conflict(f"record {file_id} is {old}, not {'/'.join(sorted(expected))}: another writer moved it")
            for col, want in (where or {}).items():
                have = row[col]
                if (json.loads(have) if col in _JSON_COLUMNS and have is not None else have) != want:
                    raise Conflict(f"record {file_id} no longer has {col} = {want!r}: another writer changed it")
            check(old, new)
            sets = ", ".join([*(c + " = ?" for c in cols), "state = ?", "updated = ?"])
            db.execute(
                f"UPDATE files SET {sets} WHERE id = ?", (*vals, str(new), time.time(), file_id)
            )
            db.execute(
                "INSERT INTO events(file_id, at, from_state, to_state, note, workflow_state) VALUES (?, ?, ?, ?, ?, ?)",
                (file_id, utcnow(), str(old), str(new), note or None, fields.get("workflow_state")),
            )
        rec = self.get(file_id)
        logger.bind(file=rec.original_name, import_id=rec.import_id, state=str(new)).debug(
            "{} -> {}{}", old, new, f" ({note})" if note else ""
        )
        return rec

    @staticmethod
    def _encode(fields: dict[str, Any]) -> tuple[list[str], list[Any]]:
        cols, vals = [], []
        for k, v in fields.items():
            cols.append(k)
            vals.append(json.dumps(v) if k in _JSON_COLUMNS and v is not None else v)
        return cols, vals
