r"""A dropped name that is not UTF-8 (a Windows SFTP client's ``Müller.csv`` in CP1252,
``b'M\xfcller.csv'``) is taken and imported like any other, under its readable form
(``M%FCller.csv``: each such byte as ``%XX``) in the journal, the log, the status, the
sidecar and the stored name; one left in processing/ by an older version (which could not
journal it) is renamed and taken at start-up, and no entry of processing/ stops the start.
"""

from __future__ import annotations

import io
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sisdropd import recovery
from sisdropd.commands import control
from sisdropd.commands.status import journal_status
from sisdropd.folders import stored_name
from sisdropd.lifecycle import State
from tests.support import USERS, Rig

NAMES = {b"M\xfcller.csv": "M%FCller.csv", b"bad\xff\xfename.csv": "bad%FF%FEname.csv"}


def raw_path(folder: Path, raw: bytes) -> Path:
    """The path of the entry named by the bytes ``raw`` in ``folder`` (as Python names it)."""
    return folder / os.fsdecode(raw)


def utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def test_a_name_that_is_not_utf8_is_taken_imported_and_shown_escaped(
    rig: Rig, log: io.StringIO, capsys: pytest.CaptureFixture[str],
) -> None:
    for raw in NAMES:
        with open(os.path.join(os.fsencode(rig.folders.inbox), raw), "wb") as f:  # as the SFTP server writes it
            f.write(USERS.encode())
        path = raw_path(rig.folders.inbox, raw)
        rig.intake.take(path, os.lstat(path))
    assert os.listdir(rig.folders.inbox) == []
    rig.drain()
    recs = {r.original_name: r for r in rig.journal.select()}
    assert sorted(recs) == sorted(NAMES.values())
    for shown, rec in recs.items():
        path, side = rig.finished(rec.id)
        assert rec.state == State.DONE and path.read_text() == USERS
        assert utf8(rec.stored_name) and rec.stored_name.endswith("-" + shown)
        assert side["original_name"] == shown and side["stored_name"] == rec.stored_name
        assert rec.upload_name is not None and rec.upload_name.isascii()  # the multipart filename
    posted = [imp["filename"] for imp in rig.sim.imports()]  # as Canvas received them
    assert len(posted) == 2 and all(n.isascii() and n.endswith(".csv") for n in posted), posted
    assert all(utf8(n) for n in os.listdir(rig.folders.done))
    text = log.getvalue()
    assert "bad%FF%FEname.csv: taken: " in text and "M%FCller.csv: taken: " in text, text
    assert r"\udc" not in text and "ERROR" not in text, text
    assert journal_status(rig.cfg) == 0
    status = capsys.readouterr().out
    assert "bad%FF%FEname.csv" in status and "M%FCller.csv" in status, status
    # An operator may name it either way: as the file was named, or as it is shown.
    for raw, shown in NAMES.items():
        for typed in (os.fsdecode(raw), shown):
            assert [r.id for r in rig.journal.find_by_name(typed, {State.DONE})] == [recs[shown].id]


def old_claim(rig: Rig, raw: bytes, taken: datetime | None = None) -> Path:
    """What an older version left when it could not journal ``raw``: the file renamed into
    processing/ under a stored name that keeps the bytes as they were, and no record."""
    prefix = stored_name("x.csv", now=taken)[: -len("x.csv")]
    path = Path(os.fsdecode(os.path.join(os.fsencode(rig.folders.processing), prefix.encode() + raw)))
    path.write_text(USERS)
    return path


