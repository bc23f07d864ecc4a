"""What is posted is exactly what was checked (issue 12.1), and the check runs while the
file is sent (issue 15): each attack reproduced for real against the simulator.

The uploader owns the inode it uploaded. It keeps a way to write to it after the daemon
took the file: a hidden hard link in inbox/ (``ln users.csv .h``), or an open handle.
Each test rewrites the file through one of them after the check has begun, at a moment
made certain by a slow answer from the simulator (a ``delay`` fault: Canvas holding a
request), and asserts what reached Canvas: the checked bytes, or nothing at all. The
simulator, like Canvas, creates nothing from a body shorter than its Content-Length and
without its closing boundary: such a request is logged with status 0 (never answered).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from sisdropd import guard, operator, posting
from sisdropd.canvas import CanvasClient, client_for
from sisdropd.intake import Taken
from sisdropd.preflight import check_path
from tests.support import TOKEN, Rig, wait_for

BATCH = {"import_type": "instructure_csv", "batch_mode": True, "batch_mode_term_id": "sis_term_id:2026FA"}
TAKEN = (None, "queued", "taken")
POSTING = ("queued", "posting", "posting")
POSTED = ("posting", "running", "posted")
DONE = ("finishing", "done", "moved")
HELD = [("queued", "moving", "change guard"), ("moving", "held", "change guard")]  # through MOVING, as every hold
RELEASED = [("held", "moving", "released by the test"), ("moving", "queued", "released by the test")]
BIG = 24 * 1024 * 1024  # checked while sent, and far more than the socket buffers hold


def users(n: int, tag: str = "u") -> bytes:
    """A users CSV of ``n`` rows, unique ids. Built 50,000 rows at a time: millions of
    small objects at once would leave the test process large, and every process it
    forks after (a memory test measures one) would start as large."""
    head, t = [b"user_id,login_id,status\n"], tag.encode()
    chunks = [b"".join([b"%s%d,login%d,active\n" % (t, i, i) for i in range(lo, min(n, lo + 50_000))]) for lo in range(0, n, 50_000)]
    return b"".join(head + chunks)


def big_users(size: int = BIG, tag: str = "u") -> bytes:
    """A valid users CSV of about ``size`` bytes (unique ids)."""
    rows = (size // 24) + 1
    return users(rows, tag)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def creates(rig: Rig, n: int | None = None) -> list[int]:
    """The status of each create request the simulator received (0: never answered),
    once it has logged ``n`` of them (it logs a request when it is done with it)."""

    def logged() -> list[int]:
        return [status for method, path, status in rig.sim.request_log() if method == "POST" and path.endswith("/sis_imports")]

    if n is not None:
        wait_for(lambda: len(logged()) >= n, 10, what=f"{n} create requests logged")
    return logged()


def lists(rig: Rig) -> int:
    """Requests for Canvas's list of imports (a look for a post whose answer was lost)."""
    return sum(1 for method, path, _ in rig.sim.request_log() if method == "GET" and path.endswith("/sis_imports"))


def take(rig: Rig, name: str, data: bytes, *, link: str | None = None, handle: bool = False) -> tuple[int, IO[bytes] | None]:
    """The uploader writes ``name`` into inbox/ (keeping its handle open, or adding a hidden
    hard link ``link``), and the intake takes it; the record's id and the handle."""
    path = rig.folders.inbox / name
    f = open(path, "wb")  # noqa: SIM115 - the uploader's handle, closed by the test
    f.write(data)
    f.flush()
    if link:
        os.link(path, rig.folders.inbox / link)
    if not handle:
        f.close()
    assert rig.intake.take(path, os.lstat(path)) == Taken.TAKEN
    return max(r.id for r in rig.journal.select() if r.original_name == name), (f if handle else None)


