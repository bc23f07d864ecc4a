"""Start-up recovery in-process: what a crash can leave behind, and what start-up makes of it.

Each test builds the state a crash at one moment leaves (the journal and the folders as
they are between two durable steps), runs ``recovery.recover``, and then the worker: a
hold or an operator's command journaled as an intent (MOVING) but not finished is
finished, never closed as lost; a file taken while this journal existed but not yet
journaled is taken again; a file left by a journal that was lost is looked for in Canvas
and followed, or held (issue 11, points 4 and 6). SIGKILLs at the named crash points are
tested through real processes in the daemon tests (tests/daemon/test_commands.py).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sisdropd import operator, recovery
from sisdropd.files import move
from sisdropd.folders import stored_name
from sisdropd.lifecycle import State
from tests.support import USERS, Rig, wait_for

BATCH = {"import_type": "instructure_csv", "batch_mode": True, "batch_mode_term_id": "sis_term_id:2026FA"}


def recover(rig: Rig) -> None:
    recovery.recover(rig.cfg, rig.journal, rig.folders, rig.client)


def test_a_file_renamed_into_processing_but_not_journaled_is_taken_again(rig: Rig) -> None:
    name = stored_name("orphan.csv")  # taken while this journal existed
    (rig.folders.processing / name).write_text(USERS)
    recover(rig)
    [rec] = rig.journal.select()
    assert (rec.original_name, rec.stored_name, rec.state) == ("orphan.csv", name, State.QUEUED)
    rig.drain()
    assert rig.record(rec.id).state == State.DONE and len(rig.sim.imports()) == 1


def test_an_open_record_whose_file_vanished_is_closed_as_lost(rig: Rig) -> None:
    fid = rig.drop("users.csv", USERS)
    os.unlink(rig.folders.processing / rig.record(fid).stored_name)
    recover(rig)
    assert rig.events(fid)[-1] == ("queued", "lost", "file vanished from processing/")
    assert rig.worker.drain(1) and rig.sim.imports() == []
    assert rig.record(fid).outcome_reason == "file vanished from processing/"  # status shows why


def test_a_move_done_but_not_journaled_is_completed(rig: Rig) -> None:
    fid = rig.drop("users.csv", USERS)
    while rig.record(fid).state != State.FINISHING:  # post, then follow to the end
        rig.worker.step(rig.record(fid))
    rec = rig.record(fid)
    move(rig.folders.processing / rec.stored_name, rig.folders.done / rec.stored_name)  # then the crash
    recover(rig)
    assert rig.events(fid)[-1] == ("finishing", "done", "move completed after restart")
    assert (rig.folders.done / rec.stored_name).read_text() == USERS and len(rig.sim.imports()) == 1


def held(make_rig) -> tuple[Rig, int]:
    rig = make_rig(**{"import": BATCH})
    rig.drop("users_1.csv", USERS + "u3,c,active\n")
    rig.drain()
    fid = rig.drop("users_2.csv", "user_id,login_id,status\nu1,a,active\n")
    rig.drain()
    assert rig.record(fid).state == State.HELD
    return rig, fid


def test_a_hold_journaled_but_not_moved_is_completed(make_rig) -> None:
    rig = make_rig(**{"import": BATCH})
    first = rig.drop("users_1.csv", USERS + "u3,c,active\n")
    rig.drain()
    assert rig.record(first).state == State.DONE
    fid = rig.drop("users_2.csv", "user_id,login_id,status\nu1,a,active\n")
    s = rig.record(fid).stored_name
    operator.begin(  # the worker's hold, up to its intent: then the crash
        rig.journal, rig.folders, rig.record(fid), command="hold", expect=State.QUEUED, src=("processing", s),
        dst=("held", s), then=State.HELD, note="change guard", sidecar_at_dst=True, outcome_reason="held by the change guard: test",
    )
    recover(rig)
    assert rig.record(fid).state == State.HELD
    assert (rig.folders.held / s).exists() and (rig.folders.held / f"{s}.json").exists()
    assert not (rig.folders.processing / s).exists()
    assert rig.worker.drain(1) and len(rig.sim.imports()) == 1  # never posted unseen


@pytest.mark.parametrize("moved", [False, True], ids=["intent", "carried"])
def test_a_release_begun_before_a_crash_is_completed(make_rig, moved: bool) -> None:
    rig, fid = held(make_rig)
    rec = rig.record(fid)
    s = rec.stored_name
    rec = operator.begin(
        rig.journal, rig.folders, rec, command="release", expect=State.HELD, src=("held", s), dst=("processing", s),
        then=State.QUEUED, note="released by ops", then_fields={"guard_accepted": 1, "next_attempt": 0},
    )
    if moved:
        move(rig.folders.held / s, rig.folders.processing / s)
    recover(rig)
    assert rig.events(fid)[-1] == ("moving", "queued", "released by ops") and rig.record(fid).guard_accepted == 1
    assert not (rig.folders.held / f"{s}.json").exists()
    rig.drain()
    assert rig.record(fid).state == State.DONE and len(rig.sim.imports()) == 2


@pytest.mark.parametrize("moved", [False, True], ids=["intent", "carried"])
def test_a_discard_begun_before_a_crash_is_completed_not_lost(make_rig, moved: bool) -> None:
    rig, fid = held(make_rig)
    s = rig.record(fid).stored_name
    operator.begin(
        rig.journal, rig.folders, rig.record(fid), command="discard", expect=State.HELD, src=("held", s),
        dst=("failed", s), then=State.FAILED, note="discarded by ops", sidecar_at_dst=True, outcome="failed",
        outcome_reason="discarded by operator (test)",
    )
    if moved:
        move(rig.folders.held / s, rig.folders.failed / s)
    recover(rig)
    path, side = rig.finished(fid)
    assert rig.record(fid).state == State.FAILED and side["reason"] == "discarded by operator (test)"
    assert path.exists() and not list(rig.folders.held.iterdir()) and len(rig.sim.imports()) == 1


def test_a_retry_begun_before_a_crash_is_completed(rig: Rig) -> None:
    rig.sim.set_outcome("users", "failed")
    fid = rig.drop("users.csv", USERS)
    rig.drain()
    rec = rig.record(fid)
    assert rec.state == State.FAILED
    rig.sim.set_outcome("users", "imported")
    new = stored_name("users.csv")
    operator.begin(
        rig.journal, rig.folders, rec, command="retry", expect=State.FAILED, src=("failed", rec.stored_name),
        dst=("processing", new), then=State.QUEUED, note="retried by ops",
        then_fields={"stored_name": new, "import_id": None, "outcome": None, "workflow_state": None},
    )
    move(rig.folders.failed / rec.stored_name, rig.folders.processing / new)  # then the crash
    recover(rig)
    assert rig.events(fid)[-1] == ("moving", "queued", "retried by ops") and rig.record(fid).stored_name == new
    assert len(rig.journal.select()) == 1  # not taken again as a file with no record
    rig.drain()
    assert rig.record(fid).state == State.DONE and len(rig.sim.imports()) == 2


# -- the journal itself lost (issue 11, point 6) ------------------------------------------


def lose_the_journal(make_rig, rig: Rig) -> Rig:
    """Delete the journal (and its -wal, -shm) and start again on the same folders."""
    rig.journal.close()
    for p in rig.folders.state_dir.glob("journal.sqlite3*"):
        p.unlink()
    return make_rig()


def backdate(rig: Rig, fid: int) -> str:
    """Give a file in processing/ the stored name it would have had a minute ago."""
    rec = rig.record(fid)
    older = stored_name(rec.original_name, now=datetime.now(UTC) - timedelta(minutes=1))
    os.rename(rig.folders.processing / rec.stored_name, rig.folders.processing / older)
    return older


@pytest.mark.parametrize("kind", ["csv", "zip"])
def test_a_file_left_in_processing_by_a_lost_journal_is_found_in_canvas_and_followed(make_rig, kind: str) -> None:
    rig = make_rig()
    name, data = ("users.csv", USERS.encode()) if kind == "csv" else ("term.zip", zipped(USERS))
    fid = rig.drop(name, data)
    rig.worker.step(rig.record(fid))  # posted: Canvas has it
    assert rig.record(fid).state == State.RUNNING
    stored = backdate(rig, fid)
    new = lose_the_journal(make_rig, rig)
    wait_for(lambda: new.sim.imports()[0]["workflow_state"] == "imported", 15, what="the import to list its files")
    recover(new)
    [rec] = new.journal.select()
    assert rec.state == State.RUNNING and rec.import_id == new.sim.imports()[0]["id"] and rec.stored_name == stored
    new.drain()
    assert new.record(rec.id).state == State.DONE and new.posts() == 1


def test_a_file_left_in_processing_by_a_lost_journal_that_canvas_lacks_is_held(make_rig, tmp_path: Path) -> None:
    rig = make_rig()
    fid = rig.drop("users.csv", USERS)  # taken, never posted
    stored = backdate(rig, fid)
    new = lose_the_journal(make_rig, rig)
    recover(new)
    [rec] = new.journal.select()
    assert rec.state == State.HELD and (new.folders.held / stored).read_text() == USERS
    side = json.loads((new.folders.held / f"{stored}.json").read_text())
    assert side["reason"].startswith("held: the journal was lost while this file was in processing/, so it may have been posted already")
    assert "Canvas shows no import of it" in side["reason"] and new.posts() == 0
    assert new.worker.drain(1) and new.posts() == 0  # never posted blind
    assert operator.release(new.cfg, new.journal, new.folders, "users.csv", who="ops").ok
    new.drain()
    assert new.record(rec.id).state == State.DONE and new.posts() == 1


def zipped(text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("users.csv", text)
    return buf.getvalue()
