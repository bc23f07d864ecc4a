"""Finishing in-process: the sidecar, Canvas's errors file, a move that cannot be done yet."""

from __future__ import annotations

import hashlib
import io
import re

from sisdropd.lifecycle import State
from tests.support import USERS, Rig

ENROLL_BAD = "course_id,user_id,role,status\nC1,u1,student,active\nC1,u2,student,dropped\n"
SIDECAR_KEYS = {"original_name", "size", "sha256", "import_id", "workflow_state", "reason", "taken_at", "finished_at", "sis_import"}


def test_the_sidecar_holds_the_contract_keys(rig: Rig) -> None:
    fid = rig.drop("users.csv", USERS)
    rig.drain()
    path, side = rig.finished(fid)
    assert SIDECAR_KEYS <= side.keys()
    assert side["original_name"] == "users.csv" and side["size"] == len(USERS)
    assert side["sha256"] == hashlib.sha256(USERS.encode()).hexdigest()
    assert side["sis_import"]["workflow_state"] == "imported" and side["sis_import"]["data"]["counts"]["users"] == 2
    assert side["taken_at"].endswith("Z") and side["finished_at"].endswith("Z")


def test_warnings_and_canvas_errors_file_are_kept(rig: Rig, log: io.StringIO) -> None:
    fid = rig.drop("enrollments.csv", ENROLL_BAD)
    rig.drain()
    path, side = rig.finished(fid)
    assert rig.record(fid).state == State.DONE and side["workflow_state"] == "imported_with_messages"
    errors = path.with_name(path.name + ".errors.csv")
    assert "dropped" in errors.read_text() and side["errors_file"] == errors.name
    assert side["sis_import"]["processing_warnings"]
    # Canvas names the file as it was uploaded: our unique upload name, ending in the original.
    assert re.search(r'enrollments.csv #\d+: Canvas warning: sisdrop-\w+-enrollments.csv: Improper status "dropped"', log.getvalue())


def test_a_folder_that_cannot_be_written_keeps_the_file_and_retries(rig: Rig, log: io.StringIO) -> None:
    rig.folders.done.rmdir()
    rig.folders.done.write_text("not a folder")  # mkdir and the move into done/ now fail
    fid = rig.drop("users.csv", USERS)
    assert not rig.worker.drain(1.0)  # finishing waits and tries again: never done, never lost
    rec = rig.record(fid)
    assert rec.state == State.FINISHING and (rig.folders.processing / rec.stored_name).read_text() == USERS
    assert "cannot move the file into done/" in log.getvalue() and rec.last_error
    rig.folders.done.unlink()  # the operator fixes it
    rig.drain()
    assert rig.record(fid).state == State.DONE and rig.finished(fid)[0].read_text() == USERS
    assert len(rig.sim.imports()) == 1