def test_a_file_left_in_processing_under_a_name_that_is_not_utf8_is_renamed_and_taken(rig: Rig, log: io.StringIO) -> None:
    left = old_claim(rig, b"bad\xff\xfename.csv")
    recovery.recover(rig.cfg, rig.journal, rig.folders, rig.client)  # raised UnicodeEncodeError: every start failed
    [rec] = rig.journal.select()
    assert rec.original_name == "bad%FF%FEname.csv" and rec.state == State.QUEUED
    assert rec.stored_name == left.name[: -len("bad\udcff\udcfename.csv")] + "bad%FF%FEname.csv"  # its time and tag kept
    assert os.listdir(rig.folders.processing) == [rec.stored_name]
    assert "not UTF-8: renamed to" in log.getvalue()
    rig.drain()
    path, side = rig.finished(rec.id)
    assert rig.record(rec.id).state == State.DONE and path.read_text() == USERS
    assert side["original_name"] == "bad%FF%FEname.csv" and len(rig.sim.imports()) == 1


@pytest.mark.parametrize("left", ["hard link", "copy"])
def test_a_rename_cut_short_by_a_crash_leaves_one_file_posted_once(rig: Rig, left: str) -> None:
    """The start-up rename of such a name, stopped by a crash half-way: both names on one
    inode (between link and unlink), or a full copy at the new name (the copy fallback, before
    the unlink). One record, one import, and nothing left to be taken again at a later start."""
    old = old_claim(rig, b"bad\xff\xfename.csv")
    new = old.with_name(old.name[: -len("bad\udcff\udcfename.csv")] + "bad%FF%FEname.csv")
    if left == "hard link":
        os.link(old, new)
    else:
        new.write_bytes(old.read_bytes())
    for _ in range(2):  # and a later start finds nothing more to take
        recovery.recover(rig.cfg, rig.journal, rig.folders, rig.client)
        rig.drain()
    [rec] = rig.journal.select()
    assert rec.state == State.DONE and len(rig.sim.imports()) == 1
    assert os.listdir(rig.folders.processing) == []


def test_one_left_before_the_journal_was_lost_is_renamed_held_and_released_by_its_name(
    rig: Rig, capsys: pytest.CaptureFixture[str],
) -> None:
    old_claim(rig, b"M\xfcller.csv", taken=datetime.now(UTC) - timedelta(hours=1))  # older than this journal
    recovery.recover(rig.cfg, rig.journal, rig.folders, rig.client)
    [rec] = rig.journal.select()
    assert rec.original_name == "M%FCller.csv" and rec.state == State.HELD
    assert sorted(os.listdir(rig.folders.held)) == [rec.stored_name, rec.stored_name + ".json"]
    assert rig.sim.imports() == []  # never posted blind
    # The operator releases it by the name the file had (`sisdropd release $'M\xfcller.csv'`).
    assert control.run(rig.cfg, "release", os.fsdecode(b"M\xfcller.csv")) == 0
    assert "released: M%FCller.csv is queued" in capsys.readouterr().out
    assert [(c, n) for _, c, n, _, _ in rig.journal.unlogged_requests()] == [("release", "M%FCller.csv")]
    rig.drain()
    assert rig.record(rec.id).state == State.DONE and len(rig.sim.imports()) == 1


def test_an_entry_of_processing_that_cannot_be_taken_is_logged_and_the_start_goes_on(rig: Rig, log: io.StringIO) -> None:
    left = old_claim(rig, b"bad\xff.csv")
    clash = left.with_name(left.name[: -len("bad\udcff.csv")] + "bad%FF.csv")  # its readable name is taken
    clash.write_text(USERS + "u3,c,active\n")
    other = rig.folders.processing / stored_name("users.csv")
    other.write_text(USERS)
    recovery.recover(rig.cfg, rig.journal, rig.folders, rig.client)
    assert sorted(r.stored_name for r in rig.journal.select()) == sorted([clash.name, other.name])
    assert left.read_text() == USERS  # left where it is, untouched, and named in the log
    line = next(x for x in log.getvalue().splitlines() if "cannot take it" in x)
    assert "ERROR" in line
    assert "bad%FF.csv: found in processing/ with no record, but cannot take it" in line, line
    rig.drain()
    assert sorted(str(r.state) for r in rig.journal.select()) == ["done", "done"]
