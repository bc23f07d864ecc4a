"""The operator's requests in-process: each changes the file and its record together.

Each is an intent journaled first (MOVING), then the move, then the state after it: a
crash anywhere is finished at the next start (test_recovery.py). The command line around
them (printing, exit statuses, the request log, waking a running daemon, racing it) is
tested through real processes in tests/daemon/test_commands.py.
"""

from __future__ import annotations

import json

from sisdropd import operator
from sisdropd.folders import pause_flag
from sisdropd.lifecycle import State
from tests.support import USERS, Rig

BATCH = {"import_type": "instructure_csv", "batch_mode": True, "batch_mode_term_id": "sis_term_id:2026FA"}


def users(n: int) -> str:
    return "user_id,login_id,status\n" + "".join(f"u{i},login{i},active\n" for i in range(n))


def held_file(make_rig) -> tuple[Rig, int]:
    """A rig whose second batch file fell by 40% and waits in held/."""
    rig = make_rig(**{"import": BATCH})
    rig.drop("users_1.csv", users(10))
    rig.drain()
    fid = rig.drop("users_2.csv", users(6))
    rig.drain()
    assert rig.record(fid).state == State.HELD
    return rig, fid


def test_hold_parks_the_file_in_held_with_its_sidecar(make_rig) -> None:
    rig, fid = held_file(make_rig)
    rec = rig.record(fid)
    held = rig.folders.held / rec.stored_name
    assert held.read_text() == users(6) and not (rig.folders.processing / rec.stored_name).exists()
    side = json.loads(held.with_name(held.name + ".json").read_text())
    assert side["reason"].startswith("held by the change guard: users fell from 10 to 6 rows")
    assert side["guard"]["counts"] == [{"type": "users", "last_import": 10, "this_file": 6, "change_percent": -40.0}]
    assert operator.locate(rig.folders, rec) == held


def test_release_requeues_the_held_file_with_its_counts_accepted(make_rig) -> None:
    rig, fid = held_file(make_rig)
    stored = rig.record(fid).stored_name
    assert (rig.folders.held / f"{stored}.json").exists()
    result = operator.release(rig.cfg, rig.journal, rig.folders, "users_2.csv", who="ops")
    assert result == operator.Result(True, "released: users_2.csv is queued, its counts accepted")
    rec = rig.record(fid)
    assert rec.state == State.QUEUED and rec.guard_accepted == 1
    assert (rig.folders.processing / stored).read_text() == users(6) and not (rig.folders.held / stored).exists()
    assert not (rig.folders.held / f"{stored}.json").exists()  # the held sidecar goes with its file
    rig.drain()
    assert rig.record(fid).state == State.DONE and len(rig.sim.imports()) == 2


def test_release_by_the_stored_name_and_of_nothing_held(make_rig) -> None:
    rig, fid = held_file(make_rig)
    assert not operator.release(rig.cfg, rig.journal, rig.folders, "nope.csv", who="ops").ok
    assert operator.release(rig.cfg, rig.journal, rig.folders, rig.record(fid).stored_name, who="ops").ok
    assert not operator.release(rig.cfg, rig.journal, rig.folders, "users_2.csv", who="ops").ok  # no longer held


def test_discard_sends_the_held_file_to_failed_with_the_reason(make_rig) -> None:
    rig, fid = held_file(make_rig)
    result = operator.discard(rig.cfg, rig.journal, rig.folders, "users_2.csv", who="ops")
    assert result.ok and result.message == "discarded: users_2.csv is in failed/"
    path, side = rig.finished(fid)  # moved by the command itself, not left for the daemon
    assert rig.record(fid).state == State.FAILED and path.read_text() == users(6)
    assert side["reason"].startswith("discarded by operator (held by the change guard")
    assert not list(rig.folders.held.iterdir()) and len(rig.sim.imports()) == 1
    assert rig.events(fid)[-2:] == [("held", "moving", "discarded by ops"), ("moving", "failed", "discarded by ops")]