def unsent_bytes(port: int | None) -> int:
    """Bytes waiting in our sockets' send queues towards 127.0.0.1:``port`` (/proc/net/tcp):
    above 0 once the peer has stopped reading and its window is full."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].rsplit(":", 1)[1], 16) == port:  # rem_address: this socket sends to it
            total += int(fields[4].split(":")[0], 16)  # tx_queue
    return total


def stalled(port: int | None) -> bool:
    """The send queue towards ``port`` holds over 512 KiB and did not move for 0.3 s: the
    peer reads nothing and the sender waits in send."""
    before = unsent_bytes(port)
    time.sleep(0.3)
    return before > 512 * 1024 and unsent_bytes(port) == before


def rewrite(f: IO[bytes], data: bytes) -> None:
    """The uploader writes other bytes through its handle (or its link, opened again)."""
    f.seek(0)
    f.truncate()
    f.write(data)
    f.flush()


@pytest.fixture
def background() -> Iterator[Callable[[Rig], threading.Thread]]:
    """``background(rig)``: the worker drains on a thread; joined (and its failure raised) at the end."""
    started: list[tuple[threading.Thread, list[BaseException]]] = []

    def start(rig: Rig) -> threading.Thread:
        errors: list[BaseException] = []

        def run() -> None:
            try:
                rig.drain(60)
            except BaseException as e:  # noqa: BLE001 - raised in the test's thread
                errors.append(e)

        t = threading.Thread(target=run, name="drain")
        t.start()
        started.append((t, errors))
        return t

    yield start
    for t, errors in started:
        t.join(90)
        assert not t.is_alive()
        if errors:
            raise errors[0]


def baseline(rig: Rig, name: str, rows: int) -> None:
    """The data set's last import had ``rows`` users (what the change guard compares with)."""
    key = guard.dataset_key(rig.cfg.guard, name, rig.cfg.params_for(name))
    rig.journal.set_dataset_counts(key, {"users": rows}, 0)


# -- checked up front: the bytes sent must hash to the bytes checked ----------------------


def one_user_as_long_as(data: bytes) -> bytes:
    """A one-user CSV of exactly ``len(data)`` bytes (a long login pads it)."""
    head = b"user_id,login_id,status\nu0,"
    return head + b"x" * (len(data) - len(head) - len(b",active\n")) + b",active\n"


@pytest.mark.parametrize("size", ["shorter", "same size"])
def test_bytes_rewritten_through_an_open_handle_after_the_check_never_reach_canvas(make_rig, background, size: str) -> None:
    """The issue's reproduction: 100 users pass the check, the uploader rewrites the file to
    1 user before it is sent; a batch-mode import of 1 user would delete everyone else."""
    one = users(1) if size == "shorter" else one_user_as_long_as(users(100))
    rig = make_rig(**{"import": BATCH}, watch={"settle_seconds": 0.1})
    baseline(rig, "users.csv", 100)
    # Canvas is slow to say who we are: the worker waits there, its check done, nothing sent.
    rig.sim.inject("delay", method="GET", path="users/self", delay=1.5)
    fid, handle = take(rig, "users.csv", users(100), handle=True)
    assert handle is not None
    drain = background(rig)
    wait_for(lambda: rig.sim.faults_served().get("delay") == 1, 10, what="the worker past its check")
    rewrite(handle, one)
    handle.close()
    drain.join(20)  # the worker has nothing left to do
    assert rig.record(fid).state == "held"
    events = rig.events(fid)
    assert events[:2] == [TAKEN, POSTING] and events[3:] == HELD
    assert events[2][:2] == ("posting", "queued") and (events[2][2] or "").startswith("not posted: its bytes changed after they were checked")
    assert rig.sim.imports() == [] and creates(rig, 1) == [0]  # a short body: never answered, nothing created
    held = rig.folders.held / rig.record(fid).stored_name
    assert held.read_bytes() == one
    side = json.loads(held.with_name(held.name + ".json").read_text())
    assert side["sha256"] == sha(one) and side["guard"]["counts"][0]["this_file"] == 1


