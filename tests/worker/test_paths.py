"""The paths of a file's life, as the journal records them: read this as the specification.

Each test drops a file through the intake into processing/, runs the worker in-process
until nothing is left to do (``Worker.drain``) against the simulator over real HTTP, and
asserts the exact sequence of journal events, each ``(from state, to state, note)``:

    taken     (None, queued, taken)              the intake renamed it into processing/
    posting   (queued, posting, posting)         about to post: Canvas may have it from now on
    posted    (posting, running, posted)         Canvas answered with the import's id
    decided   (running, finishing, <state>)      Canvas's final workflow_state
    moved     (finishing, done|failed, moved)    in its folder with its sidecar

A file moved besides its import (held, released, discarded, retried) goes through MOVING:
the intent first, then the move, then the state after it.
"""

from __future__ import annotations

import io
import sqlite3
import time
import zipfile

import pytest

from sisdropd import importer, operator
from sisdropd.lifecycle import State
from tests.support import USERS, Rig

TAKEN = (None, "queued", "taken")
POSTING = ("queued", "posting", "posting")
POSTED = ("posting", "running", "posted")
DONE = ("finishing", "done", "moved")
FAILED = ("finishing", "failed", "moved")
BATCH = {"import_type": "instructure_csv", "batch_mode": True, "batch_mode_term_id": "sis_term_id:2026FA"}


def decided(state: str) -> tuple[str, str, str]:
    return ("running", "finishing", state)


def users(n: int) -> str:
    return "user_id,login_id,status\n" + "".join(f"u{i},login{i},active\n" for i in range(n))


def posts(rig: Rig) -> int:
    return rig.posts()


def test_taken_posted_running_done(rig: Rig) -> None:
    fid = rig.drop("users.csv", USERS)
    rig.drain()
    assert rig.events(fid) == [TAKEN, POSTING, POSTED, decided("imported"), DONE]
    path, side = rig.finished(fid)
    [imp] = rig.sim.imports()
    assert path.read_text() == USERS and side["import_id"] == imp["id"] and side["workflow_state"] == "imported"


def test_rejected_by_the_preflight_check_is_never_posted(rig: Rig) -> None:
    fid = rig.drop("grades.csv", "student,grade\nu1,A\n")
    rig.drain()
    assert rig.events(fid) == [TAKEN, ("queued", "finishing", "rejected"), FAILED]
    _, side = rig.finished(fid)
    assert side["reason"].startswith("rejected by the pre-flight check") and side["import_id"] is None
    assert rig.sim.imports() == [] and posts(rig) == 0


def test_held_by_the_change_guard_then_released_and_done(make_rig) -> None:
    rig = make_rig(**{"import": BATCH})
    first = rig.drop("users_1.csv", users(10))
    rig.drain()
    assert rig.events(first)[-1] == DONE
    fid = rig.drop("users_2.csv", users(6))
    rig.drain()  # a held file is not open: the worker has nothing left to do
    held = [("queued", "moving", "change guard"), ("moving", "held", "change guard")]
    assert rig.events(fid) == [TAKEN, *held]
    assert (rig.folders.held / rig.record(fid).stored_name).read_text() == users(6)
    assert len(rig.sim.imports()) == 1
    assert operator.release(rig.cfg, rig.journal, rig.folders, "users_2.csv", who="the test").ok
    rig.drain()
    assert rig.events(fid) == [
        TAKEN, *held, ("held", "moving", "released by the test"), ("moving", "queued", "released by the test"),
        POSTING, POSTED, decided("imported"), DONE,
    ]
    assert len(rig.sim.imports()) == 2


def test_lost_answer_found_in_canvas_list_is_followed_not_posted_again(rig: Rig) -> None:
    rig.sim.inject("drop_after", method="POST", path="sis_imports")  # Canvas creates it; the answer is lost
    fid = rig.drop("users.csv", USERS)
    rig.drain()
    assert rig.events(fid) == [TAKEN, POSTING, ("posting", "running", "found in Canvas's list"), decided("imported"), DONE]
    assert posts(rig) == 1 and len(rig.sim.imports()) == 1
    assert rig.record(fid).import_id == rig.sim.imports()[0]["id"]


def test_lost_answer_absent_is_posted_again_only_after_the_grace_period(make_rig) -> None:
    rig = make_rig(canvas={"timeout": 1})  # the grace period is twice the request timeout: 2 s
    fid = rig.drop("users.csv", USERS)
    # As a daemon killed once its post was journaled leaves it: POSTING, and whether Canvas
    # got the whole body is unknown. (A request that fails before its body is complete is
    # posted again at once: test_posting.py.)
    rig.journal.transition(
        fid, State.POSTING, "posting", expect=State.QUEUED, upload_name=importer.upload_name("users.csv"),
        post_started=time.time(), attempts=1, post_user_id=rig.sim.user_id,
    )
    # Within the grace period Canvas's list shows nothing, and the file is not posted again.
    assert not rig.worker.drain(rig.worker.post_grace * 0.8)
    assert rig.record(fid).state == "posting" and posts(rig) == 0 and rig.sim.imports() == []
    rig.drain()
    assert rig.events(fid) == [
        TAKEN, POSTING, ("posting", "queued", "not in Canvas: post again"),
        POSTING, POSTED, decided("imported"), DONE,
    ]
    assert posts(rig) == 1 and len(rig.sim.imports()) == 1


