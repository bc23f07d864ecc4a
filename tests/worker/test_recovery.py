"""Start-up recovery in-process: what a crash can leave behind, and what start-up makes of it.

Each test builds the state a crash at one moment leaves (the journal and the folders as
they are between two durable steps), runs ``recovery.recover``, and then the worker.
SIGKILLs at the named crash points are tested through real processes in the daemon tests.
"""

from __future__ import annotations

import os

from sisdropd import operator, recovery
from sisdropd.files import move
from sisdropd.lifecycle import State
from tests.support import USERS, Rig

BATCH = {"import_type": "instructure_csv", "batch_mode": True, "batch_mode_term_id": "sis_term_id:2026FA"}


def recover(rig: Rig) -> None:
    recovery.recover(rig.cfg, rig.journal, rig.folders)


def test_a_file_renamed_into_processing_but_not_journaled_is_taken_again(rig: Rig) -> None:
    (rig.folders.processing / "20261127T080000Z-abcdef-orphan.csv").write_text(USERS)
    recover(rig)
    [rec] = rig.journal.select()
    assert (rec.original_name, rec.stored_name, rec.state) == ("orphan.csv", "20261127T080000Z-abcdef-orphan.csv", State.QUEUED)
    rig.drain()
    assert rig.record(rec.id).state == State.DONE and len(rig.sim.imports()) == 1


def test_an_open_record_whose_file_vanished_is_closed_as_lost(rig: Rig) -> None:
    fid = rig.drop("users.csv", USERS)
    os.unlink(rig.folders.processing / rig.record(fid).stored_name)
    recover(rig)
    assert rig.events(fid)[-1] == ("queued", "lost", "file vanished from processing/")
    assert rig.worker.drain(1) and rig.sim.imports() == []


def test_a_move_done_but_not_journaled_is_completed(rig: Rig) -> None:
    fid = rig.drop("users.csv", USERS)
    while rig.record(fid).state != State.FINISHING:  # post, then follow to the end
        rig.worker.step(rig.record(fid))
    rec = rig.record(fid)
    move(rig.folders.processing / rec.stored_name, rig.folders.done / rec.stored_name)  # then the crash
    recover(rig)
    assert rig.events(fid)[-1] == ("finishing", "done", "move completed after restart")
    assert (rig.folders.done / rec.stored_name).read_text() == USERS and len(rig.sim.imports()) == 1


def test_a_hold_journaled_but_not_moved_is_completed(make_rig) -> None:
    rig = make_rig(**{"import": BATCH})
    first = rig.drop("users_1.csv", USERS + "u3,c,active\n")
    rig.drain()
    assert rig.record(first).state == State.DONE
    fid = rig.drop("users_2.csv", "user_id,login_id,status\nu1,a,active\n")
    rig.journal.transition(fid, State.HELD, "change guard", outcome_reason="held by the change guard: test")  # then the crash
    recover(rig)
    stored = rig.record(fid).stored_name
    assert (rig.folders.held / stored).exists() and (rig.folders.held / f"{stored}.json").exists()
    assert not (rig.folders.processing / stored).exists()
    assert operator.locate(rig.folders, rig.record(fid)) == rig.folders.held / stored


def test_a_release_moved_back_but_not_journaled_is_held_again(make_rig) -> None:
    """It looks like a hold journaled but not moved: parked again, the operator releases again."""
    rig = make_rig(**{"import": BATCH})
    rig.drop("users_1.csv", USERS + "u3,c,active\n")
    rig.drain()
    fid = rig.drop("users_2.csv", "user_id,login_id,status\nu1,a,active\n")
    rig.drain()
    rec = rig.record(fid)
    assert rec.state == State.HELD
    move(rig.folders.held / rec.stored_name, rig.folders.processing / rec.stored_name)  # then the crash
    recover(rig)
    assert rig.record(fid).state == State.HELD and (rig.folders.held / rec.stored_name).exists()
    assert rig.worker.drain(1) and len(rig.sim.imports()) == 1  # never posted unseen


def test_a_retry_moved_back_but_not_journaled_is_completed(rig: Rig) -> None:
    rig.sim.set_outcome("users", "failed")
    fid = rig.drop("users.csv", USERS)
    rig.drain()
    rec = rig.record(fid)
    assert rec.state == State.FAILED
    rig.sim.set_outcome("users", "imported")
    move(rig.folders.failed / rec.stored_name, rig.folders.processing / rec.stored_name)  # then the crash
    recover(rig)
    assert rig.events(fid)[-1] == ("failed", "queued", "requeued (completed after restart)")
    rig.drain()
    assert rig.record(fid).state == State.DONE and len(rig.sim.imports()) == 2
