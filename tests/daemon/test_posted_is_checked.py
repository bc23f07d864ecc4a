"""Issue 12.1 against the real processes: what is posted is exactly what was checked.

An SFTP uploader owns the inode it uploaded and keeps a way to write to it once the daemon
has taken the file: a hidden hard link in inbox/, or an open handle. Here it rewrites the
file while the daemon (or ``sisdropd submit``) is posting it, Canvas being slow to read
the body (a ``delay`` fault), and the test looks at what reached the simulator.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from sisdropd.preflight import check_path
from tests.support import Drop, wait_for

BATCH = {"import_type": "instructure_csv", "batch_mode": True, "batch_mode_term_id": "sis_term_id:2026FA"}
BIG = 24 * 1024 * 1024  # checked while sent, and more than the socket buffers hold


def users(n: int, tag: str = "u") -> bytes:
    """A users CSV of ``n`` rows, unique ids. Built 50,000 rows at a time: millions of
    small objects at once would leave the test process large, and every process it
    forks after (a memory test measures one) would start as large."""
    head, t = [b"user_id,login_id,status\n"], tag.encode()
    chunks = [b"".join([b"%s%d,login%d,active\n" % (t, i, i) for i in range(lo, min(n, lo + 50_000))]) for lo in range(0, n, 50_000)]
    return b"".join(head + chunks)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def held(drop: Drop) -> list[Path]:
    d = drop.root / "sisdrop" / "held"
    return sorted(p for p in d.iterdir() if not p.name.endswith(".json") and not p.name.startswith(".")) if d.exists() else []


def test_rewritten_through_an_open_handle_while_posted_it_is_checked_again_and_held(drop: Drop, daemon) -> None:
    drop.write(**{"import": BATCH})
    d = daemon()
    (drop.inbox / "users.csv").write_bytes(users(100))
    wait_for(lambda: drop.outcomes("done"), 30, what="the first import")
    # Canvas reads nothing of the body for 5 s: the rewrite below must land while the upload
    # is held up (2 s was not always enough for this test's process on a loaded machine).
    drop.sim.inject("delay", method="POST", path="sis_imports", delay=5.0)
    big = users(BIG // 24)
    with open(drop.inbox / "users.csv", "wb") as f:  # the uploader's handle stays open
        f.write(big)
        f.flush()
        wait_for(lambda: drop.sim.faults_served().get("delay") == 1, 30, what="the upload under way")
        f.seek(0)
        f.truncate()
        f.write(users(1))  # a batch-mode import of 1 user would delete the other 99
    try:
        [h] = wait_for(lambda: held(drop), 30, what="held")
    except AssertionError:
        raise AssertionError(f"never held; the daemon's log ends:\n{d.log()[-6000:]}") from None
    assert h.read_bytes() == users(1) and len(drop.sim.imports()) == 1
    assert drop.sidecar(h)["sha256"] == sha(users(1))
    # The file is in held/ a moment before the daemon logs why: wait for the line.
    wait_for(lambda: "held by the change guard: users fell from 100 to 1 rows" in d.log(), 10, what="the hold's line")
    assert "the upload was cut before its last bytes, Canvas got nothing" in d.log()


def test_rewritten_through_a_hidden_hard_link_while_posted_the_checked_bytes_are_imported(drop: Drop, daemon) -> None:
    d = daemon()
    drop.sim.inject("delay", method="POST", path="sis_imports", delay=2.0)
    big = users(BIG // 24)
    part = drop.inbox / "users.csv.part"
    part.write_bytes(big)
    os.link(part, drop.inbox / ".h")  # ln users.csv .h, over SFTP
    part.rename(drop.inbox / "users.csv")
    wait_for(lambda: drop.sim.faults_served().get("delay") == 1, 30, what="the upload under way")
    with open(drop.inbox / ".h", "r+b") as f:
        f.truncate()
        f.write(users(1))
    [done] = wait_for(lambda: drop.outcomes("done"), 60, what="done")
    [imp] = drop.sim.imports()
    assert imp["sha256"] == sha(big) == drop.sidecar(done)["sha256"] and done.read_bytes() == big
    assert (drop.inbox / ".h").read_bytes() == users(1)  # the uploader's own inode
    assert "another hard link" in d.log()


def submit(drop: Drop, path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sisdropd", "submit", str(path), "-c", str(drop.config), "--no-wait"],
        env=drop.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )


def test_submit_checks_again_a_file_written_to_while_it_is_posted(drop: Drop, tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    data = users(BIG // 24)
    path.write_bytes(data)
    drop.sim.inject("delay", method="POST", path="sis_imports", delay=2.0)
    p = submit(drop, path)
    wait_for(lambda: drop.sim.faults_served().get("delay") == 1, 30, what="the upload under way")
    new = data.replace(b"u1,login1,", b"x1,login1,", 1)
    with open(path, "r+b") as f:
        f.write(new[:64])
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, out + err
    assert "users.csv changed while it was being posted" in out and "Canvas got nothing: checking it again" in out
    [imp] = drop.sim.imports()
    assert imp["sha256"] == sha(new)


def test_submit_of_a_big_file_that_fails_its_check_creates_nothing(drop: Drop, tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    data = users(BIG // 24)
    path.write_bytes(data[: BIG // 2] + b"\xff" + data[BIG // 2 + 1 :])
    p = submit(drop, path)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1, out + err
    # Where `validate` places it (line and column): submit counts no lines while it sends,
    # and reads the file again once the check has failed, to say where.
    [problem] = check_path(path).problems
    line = data.count(b"\n", 0, BIG // 2) + 1
    assert problem.line == line and "Invalid UTF-8 (byte 0xFF at column" in problem.message
    assert [x for x in out.splitlines() if x.startswith("rejected")] == [f"rejected: {problem}"]
    assert drop.sim.imports() == []
