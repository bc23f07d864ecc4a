"""``sisdropd status`` shows what an operator must know about files between states: a file
whose lost post waits for a look-alike import (which import, and how to discard it), and a
release/discard/retry left half-done (who finishes it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sisdropd import config
from sisdropd.commands.status import journal_status
from sisdropd.journal import Journal
from sisdropd.lifecycle import State


def _cfg(tmp_path: Path) -> config.Config:
    return config.from_dict(
        {"canvas": {"base_url": "http://127.0.0.1:9", "account_id": "1"}, "folders": {"root": str(tmp_path / "drop")}}
    )


def test_status_names_the_import_a_waiting_file_waits_for_and_a_half_done_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = _cfg(tmp_path)
    j = Journal(cfg.folders.path("state_dir"))
    try:
        waiting = j.add(original_name="users.csv", stored_name="x-users.csv", size=10, mtime=1)
        j.transition(waiting, State.POSTING, "posting", expect=State.QUEUED, upload_name="sisdrop-1-users.csv")
        j.update(waiting, waiting_for=4821)
        moving = j.add(original_name="enroll.csv", stored_name="y-enroll.csv", size=10, mtime=2)
        intent = {"command": "release", "from": ["held", "y-enroll.csv"], "to": ["processing", "y-enroll.csv"]}
        j.transition(moving, State.MOVING, "held", expect=State.QUEUED, intent=intent)
    finally:
        j.close()
    assert journal_status(cfg) == 0
    text = capsys.readouterr().out
    assert "waiting for import 4821" in text and "sisdropd discard users.csv" in text, text
    assert "moving: enroll.csv (release half-done" in text and "sisdropd release enroll.csv again" in text, text
    assert journal_status(cfg, as_json=True) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["in_flight"]["waiting_for"] == 4821
    assert [(m["original_name"], m["intent"]["command"]) for m in doc["moving"]] == [("enroll.csv", "release")]


def test_the_journal_unreadable_advice_follows_the_cause(tmp_path: Path) -> None:
    """The sudo hint only when another user owns the journal; a lock asks to wait; else the error alone."""
    import os
    import pwd
    import sqlite3

    from sisdropd.commands import unreadable

    path = tmp_path / "journal.sqlite3"
    path.write_bytes(b"")
    mine = unreadable(path, sqlite3.OperationalError("disk I/O error"))
    assert mine == f"cannot read the journal {path} (disk I/O error)"
    locked = unreadable(path, sqlite3.OperationalError("database is locked"))
    assert "another process holds it" in locked and "sudo" not in locked
    if os.geteuid() != 0:
        pytest.skip("giving the file to another user needs root")
    os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)
    theirs = unreadable(path, sqlite3.OperationalError("unable to open database file"))
    assert f"{path} belongs to nobody" in theirs and "sudo -u nobody sisdropd" in theirs


def test_a_long_queue_shows_its_head_and_a_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """3,000 queued files are one count, the next 20 to be posted and "... and 2980 more";
    --json still lists every one."""
    cfg = _cfg(tmp_path)
    j = Journal(cfg.folders.path("state_dir"))
    try:
        for i in range(3000):
            j.add(original_name=f"f{i:04}.csv", stored_name=f"s-f{i:04}.csv", size=1, mtime=i)
    finally:
        j.close()
    assert journal_status(cfg) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "queued: 3000" in lines
    shown = [x for x in lines if x.startswith("  f")]
    assert [x.split()[0] for x in shown] == [f"f{i:04}.csv" for i in range(20)]
    assert "  ... and 2980 more (sisdropd status --json lists every one)" in lines
    assert journal_status(cfg, as_json=True) == 0
    assert len(json.loads(capsys.readouterr().out)["queued"]) == 3000