def test_a_hidden_hard_link_cannot_reach_the_posted_file(make_rig, background) -> None:
    rig = make_rig(**{"import": BATCH})
    rig.sim.inject("delay", method="GET", path="users/self", delay=1.0)
    fid, _ = take(rig, "users.csv", users(100), link=".h")
    drain = background(rig)
    wait_for(lambda: rig.sim.faults_served().get("delay") == 1, 10, what="the worker past its check")
    with open(rig.folders.inbox / ".h", "r+b") as f:  # ln users.csv .h, then write through .h
        rewrite(f, users(1))
    drain.join(20)  # the worker has nothing left to do
    assert rig.record(fid).state == "done"
    [imp] = rig.sim.imports()
    path, side = rig.finished(fid)
    assert imp["sha256"] == sha(users(100)) == side["sha256"] and path.read_bytes() == users(100)
    assert (rig.folders.inbox / ".h").read_bytes() == users(1)  # the uploader's inode, no longer ours
    assert os.stat(path).st_nlink == 1 and os.stat(path).st_mode & 0o077 == 0
    assert not [p for p in rig.folders.processing.iterdir()]  # no private copy left behind


# -- checked while sent: the bytes sent are the bytes checked; the file must not move ------


def test_a_big_file_written_to_while_it_is_sent_is_cut_then_checked_again(make_rig, background) -> None:
    rig = make_rig(watch={"settle_seconds": 0.1})
    data = big_users()
    rig.sim.inject("delay", method="POST", path="sis_imports", delay=1.5)  # Canvas reads the body late
    fid, handle = take(rig, "users.csv", data, handle=True)
    assert handle is not None
    drain = background(rig)
    wait_for(lambda: rig.sim.faults_served().get("delay") == 1, 10, what="the upload under way")
    new = data.replace(b"u1,login1,", b"x1,login1,", 1)  # same size, one value changed, already sent
    os.pwrite(handle.fileno(), new[:64], 0)
    handle.close()
    drain.join(60)  # the worker has nothing left to do
    assert rig.record(fid).state == "done"
    assert rig.events(fid) == [
        TAKEN, POSTING, ("posting", "queued", "not posted: it was written to while it was being sent"),
        POSTING, POSTED, ("running", "finishing", "imported"), DONE,
    ]
    [imp] = rig.sim.imports()
    _, side = rig.finished(fid)
    assert imp["sha256"] == sha(new) == side["sha256"] and creates(rig, 2) == [0, 200]
    assert lists(rig) == 0  # the cut body was provably incomplete: no look in Canvas's list


def test_a_big_file_that_shrinks_while_its_post_times_out_is_checked_again_not_rejected(make_rig, background) -> None:
    """The request fails before its body is complete (Canvas reads nothing within the
    client's timeout) and the file was cut short meanwhile: what the check then finds
    (bytes missing) is about bytes that are gone, so the file is checked again, never
    sent to failed/ on that verdict."""
    rig = make_rig(watch={"settle_seconds": 0.1}, canvas={"timeout": 2})
    data = big_users()
    rig.sim.inject("delay", method="POST", path="sis_imports", delay=8.0)  # longer than the timeout
    fid, handle = take(rig, "users.csv", data, handle=True)
    assert handle is not None
    drain = background(rig)
    # The request stalls: Canvas reads nothing, the socket fills, the sender waits in send
    # until the timeout (NotSent); only then is the file cut short.
    port = urllib.parse.urlsplit(rig.sim.url).port
    wait_for(lambda: stalled(port), 10, what="the upload stalled in the socket")
    rewrite(handle, users(3))  # the uploader's handle: truncated, then three users
    handle.close()
    drain.join(60)  # the worker has nothing left to do
    assert rig.record(fid).state == "done", rig.events(fid)
    assert rig.events(fid) == [
        TAKEN, POSTING, ("posting", "queued", "not posted: it was written to while it was being sent"),
        POSTING, POSTED, ("running", "finishing", "imported"), DONE,
    ]
    [imp] = rig.sim.imports()
    assert imp["sha256"] == sha(users(3))


