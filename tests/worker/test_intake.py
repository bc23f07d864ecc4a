"""The intake in-process: which entries are ours, the marker, the truncation wait, the claim.

``Intake.take`` is what the watcher calls for a settled entry; here the test calls it, as
the watcher would, and then drains the worker to see where the file ends up. The watcher
itself (events, settling, rescans) is tested in tests/daemon.
"""

from __future__ import annotations

import io
import json
import os
import time
import zipfile

from sisdropd.intake import Taken
from sisdropd.lifecycle import State
from tests.support import USERS, Rig, wait_for


def take(rig: Rig, name: str) -> Taken:
    path = rig.folders.inbox / name
    return rig.intake.take(path, os.lstat(path))


def test_consider_names_the_entry_an_event_concerns(make_rig) -> None:
    rig = make_rig(watch={"marker": ".ok"})
    assert rig.intake.consider("users.csv") == "users.csv"
    assert rig.intake.consider("users.csv.ok") == "users.csv"  # a marker stands for its file
    for name in (".users.csv", "users.csv.part", "notes.txt", "x.ok", "users.csv~"):
        assert rig.intake.consider(name) is None, name


def test_a_file_waits_for_its_marker_which_is_removed_once_it_is_taken(make_rig) -> None:
    rig = make_rig(watch={"marker": ".ok"})
    (rig.folders.inbox / "users.csv").write_text(USERS)
    assert take(rig, "users.csv") == Taken.WAIT
    assert (rig.folders.inbox / "users.csv").exists() and rig.journal.select() == []
    (rig.folders.inbox / "users.csv.ok").write_bytes(b"")
    assert take(rig, "users.csv") == Taken.TAKEN
    assert sorted(os.listdir(rig.folders.inbox)) == []
    [rec] = rig.journal.select()
    assert rec.original_name == "users.csv" and rec.state == State.QUEUED


def test_a_truncated_csv_waits_until_it_changes(make_rig) -> None:
    rig = make_rig(watch={"truncated_after": 60})
    full = USERS + "u3,grace,Grace,Hopper,active\n"
    (rig.folders.inbox / "users.csv").write_text(full[:-12])  # the connection broke mid-row
    assert take(rig, "users.csv") == Taken.RETRY
    assert take(rig, "users.csv") == Taken.RETRY  # judged again: still waiting
    (rig.folders.inbox / "users.csv").write_text(full)  # the sender uploads it again, whole
    assert take(rig, "users.csv") == Taken.TAKEN
    [rec] = rig.journal.select()
    rig.drain()
    assert rig.record(rec.id).state == State.DONE and rig.finished(rec.id)[0].read_text() == full


def test_a_truncated_zip_left_alone_is_failed_after_truncated_after(make_rig) -> None:
    rig = make_rig(watch={"truncated_after": 0.3})
    cut = b"PK\x03\x04" + b"\0" * 100  # a zip cut before its central directory
    (rig.folders.inbox / "term.zip").write_bytes(cut)
    t0 = time.monotonic()
    assert take(rig, "term.zip") == Taken.RETRY
    wait_for(lambda: take(rig, "term.zip") == Taken.TAKEN, 5, what="taken to be failed")
    assert time.monotonic() - t0 >= 0.3
    [rec] = rig.journal.select()
    rig.drain()
    path, side = rig.finished(rec.id)
    assert rig.events(rec.id) == [(None, "queued", "taken"), ("queued", "finishing", "truncated"), ("finishing", "failed", "moved")]
    assert side["reason"].startswith("looks truncated (no end-of-central-directory record") and "0.3s" in side["reason"]
    assert path.read_bytes() == cut and rig.sim.imports() == []


def test_an_entry_that_changed_since_it_settled_is_left_to_settle_again(rig: Rig) -> None:
    path = rig.folders.inbox / "users.csv"
    path.write_text(USERS)
    settled = os.lstat(path)
    with open(path, "a") as f:
        f.write("u3,grace,Grace,Hopper,active\n")
    assert rig.intake.take(path, settled) == Taken.RETRY
    assert path.exists() and rig.journal.select() == []


def test_an_entry_deleted_before_it_is_taken_is_no_error(rig: Rig) -> None:
    path = rig.folders.inbox / "gone.csv"
    path.write_text(USERS)
    st = os.lstat(path)
    path.unlink()
    assert rig.intake.take(path, st) == Taken.TAKEN and rig.journal.select() == []


def test_a_symbolic_link_is_moved_not_followed_and_never_posted(rig: Rig, tmp_path, log) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text(USERS)
    os.symlink(secret, rig.folders.inbox / "link.csv")
    assert take(rig, "link.csv") == Taken.TAKEN
    [rec] = rig.journal.select()
    rig.drain()
    path, side = rig.finished(rec.id)
    assert rig.record(rec.id).state == State.FAILED and path.is_symlink() and "symbolic link" in side["reason"]
    assert side["sha256"] is None and secret.read_text() == USERS and rig.sim.imports() == []
    # The log names what it is, and gives no size: a link's own (its target's path) is no file's.
    [line] = [x for x in log.getvalue().splitlines() if "link.csv: taken" in x]
    assert "taken (a symbolic link, not a regular file) -> processing/" in line and "bytes" not in line, line


def test_the_same_name_dropped_twice_never_overwrites(rig: Rig) -> None:
    second = USERS + "u3,grace,Grace,Hopper,active\n"
    a = rig.drop("users.csv", USERS)
    b = rig.drop("users.csv", second)
    rig.drain()
    (pa, _), (pb, _) = rig.finished(a), rig.finished(b)
    assert pa != pb and pa.name.endswith("-users.csv") and pb.name.endswith("-users.csv")
    assert (pa.read_text(), pb.read_text()) == (USERS, second) and len(rig.sim.imports()) == 2


def test_a_unicode_name_keeps_its_name_and_a_valid_sidecar(rig: Rig) -> None:
    name = "Übersicht users 2026 (1).csv"
    fid = rig.drop(name, USERS)
    rig.drain()
    path, _ = rig.finished(fid)
    assert path.name.endswith(name)
    assert json.loads(path.with_name(path.name + ".json").read_text(encoding="utf-8"))["original_name"] == name


def test_preflight_rejections_are_never_posted_and_say_why(rig: Rig, log: io.StringIO) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "no csv here")
    ids = [
        rig.drop("grades.csv", "student,grade\nu1,A\n"),
        rig.drop("empty.csv", b""),
        rig.drop("feed.xml", "<enterprise/>"),
        rig.drop("nocsv.zip", buf.getvalue()),
    ]
    rig.drain()
    assert rig.sim.imports() == []
    for fid in ids:
        _, side = rig.finished(fid)
        assert rig.record(fid).state == State.FAILED
        assert side["import_id"] is None and side["sis_import"] is None and side["workflow_state"] is None
        assert side["reason"].startswith("rejected by the pre-flight check") and side["problems"]
    assert "grades.csv: rejected: grades.csv:1: Couldn't find Canvas CSV import headers" in log.getvalue()
