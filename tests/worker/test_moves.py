"""Moves (issue 11, point 7): a crash in the middle of a move across filesystems is
finished only when the copy is verifiably the file the journal holds; otherwise both
copies are kept and named; a FIFO sent to failed/ on another filesystem does not loop.

The crash state (the copy in place at the destination, the source not yet unlinked) is
made on disk, then start-up and the worker run; the moves across a real second
filesystem use a tmpfs (skipped, saying why, where it cannot be mounted). A SIGKILL at
that very instant is tested through a real process in tests/daemon/test_commands.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sisdropd import recovery
from sisdropd.files import MoveConflict, move
from sisdropd.lifecycle import State
from tests.support import USERS, Rig, alerts, recorder, wait_for


def to_finishing(rig: Rig) -> int:
    fid = rig.drop("users.csv", USERS)
    while rig.record(fid).state != State.FINISHING:
        rig.worker.step(rig.record(fid))
    return fid


def test_a_verified_copy_left_by_a_crash_is_finished(rig: Rig) -> None:
    fid = to_finishing(rig)
    rec = rig.record(fid)
    src, dst = rig.folders.processing / rec.stored_name, rig.folders.done / rec.stored_name
    rig.folders.done.mkdir(exist_ok=True)
    shutil.copy2(src, dst)  # the copy is in place, the source not yet unlinked: then the crash
    recovery.recover(rig.cfg, rig.journal, rig.folders, rig.client)
    rig.drain()
    assert rig.record(fid).state == State.DONE and dst.read_text() == USERS and not src.exists()


@pytest.mark.parametrize("other", [USERS.replace("Ada", "Eve"), USERS + "u3,x,X,Y,active\n"], ids=["same-size", "longer"])
def test_a_copy_that_is_not_the_file_keeps_both_and_names_them(make_rig: Callable[..., Rig], tmp_path: Path, log, other: str) -> None:
    argv, out = recorder(tmp_path)
    rig = make_rig(notify={"command": argv})
    fid = to_finishing(rig)
    rec = rig.record(fid)
    src, dst = rig.folders.processing / rec.stored_name, rig.folders.done / rec.stored_name
    rig.folders.done.mkdir(exist_ok=True)
    dst.write_text(other)
    assert not rig.worker.drain(1.5)  # several tries: never unlinked, alerted once
    assert src.read_text() == USERS and dst.read_text() == other and rig.record(fid).state == State.FINISHING
    assert f"{src} and {dst} are two different files" in log.getvalue()
    [alert] = wait_for(lambda: alerts(out, "blocked"), 10, what="the alert")
    assert alert["paths"] == [str(src), str(dst)]
    dst.unlink()  # the operator removes the wrong one
    rig.drain()
    assert rig.record(fid).state == State.DONE and dst.read_text() == USERS and not src.exists()
    assert len(alerts(out, "blocked")) == 1


def test_move_never_unlinks_a_source_it_cannot_verify(tmp_path: Path) -> None:
    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_text(USERS)
    shutil.copy2(src, dst)
    with pytest.raises(MoveConflict, match="no size and SHA-256"):
        move(src, dst)  # a copy, but nothing to check it against
    digest = hashlib.sha256(USERS.encode()).hexdigest()
    with pytest.raises(MoveConflict, match="SHA-256"):
        move(src, dst, expect=(len(USERS), "0" * 64))
    assert src.exists() and dst.exists()
    move(src, dst, expect=(len(USERS), digest))
    assert not src.exists() and dst.read_text() == USERS


def test_a_move_across_filesystems_copies_verifies_and_unlinks(tmp_path: Path, tmpfs) -> None:
    other = tmpfs("otherfs", "4m")
    src = tmp_path / "users.csv"
    src.write_text(USERS)
    move(src, other / "users.csv")
    assert (other / "users.csv").read_text() == USERS and not src.exists()
    assert [p.name for p in other.iterdir()] == ["users.csv"]  # no temporary copy left


def test_a_fifo_sent_to_failed_on_another_filesystem_does_not_loop(make_rig: Callable[..., Rig], tmpfs, log) -> None:
    other = tmpfs("otherfs", "4m")
    rig = make_rig(folders={"failed": str(other / "failed")})
    fifo = rig.folders.inbox / "users.csv"
    os.mkfifo(fifo)
    fid = rig.drop_entry("users.csv")
    rig.drain(10)
    rec = rig.record(fid)
    assert rec.state == State.FAILED and not list(rig.folders.processing.iterdir())
    landed = other / "failed" / rec.stored_name
    assert stat.S_ISFIFO(os.lstat(landed).st_mode)  # a FIFO holds no bytes: made again there
    _, side = rig.finished(fid)
    assert side["file_type"] == "fifo" and side["reason"].startswith("rejected by the pre-flight check")
    assert "cannot move" not in log.getvalue()


@pytest.mark.skipif(sys.platform != "linux", reason="AF_UNIX sockets as files")
def test_a_socket_across_filesystems_leaves_its_sidecar_saying_what_it_was(tmp_path: Path, tmpfs) -> None:
    import socket

    other = tmpfs("otherfs", "4m")
    path = tmp_path / "s.csv"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
    move(path, other / "s.csv")
    assert not path.exists() and not (other / "s.csv").exists()