def test_a_big_file_with_a_hidden_hard_link_is_posted_from_a_private_copy(make_rig, background) -> None:
    rig = make_rig()
    data = big_users()
    rig.sim.inject("delay", method="POST", path="sis_imports", delay=1.0)
    fid, _ = take(rig, "users.csv", data, link=".h")
    drain = background(rig)
    wait_for(lambda: rig.sim.faults_served().get("delay") == 1, 10, what="the upload under way")
    with open(rig.folders.inbox / ".h", "r+b") as f:
        rewrite(f, users(1))
    drain.join(60)  # the worker has nothing left to do
    assert rig.record(fid).state == "done"
    assert rig.events(fid) == [TAKEN, POSTING, POSTED, ("running", "finishing", "imported"), DONE]
    [imp] = rig.sim.imports()
    path, side = rig.finished(fid)
    assert imp["sha256"] == sha(data) == side["sha256"] and path.read_bytes() == data


def test_a_big_file_that_fails_the_check_is_cut_and_never_imported(rig: Rig) -> None:
    data = big_users()
    bad = data[: BIG - 100] + b"\xff" + data[BIG - 99 :]  # invalid UTF-8 near the end
    fid = rig.drop("users.csv", bad)
    rig.drain()
    assert rig.events(fid) == [TAKEN, POSTING, ("posting", "finishing", "rejected"), ("finishing", "failed", "moved")]
    assert rig.sim.imports() == [] and creates(rig, 1) == [0]
    path, side = rig.finished(fid)
    assert side["problems"] == [str(p) for p in check_path(path, name="users.csv").problems]  # what validate says
    assert "Invalid UTF-8" in side["reason"] and side["sha256"] == sha(bad) and side["import_id"] is None


