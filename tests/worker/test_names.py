r"""A dropped name that is not UTF-8 (a Windows SFTP client's ``Müller.csv`` in CP1252,
``b'M\xfcller.csv'``) is taken and imported like any other, under its readable form
(``M%FCller.csv``: each such byte as ``%XX``) in the journal, the log, the status, the
sidecar and the stored name; one left in processing/ by an older version (which could not
journal it) is renamed and taken at start-up, and no entry of processing/ stops the start.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from sisdropd.commands.status import journal_status
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
