"""``discard`` takes out a file that waits to be posted (again): queued, or between post
attempts with no import known in Canvas; never one whose post is on the wire, nor one with
a known import. Before, a file Canvas kept answering 500 could not be taken out by any
command ("is being posted now, not waiting: nothing to discard").

Through ``operator.discard`` in-process (its own journal connection, as a command has), and
``commands.control.run`` for the command's output and exit status.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from sisdropd import operator
from sisdropd.commands import control
from sisdropd.journal import Journal
from sisdropd.lifecycle import State
from tests.support import USERS, Rig, wait_for

TYPO = {"match": r"typo.*\.csv", "import": {"import_type": "instructure_csvv"}}


def discard(rig: Rig, name: str) -> operator.Result:
    journal = Journal(rig.folders.state_dir)  # another connection, as the command's
    try:
        return operator.discard(rig.cfg, journal, rig.folders, name, who="ops")
    finally:
        journal.close()


def test_discard_takes_out_a_file_waiting_between_posts_after_a_500(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(rules=[TYPO])  # timeout 5: the lookup's grace keeps it waiting a while
    bad = rig.drop("typo.csv", USERS, mtime=1000)
    good = rig.drop("users.csv", USERS.replace("u1", "u2"), mtime=2000)
    rig.run_until(lambda: rig.record(bad).absent_since is not None, 10, "the 500 looked for in Canvas's list")
    rec = rig.record(bad)
    assert rec.state == State.POSTING and rec.import_id is None and rec.last_error == "HTTP 500: An error occurred."
    result = discard(rig, "typo.csv")
    assert result == operator.Result(True, (
        "discarded: typo.csv is in failed/ (its last post failed (HTTP 500: An error occurred.); "
        "Canvas's list showed no import of it so far)"
    ))
    path, side = rig.finished(bad)
    assert rig.record(bad).state == State.FAILED and path.read_text() == USERS
    assert side["reason"].startswith(
        "discarded by operator while it waited to be posted again: its last post failed (HTTP 500: An error occurred.) "
        "and Canvas's list showed no import of it so far"
    )
    rig.drain()  # the queue goes on
    assert rig.record(good).state == State.DONE and len(rig.sim.imports()) == 1 and rig.posts() == 2
    assert rig.events(bad)[-2:] == [("posting", "moving", "discarded by ops"), ("moving", "failed", "discarded by ops")]


def test_the_discard_command_takes_out_a_file_queued_to_be_posted_again(
    make_rig: Callable[..., Rig], capsys: pytest.CaptureFixture[str]
) -> None:
    rig = make_rig(rules=[TYPO], canvas={"timeout": 0.5, "retry_initial": 5, "retry_max": 5})
    bad = rig.drop("typo.csv", USERS)
    rig.run_until(lambda: rig.record(bad).state == State.QUEUED and rig.record(bad).attempts, 10, "the file queued again")
    assert control.run(rig.cfg, "discard", "typo.csv") == 0
    assert capsys.readouterr().out == (
        "discarded: typo.csv is in failed/ (it waited to be posted again; Canvas has no import of it)\n"
    )
    _, side = rig.finished(bad)
    assert side["reason"] == (
        "discarded by operator while it waited to be posted again after 1 post(s) (HTTP 500: An error occurred.): "
        "Canvas's list showed no import of them"
    )
    assert rig.worker.drain(1) and rig.posts() == 1


def test_a_queued_file_never_posted_is_not_discarded(make_rig: Callable[..., Rig]) -> None:
    """Only one waiting to be posted *again*: a released file is queued and never posted, and
    a release and a discard racing for a held file must not both win, one after the other."""
    rig = make_rig()
    first = rig.drop("users_1.csv", USERS, mtime=1000)
    second = rig.drop("users_2.csv", USERS, mtime=2000)
    assert discard(rig, "users_2.csv") == operator.Result(False, (
        "users_2.csv is queued and was never posted: discard takes out a held file or one waiting to be posted again, "
        "not this one"
    ))
    rig.drain()
    assert [rig.record(first).state, rig.record(second).state] == [State.DONE, State.DONE] and rig.posts() == 2


def test_discard_never_takes_a_file_whose_post_is_on_the_wire(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.sim.inject("delay", method="POST", delay=1.0)  # Canvas takes a second to answer the post
    fid = rig.drop("users.csv", USERS)
    worker = threading.Thread(target=rig.worker.step, args=(rig.record(fid),))
    worker.start()
    try:
        wait_for(lambda: rig.record(fid).state == State.POSTING, 5, what="the post under way")
        result = discard(rig, "users.csv")
        assert not result.ok and result.message.startswith("users.csv is being posted now, not waiting: nothing to discard")
    finally:
        worker.join()
    rec = rig.record(fid)
    assert rec.state == State.RUNNING and rec.import_id is not None  # the post went on, untouched
    result = discard(rig, "users.csv")
    assert not result.ok and result.message == (
        f"users.csv has import {rec.import_id} in Canvas (it is running): not discarded; "
        "`sisdropd abort users.csv` stops that import, and the file then goes to failed/"
    )
    rig.drain()
    assert rig.record(fid).state == State.DONE and len(rig.sim.imports()) == 1


def test_a_file_discarded_while_its_answer_was_lost_is_looked_for_before_a_retry(make_rig: Callable[..., Rig]) -> None:
    """Discard, then retry, of a file whose post Canvas did receive (its answer lost, the list
    not yet looked at): the retry looks in Canvas's list first and refuses while that import
    may still run (as after a timeout); once it has ended, a retry says what it does."""
    rig = make_rig(canvas={"timeout": 1})
    rig.sim.set_timing(import_seconds=3.0)
    rig.sim.inject("drop_after", method="POST", path="sis_imports$")
    fid = rig.drop("users.csv", USERS)
    rig.worker.step(rig.record(fid))
    assert rig.record(fid).state == State.POSTING and rig.posts() == 1
    assert discard(rig, "users.csv").ok and rig.record(fid).state == State.FAILED

    def retry() -> operator.Result:
        journal = Journal(rig.folders.state_dir)
        try:
            return operator.retry(rig.cfg, journal, rig.folders, "users.csv", who="ops", client=lambda: rig.client)
        finally:
            journal.close()

    [imp] = rig.sim.imports()
    first = retry()  # Canvas is still unpacking the upload: no files listed yet, maybe ours
    assert not first.ok and f"Canvas lists import {imp['id']} without its files yet" in first.message, first.message

    def refused_as_running() -> str | None:
        message = retry().message
        return message if "still running" in message else None

    running = wait_for(refused_as_running, 10, what="the files listed")
    assert f"reached Canvas as import {imp['id']}, still running" in running, running
    assert rig.record(fid).import_id == imp["id"] and rig.record(fid).state == State.FAILED
    assert rig.sim.wait_all_final(10)
    second = retry()  # it ended imported: a retry now is asked knowingly, and says so
    assert second.ok and f"though its import {imp['id']} ended imported in Canvas: this posts the file again" in second.message, second.message
    assert rig.posts() == 1 and len(rig.sim.imports()) == 1  # nothing was posted behind the operator's back