def test_retry_requeues_a_failed_file_under_a_new_name_and_keeps_its_old_sidecar(rig: Rig) -> None:
    rig.sim.set_outcome("users", "failed")
    fid = rig.drop("users.csv", USERS)
    rig.drain()
    old_path, old_side = rig.finished(fid)
    old_import = rig.record(fid).import_id
    rig.sim.set_outcome("users", "imported")
    assert not operator.retry(rig.cfg, rig.journal, rig.folders, "nope.csv", who="ops").ok
    result = operator.retry(rig.cfg, rig.journal, rig.folders, "users.csv", who="ops")
    assert result.ok and result.message == "retrying: users.csv is queued (its old sidecar stays in failed/)"
    rec = rig.record(fid)
    assert rec.state == State.QUEUED and rec.stored_name != old_path.name and rec.import_id is None
    assert old_import in rig.journal.known_import_ids()  # never taken for the new post's import
    assert json.loads(old_path.with_name(old_path.name + ".json").read_text()) == old_side
    rig.drain()
    new_path, side = rig.finished(fid)
    assert rig.record(fid).state == State.DONE and new_path.read_text() == USERS
    assert side["import_id"] != old_import and len(rig.sim.imports()) == 2


def test_pause_and_resume_set_and_clear_the_flag(rig: Rig) -> None:
    flag = pause_flag(rig.folders.state_dir)
    assert operator.pause(rig.folders, True, who="ops").ok and "ops" in flag.read_text()
    assert operator.pause(rig.folders, False, who="ops") == operator.Result(True, "resumed: new files are taken again")
    assert not flag.exists()


def test_abort_aborts_the_import_in_flight_which_then_fails(rig: Rig) -> None:
    assert operator.abort(rig.journal, rig.client, 5) == operator.Result(False, "nothing in flight to abort")
    rig.sim.set_outcome("users", "imported", seconds=30)
    fid = rig.drop("users.csv", USERS)
    rig.worker.step(rig.record(fid))  # QUEUED: posted, now RUNNING in Canvas
    rec = rig.record(fid)
    assert rec.state == State.RUNNING and rec.import_id
    result = operator.abort(rig.journal, rig.client, 5)
    assert result.ok and result.file == "users.csv" and result.message.startswith(f"aborted import {rec.import_id}")
    rig.drain()
    _, side = rig.finished(fid)
    assert rig.record(fid).state == State.FAILED and side["workflow_state"] == "aborted"


def test_discard_gives_up_on_a_file_waiting_for_a_look_alike_import(make_rig) -> None:
    rig = make_rig(canvas={"timeout": 1})
    rig.sim.hold_queue()  # our lost post's import stays `created`, no files listed
    rig.sim.inject("drop_after", method="POST", path="sis_imports$")
    fid = rig.drop("users.csv", USERS)
    rig.run_until(lambda: rig.record(fid).waiting_for is not None, 10, "the file waiting")
    waited = rig.record(fid).waiting_for
    assert not operator.discard(rig.cfg, rig.journal, rig.folders, "nope.csv", who="ops").ok
    result = operator.discard(rig.cfg, rig.journal, rig.folders, "users.csv", who="ops")
    assert result.ok, result.message
    path, side = rig.finished(fid)
    assert rig.record(fid).state == State.FAILED and path.read_text() == USERS
    assert side["reason"].startswith(f"discarded by operator while waiting for import {waited}")
    assert rig.worker.drain(1) and rig.posts() == 1 and not list(rig.folders.processing.iterdir())
    rig.sim.release()


def test_discard_refuses_a_file_that_is_being_posted(rig: Rig) -> None:
    fid = rig.drop("users.csv", USERS)
    rec = rig.record(fid)
    rig.journal.transition(fid, State.POSTING, "posting", expect=State.QUEUED)  # the worker, mid-post
    result = operator.discard(rig.cfg, rig.journal, rig.folders, "users.csv", who="ops")
    assert not result.ok and "being posted" in result.message
    assert rig.record(fid).state == State.POSTING and (rig.folders.processing / rec.stored_name).exists()


def test_a_hold_that_cannot_reach_held_keeps_the_file_queued_and_tries_again(make_rig) -> None:
    rig = make_rig(**{"import": BATCH})
    rig.drop("users_1.csv", users(10))
    rig.drain()
    rig.folders.held.rmdir()
    rig.folders.held.write_text("not a folder")  # held/ cannot be made or written
    fid = rig.drop("users_2.csv", users(6))
    rig.run_until(lambda: rig.record(fid).last_error is not None, 10, "the failed hold")
    rec = rig.record(fid)
    assert rec.state == State.QUEUED and (rig.folders.processing / rec.stored_name).read_text() == users(6)
    assert rig.events(fid)[-1] == ("moving", "queued", "cannot hold") and len(rig.sim.imports()) == 1
    rig.folders.held.unlink()  # the operator fixes it
    rig.drain()
    assert rig.record(fid).state == State.HELD and (rig.folders.held / rec.stored_name).read_text() == users(6)
    assert len(rig.sim.imports()) == 1  # never posted meanwhile
