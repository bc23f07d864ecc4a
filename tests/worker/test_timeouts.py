"""No verdict without Canvas's word (issue 11, point 3).

A timeout is declared only on a fresh answer from Canvas asked for at or after the
deadline: a worker that starts again past max_wait asks first, a Canvas that cannot be
reached at the deadline keeps the file waiting (logged, alerted once), and a timeout that
leaves the import running says so, so that ``retry`` refuses until Canvas says it ended.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from sisdropd import operator
from sisdropd.lifecycle import State
from sisdropd.worker import Worker
from tests.support import USERS, Rig, alerts, recorder, wait_for


def post(rig: Rig) -> int:
    fid = rig.drop("users.csv", USERS)
    rig.worker.step(rig.record(fid))
    assert rig.record(fid).state == State.RUNNING
    return fid


def test_a_worker_started_past_max_wait_asks_canvas_and_decides_by_its_state(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(watch={"max_wait": 1})
    rig.sim.set_outcome("users", "imported", seconds=2.0)
    fid = post(rig)
    # The daemon is down meanwhile: the import ends in Canvas after max_wait has passed.
    wait_for(lambda: rig.sim.imports()[0]["workflow_state"] == "imported", 15, what="the import to end in Canvas")
    restarted = Worker(rig.cfg, rig.journal, rig.client, rig.folders, stop=rig.stop)
    assert restarted.drain(20)
    _, side = rig.finished(fid)
    assert rig.record(fid).state == State.DONE and side["workflow_state"] == "imported"
    assert rig.events(fid)[-2] == ("running", "finishing", "imported")


def test_canvas_unreachable_at_the_deadline_keeps_the_file_waiting(make_rig: Callable[..., Rig], tmp_path: Path, log) -> None:
    argv, out = recorder(tmp_path)
    rig = make_rig(watch={"max_wait": 1}, canvas={"timeout": 1}, notify={"command": argv})
    rig.sim.set_outcome("users", "imported", seconds=60)
    fid = post(rig)
    drops = 40
    rig.sim.inject("drop", method="GET", count=drops)  # Canvas cannot be reached from now on
    while rig.sim.faults_served().get("drop", 0) < drops:
        rec = rig.journal.next_queued()
        assert rec is not None and rec.id == fid and rec.state == State.RUNNING, "decided without Canvas's word"
        if rec.next_attempt > time.time():
            wait_for(lambda: rig.record(fid).next_attempt <= time.time(), 10, what="the next attempt")
        rig.worker._attempt(rec)
    rig.drain(20)  # Canvas answers again: still importing, past the deadline: now it is a timeout
    gets = [status for method, path, status in rig.sim.request_log() if method == "GET" and path.endswith(f"/sis_imports/{rig.record(fid).import_id}")]
    assert gets[-1] == 200 and 0 in gets  # the verdict came from an answer after the dropped ones
    _, side = rig.finished(fid)
    assert side["reason"].startswith(f"timeout: import {rig.record(fid).import_id} still importing after max_wait")
    text = log.getvalue()
    assert text.count("Canvas cannot be reached to ask how import") == 1
    [alert] = wait_for(lambda: alerts(out, "blocked"), 10, what="the alert")
    assert "cannot be reached" in alert["reason"] and alert["file"] == "users.csv"


def test_retry_refuses_while_canvas_may_still_run_the_import(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(watch={"max_wait": 1})
    rig.sim.set_outcome("users", "imported", seconds=60)
    fid = post(rig)
    rig.drain()
    rec = rig.record(fid)
    assert rec.state == State.FAILED and "Canvas may still run the import" in (rec.outcome_reason or "")
    failed = rig.folders.failed / rec.stored_name
    result = operator.retry(rig.cfg, rig.journal, rig.folders, "users.csv", who="ops", client=lambda: rig.client)
    assert not result.ok and f"import {rec.import_id} of users.csv is still running in Canvas (state 'importing')" in result.message
    assert "sisdropd abort users.csv" in result.message
    assert rig.record(fid).state == State.FAILED and failed.exists() and len(rig.sim.imports()) == 1
    aborted = operator.abort(rig.journal, rig.client, 5, name="users.csv")
    assert aborted.ok and aborted.message.startswith(f"aborted import {rec.import_id} (users.csv): now aborted")
    rig.sim.set_outcome("users", "imported", seconds=0.2)
    assert operator.retry(rig.cfg, rig.journal, rig.folders, "users.csv", who="ops", client=lambda: rig.client).ok
    rig.drain()
    assert rig.record(fid).state == State.DONE and len(rig.sim.imports()) == 2


def test_retry_goes_ahead_once_canvas_says_the_import_ended(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(watch={"max_wait": 1})
    rig.sim.set_outcome("users", "imported", seconds=2.5)
    fid = post(rig)
    rig.drain()
    assert rig.record(fid).state == State.FAILED
    assert not operator.retry(rig.cfg, rig.journal, rig.folders, "users.csv", who="ops", client=lambda: rig.client).ok
    wait_for(lambda: rig.sim.imports()[0]["workflow_state"] == "imported", 15, what="the import to end")
    assert operator.retry(rig.cfg, rig.journal, rig.folders, "users.csv", who="ops", client=lambda: rig.client).ok
    assert rig.record(fid).state == State.QUEUED
