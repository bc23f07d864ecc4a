"""The journal: compare-and-set transitions between writers, migrations, a corrupt file
(issue 11, point 6). Real SQLite files in tmp_path, several Journal objects on one file
(as the daemon and an operator's command have)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from sisdropd.journal import SCHEMA_VERSION, Journal, JournalError
from sisdropd.lifecycle import Conflict, State


def add(j: Journal) -> int:
    return j.add(original_name="users.csv", stored_name="20261127T080000Z-abcdef-users.csv", size=10, mtime=1.0)


def test_two_journals_on_one_file_cannot_both_move_a_record(tmp_path: Path) -> None:
    daemon, command = Journal(tmp_path), Journal(tmp_path)
    fid = add(daemon)
    daemon.transition(fid, State.POSTING, "posting", expect=State.QUEUED)
    with pytest.raises(Conflict):  # the command saw QUEUED; the daemon moved it first
        command.transition(fid, State.FINISHING, "rejected", expect=State.QUEUED, outcome="failed")
    rec = command.get(fid)
    assert rec.state == State.POSTING and rec.outcome is None
    assert [e[1] for e in command.events(fid)] == ["queued", "posting"]


def test_of_many_racing_writers_exactly_one_wins(tmp_path: Path) -> None:
    fid = add(Journal(tmp_path))
    journals = [Journal(tmp_path) for _ in range(8)]
    start, won, lost = threading.Barrier(len(journals)), [], []

    def race(j: Journal, n: int) -> None:
        start.wait()
        try:
            j.transition(fid, State.POSTING, f"writer {n}", expect=State.QUEUED, attempts=n)
            won.append(n)
        except Conflict:
            lost.append(n)

    threads = [threading.Thread(target=race, args=(j, n)) for n, j in enumerate(journals)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == len(journals) - 1
    rec = journals[0].get(fid)
    assert rec.attempts == won[0] and [e[2] for e in journals[0].events(fid)] == ["taken", f"writer {won[0]}"]


def test_a_transition_may_also_expect_column_values(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    fid = add(j)
    j.transition(fid, State.POSTING, "posting", expect=State.QUEUED)
    j.update(fid, expect=State.POSTING, waiting_for=41)
    with pytest.raises(Conflict):
        j.transition(fid, State.MOVING, "discard", expect=State.POSTING, where={"waiting_for": 40})
    j.transition(fid, State.MOVING, "discard", expect=State.POSTING, where={"waiting_for": 41})
    assert not j.update(fid, expect=State.POSTING, waiting_for=None)  # no longer POSTING: left alone
    assert j.get(fid).waiting_for == 41


def test_an_older_journal_is_migrated_and_read(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "journal.sqlite3")
    db.executescript(
        """
        CREATE TABLE files (id INTEGER PRIMARY KEY, original_name TEXT NOT NULL, stored_name TEXT NOT NULL,
            state TEXT NOT NULL, size INTEGER, mtime REAL, sha256 TEXT, upload_name TEXT, members TEXT, counts TEXT,
            import_id INTEGER, workflow_state TEXT, progress INTEGER, outcome TEXT, outcome_reason TEXT,
            sis_import TEXT, problems TEXT, errors_file TEXT, taken_at TEXT NOT NULL, post_started REAL,
            posted_at TEXT, finished_at TEXT, next_attempt REAL NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, updated REAL NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
        INSERT INTO meta VALUES ('schema_version', '1');
        INSERT INTO files (original_name, stored_name, state, taken_at, updated)
            VALUES ('users.csv', 'x-users.csv', 'posting', '2026-01-01T00:00:00Z', 0);
        """
    )
    db.close()
    ro = Journal(tmp_path, readonly=True)  # status, before the daemon migrated it
    assert ro.select()[0].post_user_id is None
    ro.close()
    j = Journal(tmp_path)
    [rec] = j.select()
    assert rec.state == State.POSTING and rec.post_user_id is None and rec.refusals == 0
    assert j.meta("schema_version") == str(SCHEMA_VERSION)
    assert j.created() == 0.0  # made before the key existed: counts as made long ago


@pytest.mark.parametrize("content", [b"this is not a database\n" * 200, b"SQLite format 3\x00" + b"\xff" * 4000])
def test_a_corrupt_journal_is_one_clear_error_naming_the_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "journal.sqlite3").write_bytes(content)
    with pytest.raises(JournalError) as e:
        Journal(tmp_path)
    text = str(e.value)
    assert str(tmp_path / "journal.sqlite3") in text and "restore it from a backup" in text and "\n" not in text