def test_a_big_file_is_cut_as_soon_as_the_check_fails(rig: Rig, client: CanvasClient, tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    data = big_users(BIG * 2)
    path.write_bytes(data.replace(b"u0,login0,", b"u0,\xff,", 1))  # invalid UTF-8 on line 2
    sent: list[int] = []
    with posting.Outgoing.open(path, name="users.csv", rules=posting.Rules.of(rig.cfg)) as out:
        assert out.report is None  # checked while sent
        with pytest.raises(posting.Rejected):
            client.create_import(out.source(), upload_name="sisdrop-0-users.csv", params={}, on_progress=sent.append)
        report = out.finish_check()  # the rest is checked locally, for the whole list of problems
    assert report is not None and report.problems == check_path(path, name="users.csv").problems
    assert max(sent, default=0) <= (posting.AHEAD + 1) * (1 << 20) < len(data) // 10  # cut at once
    assert rig.sim.imports() == [] and creates(rig, 1) == [0]


def test_a_big_file_posted_without_a_record_is_checked_but_neither_hashed_nor_counted(rig: Rig, client: CanvasClient, tmp_path: Path) -> None:
    """``source(record=False)``, submit's way: the same bytes reach Canvas, and the Report
    has no hash and no row count past the check's deep part (None, not a wrong number)."""
    path = tmp_path / "users.csv"
    data = big_users()
    path.write_bytes(data)
    with posting.Outgoing.open(path, name="users.csv", rules=posting.Rules.of(rig.cfg)) as out:
        assert out.report is None  # checked while sent
        client.create_import(out.source(record=False), upload_name="sisdrop-0-users.csv", params={"import_type": "instructure_csv"})
        report = out.finish_check()
    assert report is not None and report.ok and report.sha256 is None and report.counts == {}
    assert [(m.csv_type, m.size, m.rows) for m in report.members] == [("users", len(data), None)]
    [imp] = rig.sim.imports()
    assert imp["sha256"] == sha(data)


def test_a_big_file_posted_without_a_record_that_fails_is_cut_and_its_problem_placed(rig: Rig, client: CanvasClient, tmp_path: Path) -> None:
    """A stray quote far past the deep part, among CRLF line ends and quoted values over two
    lines: the uncounted check cuts the request, then reads the file again to say where."""
    rows = [b"user_id,login_id,status,note"]
    for i in range(300_000):  # about 9 MiB
        rows.append(b'u%d,login%d,active,"two\r\nlines"' % (i, i) if i % 50 == 0 else b"u%d,login%d,active,x" % (i, i))
    rows[250_001] = b'u250000,login250000,act"ive,x'
    data = b"\r\n".join(rows) + b"\r\n"
    fault = data.index(b'act"ive') + 3  # the quote
    line = data.count(b"\r\n", 0, fault) + 1  # counted here the plain way
    column = fault - data.rfind(b"\n", 0, fault)
    path = tmp_path / "users.csv"
    path.write_bytes(data)
    sent: list[int] = []
    with posting.Outgoing.open(path, name="users.csv", rules=posting.Rules.of(rig.cfg)) as out:
        assert out.report is None
        with pytest.raises(posting.Rejected):
            client.create_import(out.source(record=False), upload_name="sisdrop-0-users.csv", params={}, on_progress=sent.append)
        report = out.finish_check()
    assert report is not None and report.problems == check_path(path, name="users.csv").problems
    [problem] = report.problems
    assert problem.line == line > 250_000 and f"a quote inside an unquoted value (column {column})" in problem.message
    assert max(sent, default=0) < fault  # cut before the end
    assert rig.sim.imports() == [] and creates(rig, 1) == [0]


def test_the_change_guard_holds_a_big_file_before_its_last_bytes(make_rig) -> None:
    rig = make_rig(**{"import": BATCH})
    baseline(rig, "users.csv", 10_000_000)
    data = big_users()
    fid = rig.drop("users.csv", data)
    rig.drain()
    assert rig.events(fid) == [TAKEN, POSTING, ("posting", "moving", "change guard"), ("moving", "held", "change guard")]
    assert rig.sim.imports() == [] and creates(rig, 1) == [0]
    held = rig.folders.held / rig.record(fid).stored_name
    assert held.read_bytes() == data and rig.record(fid).sha256 == sha(data)
    # Released, the same bytes go: the operator accepted exactly these.
    assert operator.release(rig.cfg, rig.journal, rig.folders, "users.csv", who="the test").ok
    rig.drain()
    [imp] = rig.sim.imports()
    assert imp["sha256"] == sha(data) and rig.events(fid)[-1] == DONE


def test_stopping_during_a_big_upload_cuts_it_and_leaves_no_thread_behind(rig: Rig) -> None:
    rig.sim.inject("delay", method="POST", path="sis_imports", delay=1.0)
    fid = rig.drop("users.csv", big_users())
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(rig.worker.drain(30)), name="drain")
    t.start()
    wait_for(lambda: rig.sim.faults_served().get("delay") == 1, 10, what="the upload under way")
    rig.stop.set()  # SIGTERM: the upload is cut at its next block
    t.join(30)
    assert result == [False] and rig.record(fid).state == "posting"  # the next start looks in Canvas
    assert rig.sim.imports() == [] and creates(rig, 1) == [0]
    # (the autouse no_leaked_threads fixture fails the test if the reader or hash thread lives on)


# -- a released held file: posted only as accepted -----------------------------------------


@pytest.mark.parametrize("now", ["1 user", "10 other users"])
def test_a_released_file_rewritten_after_its_release_is_judged_again(make_rig, now: str) -> None:
    rig = make_rig(**{"import": BATCH})
    baseline(rig, "users.csv", 10)
    fid, handle = take(rig, "users.csv", users(6), handle=True)  # -40%: held
    assert handle is not None
    rig.drain()
    assert rig.events(fid) == [TAKEN, *HELD] and rig.record(fid).sha256 == sha(users(6))
    assert operator.release(rig.cfg, rig.journal, rig.folders, "users.csv", who="the test").ok
    new = users(1) if now == "1 user" else users(10, tag="v")
    rewrite(handle, new)  # what the operator accepted is not what is there now
    handle.close()
    rig.drain()
    if now == "1 user":  # judged again on the new bytes: held again, with its own counts and hash
        assert rig.events(fid) == [TAKEN, *HELD, *RELEASED, *HELD]
        assert rig.sim.imports() == [] and rig.record(fid).sha256 == sha(new)
        assert rig.record(fid).guard["counts"][0]["this_file"] == 1
    else:  # judged again, and within the limits: posted, and nothing else
        [imp] = rig.sim.imports()
        _, side = rig.finished(fid)
        assert imp["sha256"] == sha(new) == side["sha256"] and rig.events(fid)[-1] == DONE