def test_timeout_fails_the_file_with_the_import_it_waited_for(make_rig) -> None:
    rig = make_rig(watch={"max_wait": 1})
    rig.sim.set_outcome("users", "imported", seconds=30)  # far slower than max_wait
    fid = rig.drop("users.csv", USERS)
    rig.drain()
    assert rig.events(fid) == [TAKEN, POSTING, POSTED, ("running", "finishing", "timeout"), FAILED]
    _, side = rig.finished(fid)
    [imp] = rig.sim.imports()
    assert side["reason"].startswith(f"timeout: import {imp['id']} still importing after max_wait (1s)")
    assert "Canvas may still run the import" in side["reason"]  # no abort_on_timeout
    assert side["import_id"] == imp["id"]


@pytest.mark.parametrize("abort", [False, True])
def test_an_import_that_never_starts_times_out_and_is_aborted_when_asked(make_rig, abort: bool) -> None:
    rig = make_rig(watch={"max_wait": 1, "abort_on_timeout": abort})
    rig.sim.set_outcome("users", "stuck")  # stays `created` for ever
    fid = rig.drop("users.csv", USERS)
    rig.drain()
    assert rig.events(fid) == [TAKEN, POSTING, POSTED, ("running", "finishing", "timeout"), FAILED]
    _, side = rig.finished(fid)
    [imp] = rig.sim.imports()
    assert side["reason"].startswith(f"timeout: import {imp['id']} still created after max_wait")
    assert imp["workflow_state"] == ("aborted" if abort else "created")
    assert ("aborted in Canvas" in side["reason"]) is abort


@pytest.mark.parametrize(
    ("state", "folder"),
    [
        ("imported", "done"),
        ("imported_with_messages", "done"),
        ("failed", "failed"),
        ("failed_with_messages", "failed"),
        ("aborted", "failed"),
    ],
)
def test_every_final_state_is_routed(rig: Rig, state: str, folder: str) -> None:
    rig.sim.set_outcome("users", state)
    fid = rig.drop("users.csv", USERS)
    rig.drain()
    assert rig.events(fid) == [TAKEN, POSTING, POSTED, decided(state), (*DONE[:1], folder, "moved")]
    _, side = rig.finished(fid)
    assert side["workflow_state"] == state and side["reason"]


def test_files_taken_together_are_imported_one_at_a_time_oldest_first(rig: Rig) -> None:
    ids = {name: rig.drop(name, USERS, mtime=mtime) for name, mtime in (("c.csv", 1000), ("a.csv", 3000), ("b.csv", 2000), ("d.csv", 2000))}
    rig.drain()
    by_import = sorted(ids, key=lambda n: rig.record(ids[n]).import_id or 0)
    assert by_import == ["c.csv", "b.csv", "d.csv", "a.csv"]  # b and d tie on mtime: by name
    # After the four are taken, the journal's events come one file at a time: each file is
    # done before the next is posted.
    with sqlite3.connect(rig.journal.path) as db:
        order = [fid for (fid,) in db.execute("SELECT file_id FROM events WHERE note != 'taken' ORDER BY id")]
    runs = [fid for i, fid in enumerate(order) if i == 0 or order[i - 1] != fid]
    assert runs == [ids[n] for n in by_import]


def test_rules_set_the_parameters_posted_by_file_name(make_rig) -> None:
    rule = {"match": r"batch_(?P<term>\w+)\.zip", "import": {"batch_mode": True, "batch_mode_term_id": "sis_term_id:{term}"}}
    rig = make_rig(rules=[rule])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("users.csv", users(3))
    batch = rig.drop("batch_2026FA.zip", buf.getvalue())
    plain = rig.drop("users.csv", users(3))
    rig.drain()
    params = {imp["id"]: imp["params"] for imp in rig.sim.imports()}
    assert params[rig.record(batch).import_id]["batch_mode_term_id"] == "sis_term_id:2026FA"
    assert str(params[rig.record(batch).import_id]["batch_mode"]).lower() == "true"
    assert "batch_mode" not in params[rig.record(plain).import_id]


def test_canvas_change_threshold_abort_is_explained(make_rig) -> None:
    rig = make_rig(**{"import": {**BATCH, "change_threshold": 10}}, guard={"max_drop_percent": 100})
    rig.drop("enroll_1.csv", "course_id,user_id,role,status\n" + "".join(f"C1,u{i},student,active\n" for i in range(10)))
    rig.drain()
    fid = rig.drop("enroll_2.csv", "course_id,user_id,role,status\n" + "".join(f"C1,u{i},student,active\n" for i in range(5)))
    rig.drain()
    assert rig.events(fid)[-2:] == [decided("aborted"), FAILED]
    _, side = rig.finished(fid)
    assert side["reason"] == (
        "Canvas stopped the batch-mode clean-up: 5 enrollments would be deleted and exceeds the set "
        "threshold of 10% (change_threshold). The file's rows were applied; only the deletion of what "
        "the file leaves out was stopped"
    )
    assert side["canvas_counts"]["enrollments"] == 5  # the rows were applied, as the reason says
