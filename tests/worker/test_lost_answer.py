"""At most once, by construction: a post whose answer was lost is never posted again while
Canvas may still turn it into an import (issue 11, point 2).

Each test loses the answer to a real post to the simulator (``drop_after``: Canvas creates
the import, the answer never comes back; ``drop``: the request never reaches Canvas) and
runs the worker in-process. The request timeout is 1 s, so the grace period (no candidate
in Canvas's list for that long before posting again) is 2 s: every delay the tests give
Canvas is longer than that, so a worker that posted again on a mere "no files listed yet"
would post twice.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sisdropd.lifecycle import State
from sisdropd.simulator import FakeCanvas
from tests.support import TOKEN, USERS, Rig

FAST = {"timeout": 1}  # grace period 2 s


def ours(sim: FakeCanvas, user_id: int = 17) -> list[dict]:
    return [i for i in sim.imports() if i["user_id"] == user_id]


def lose_the_answer(rig: Rig, fault: str = "drop_after") -> int:
    """Drop users.csv and post it, losing the answer; returns its record id (POSTING)."""
    rig.sim.inject(fault, method="POST", path="sis_imports$")
    fid = rig.drop("users.csv", USERS)
    rig.worker.step(rig.record(fid))
    assert rig.record(fid).state == State.POSTING and rig.posts() == 1
    return fid


def test_lost_answer_while_canvas_still_unpacks_is_found_not_posted_again(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(canvas=FAST)
    rig.sim.set_timing(attachments_delay=4.0, import_seconds=4.5)  # importing, no files listed, for twice the grace period
    fid = lose_the_answer(rig)
    rig.drain(30)
    [imp] = rig.sim.imports()
    assert rig.posts() == 1 and rig.record(fid).import_id == imp["id"]
    assert ("posting", "running", "found in Canvas's list") in rig.events(fid)
    _, side = rig.finished(fid)
    assert rig.record(fid).state == State.DONE and side["workflow_state"] == "imported"


def test_a_token_rotated_to_another_canvas_user_still_finds_the_post(make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    """The post's user is journaled with it: the lookup after the rotation keeps to that
    user's imports, and the next post journals the new token's user."""
    token_file = tmp_path / "canvas-token"
    token_file.write_text(TOKEN)
    os.chmod(token_file, 0o600)
    rig = make_rig(canvas={**FAST, "token_file": str(token_file)})
    rig.sim.set_timing(attachments_delay=3.0, import_seconds=3.5)
    fid = lose_the_answer(rig)
    assert rig.record(fid).post_user_id == 17
    rig.sim.set_token("rotated-token-42", user_id=42)  # the old token is refused from now on
    token_file.write_text("rotated-token-42")
    rig.drain(30)
    [imp] = rig.sim.imports()
    assert rig.posts() == 1 and rig.record(fid).import_id == imp["id"] and imp["user_id"] == 17
    second = rig.drop("enrollments.csv", "course_id,user_id,role,status\nC1,u1,student,active\n")
    rig.drain(30)
    assert rig.record(second).post_user_id == 42 and ours(rig.sim, 42)[0]["id"] == rig.record(second).import_id


def test_another_users_pending_imports_do_not_block_a_lost_post(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(canvas=FAST)
    fid = lose_the_answer(rig, "drop_read")  # sent whole, never reached Canvas
    rig.sim.hold_queue()  # another client's import runs...
    rig.sim.foreign_import()  # ...and another waits `created`, no files listed
    # Posted again once the grace period is over (the answer comes back this time)...
    rig.run_until(lambda: rig.record(fid).state == State.RUNNING, 10, "the file posted again")
    rec = rig.record(fid)
    assert rig.posts() == 2 and rec.state == State.RUNNING and [i["id"] for i in ours(rig.sim)] == [rec.import_id]
    rig.sim.release()  # ...and its import waits behind theirs, then runs
    rig.drain(30)
    assert rig.record(fid).state == State.DONE and len(ours(rig.sim)) == 1


def test_our_import_failing_early_without_files_lets_the_file_be_posted_again(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(canvas=FAST)
    rig.sim.set_outcome("users", "failed_early", error_message="Error while fetching the upload")
    fid = lose_the_answer(rig)
    rig.run_until(lambda: rig.record(fid).state == State.QUEUED, 30, "the file queued to be posted again")
    [first] = rig.sim.imports()
    assert first["workflow_state"] == "failed" and rig.events(fid)[-1][2] == "not in Canvas: post again"
    rig.sim.set_outcome("users", "imported")  # the second post's import runs normally
    rig.drain(30)
    assert rig.posts() == 2
    second = [i for i in rig.sim.imports() if i["id"] != first["id"]]
    assert [i["workflow_state"] for i in second] == ["imported"] and rig.record(fid).import_id == second[0]["id"]
    assert rig.record(fid).state == State.DONE


def test_a_queue_held_by_another_client_leaves_our_lost_post_created_and_we_wait(
    make_rig: Callable[..., Rig], log
) -> None:
    rig = make_rig(canvas=FAST)
    rig.sim.hold_queue()  # another client's import holds the account's one-at-a-time queue
    fid = lose_the_answer(rig)
    [mine] = ours(rig.sim)
    # Three grace periods: a worker that took "no files listed" for "absent" posts again in one.
    assert not rig.worker.drain(6)
    rec = rig.record(fid)
    assert rig.posts() == 1 and rec.state == State.POSTING and rec.waiting_for == mine["id"]
    assert rig.sim.imports()[-1]["workflow_state"] == "created"
    assert f"waiting for import {mine['id']} (created" in log.getvalue()
    rig.sim.release()
    rig.drain(30)
    assert rig.posts() == 1 and rig.record(fid).import_id == mine["id"] and rig.record(fid).state == State.DONE