# -- a request that fails before its body is complete -------------------------------------


def test_a_post_cut_off_before_its_body_was_complete_is_posted_again_without_a_look(rig: Rig) -> None:
    rig.sim.inject("drop", method="POST", path="sis_imports")  # Canvas hangs up after the headers
    data = big_users()
    fid = rig.drop("users.csv", data)
    rig.drain()
    assert rig.events(fid) == [
        TAKEN, POSTING, ("posting", "queued", "not posted: the request failed before its body was complete"),
        POSTING, POSTED, ("running", "finishing", "imported"), DONE,
    ]
    [imp] = rig.sim.imports()
    assert imp["sha256"] == sha(data) and lists(rig) == 0 and creates(rig, 2) == [0, 200]


# -- the pieces: Outgoing and the client -------------------------------------------------


@pytest.fixture
def client(rig: Rig) -> Iterator[CanvasClient]:
    c = client_for(rig.cfg, TOKEN)
    yield c
    c.close()


def test_bytes_changed_between_the_check_and_the_send_cut_the_request(rig: Rig, client: CanvasClient, tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    path.write_bytes(users(100))
    with posting.Outgoing.open(path, name="users.csv", rules=posting.Rules.of(rig.cfg)) as out, open(path, "r+b") as f:
        assert out.report is not None and out.report.ok and out.report.sha256 == sha(users(100))
        rewrite(f, users(100, tag="x"))  # same size, other bytes, between the check and the send
        with pytest.raises(posting.Changed):
            client.create_import(out.source(), upload_name="sisdrop-0-users.csv", params={"import_type": "instructure_csv"})
    assert rig.sim.imports() == [] and creates(rig, 1) == [0]


def test_a_file_with_another_link_is_copied_to_a_private_inode(tmp_path: Path) -> None:
    path, link = tmp_path / "users.csv", tmp_path / ".h"
    path.write_bytes(users(3))
    os.chmod(path, 0o664)
    os.link(path, link)
    before = os.stat(path)
    with posting.Outgoing.open(path, name="users.csv", rules=posting.Rules(), private=True) as out:
        assert out.copied and out.fd is not None and out.report is not None and out.report.ok
        after = os.stat(path)
        assert after.st_ino != before.st_ino and after.st_nlink == 1 and after.st_mode & 0o777 == 0o600
        assert os.fstat(out.fd).st_ino == after.st_ino and after.st_mtime_ns == before.st_mtime_ns
        assert os.stat(link).st_ino == before.st_ino and os.stat(link).st_nlink == 1
    assert path.read_bytes() == link.read_bytes() == users(3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".h", "users.csv"]
    # submit's file stays as it is: no copy where the file is not ours.
    with posting.Outgoing.open(link, name=".h.csv", rules=posting.Rules(extensions=("csv", "h")), private=False) as out:
        assert not out.copied


def test_a_link_is_refused_never_followed(tmp_path: Path) -> None:
    (tmp_path / "real.csv").write_bytes(users(3))
    (tmp_path / "users.csv").symlink_to(tmp_path / "real.csv")
    with posting.Outgoing.open(tmp_path / "users.csv", name="users.csv", rules=posting.Rules(), private=True) as out:
        assert out.fd is None and out.report is not None and not out.report.ok
        assert "symbolic link" in out.report.problems[0].message
