"""Promises under faults: real SIGKILLs, real network faults from the simulator, real disks.

Every test ends by checking the invariants an operator relies on: each dropped file is in
done/ with its bytes intact (a fault may cost time, never the file: a recovery that gave
up and sent it to failed/ breaks the promise), nothing is left in inbox/ or processing/,
and the simulator's own record shows exactly one import per drop.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import socket
import subprocess
import zipfile
from pathlib import Path

import pytest

from sisdropd.crashpoint import POINTS
from tests.support import TOKEN, USERS, Drop, wait_for

ENROLL = "course_id,user_id,role,status\nC1,u1,student,active\n"


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def check_invariants(drop: Drop, dropped: dict[str, bytes]) -> None:
    """Each drop in done/ (and nowhere else), bytes intact; exactly one import of each."""
    # A file appears in done/ (hard link) just before it leaves processing/ (unlink).
    wait_for(lambda: not list(drop.processing.iterdir()), 10, what="processing/ empty")
    assert drop.outcomes("failed") == [], [drop.sidecar(p)["reason"] for p in drop.outcomes("failed")]
    finished = drop.outcomes("done")
    by_name: dict[str, list[Path]] = {}
    for p in finished:
        by_name.setdefault(drop.sidecar(p)["original_name"], []).append(p)
    assert sorted(by_name) == sorted(dropped), (sorted(by_name), sorted(dropped))
    for name, paths in by_name.items():
        assert len(paths) == 1, f"{name} is in {paths}"
        assert paths[0].read_bytes() == dropped[name], f"{name} bytes changed"
        assert drop.sidecar(paths[0])["sha256"] == sha(dropped[name])
    assert not [p for p in drop.inbox.iterdir() if not p.name.startswith(".")]
    assert not list(drop.processing.iterdir()), list(drop.processing.iterdir())
    per_drop: dict[str, int] = {}
    for imp in drop.sim.imports():
        per_drop[imp["sha256"]] = per_drop.get(imp["sha256"], 0) + 1
    assert per_drop == {sha(data): 1 for data in dropped.values()}, f"imports per drop: {per_drop}"


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("users.csv", USERS)
        z.writestr("enrollments.csv", ENROLL)
    return buf.getvalue()


# Every point with a CSV; a zip where the post must be found again by its members; a CSV
# big enough to be checked while it is sent, where the sidecar's hash is journaled late.
CRASHES = (
    [("csv", p) for p in POINTS] + [("zip", p) for p in ("before_post", "uploading", "posted")]
    + [("big csv", p) for p in ("uploading", "posted")]
)


@pytest.mark.parametrize(("kind", "point"), CRASHES)
def test_sigkill_at_each_crash_point_then_restart(drop: Drop, daemon, point: str, kind: str) -> None:
    name, data = ("users.csv", USERS.encode()) if kind != "zip" else ("term.zip", zip_bytes())
    if kind == "big csv":  # bigger than posting.PRECHECK_BYTES
        data = (USERS + "".join(f"u{i},l{i},F,L,active\n" for i in range(3, 400_000))).encode()
    if point == "uploading" and kind != "big csv":  # big enough that half of it is a real, separate write
        data = (USERS + "".join(f"u{i},l{i},F,L,active\n" for i in range(3, 60000))).encode()
        if kind == "zip":
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
                z.writestr("users.csv", data)
            data = buf.getvalue()
    d = daemon(env=drop.env(SISDROPD_CRASH_AT=point))
    (drop.inbox / name).write_bytes(data)
    assert d.proc.wait(30) == -signal.SIGKILL, d.log()
    d2 = daemon()
    wait_for(lambda: drop.finished(), timeout=30, what="finished after restart")
    check_invariants(drop, {name: data})  # in done/, bytes intact, imported exactly once
    if point == "posted":
        assert "following it, not posting again" in d2.log()
    assert d2.terminate() == 0


@pytest.mark.parametrize("fault", ["500", "502", "503", "429", "403_rate_limit", "drop", "delay"])
def test_transient_faults_cost_only_time(drop: Drop, daemon, fault: str) -> None:
    drop.write(canvas={"timeout": 2})
    # A throttled answer says the quota is empty: the client then waits for it to refill
    # (about 10 s at Canvas's 10 units a second), so one of those per method is enough here.
    count = 1 if fault == "403_rate_limit" else 2
    delay = 3.0 if fault == "delay" else 0.0
    drop.sim.inject(fault, method="GET", count=count, delay=delay)
    drop.sim.inject(fault, method="POST", count=1, delay=delay)
    d = daemon()
    data = USERS.encode()
    (drop.inbox / "users.csv").write_bytes(data)
    wait_for(lambda: drop.outcomes("done"), timeout=40, what="done despite faults")
    check_invariants(drop, {"users.csv": data})
    assert sum(drop.sim.faults_served().values()) >= 2
    assert "retrying" in d.log() or "checking its list" in d.log()


def test_rate_limit_retry_after_is_honoured(drop: Drop, daemon) -> None:
    drop.sim.inject("429", method="GET", count=1)
    d = daemon()
    (drop.inbox / "users.csv").write_text(USERS)
    wait_for(lambda: drop.outcomes("done"), timeout=30, what="done")
    assert "retrying GET" in d.log() and "in 1.0s: HTTP 429" in d.log()


def test_bad_token_keeps_the_file_until_the_token_works(drop: Drop, daemon, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("stale-token-0000")
    os.chmod(token_file, 0o600)
    drop.write(canvas={"token_file": str(token_file)})
    env = drop.env()
    del env["SISDROPD_TOKEN"]
    d = daemon(env=env)
    data = USERS.encode()
    (drop.inbox / "users.csv").write_bytes(data)
    wait_for(lambda: d.log().count("Canvas rejected the token") >= 2, timeout=20, what="401 logged twice")
    assert not drop.finished() and drop.sim.imports() == []
    assert len(list(drop.processing.iterdir())) == 1
    assert drop.status()["queued"][0]["last_error"].startswith("HTTP 401")
    token_file.write_text(TOKEN)  # the operator fixes the token
    wait_for(lambda: drop.outcomes("done"), timeout=30, what="done once the token works")
    check_invariants(drop, {"users.csv": data})
    assert "stale-token-0000" not in d.log() and TOKEN not in d.log()


def test_token_revoked_while_an_import_runs(drop: Drop, daemon, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    os.chmod(token_file, 0o600)
    drop.write(canvas={"token_file": str(token_file)})
    env = drop.env()
    del env["SISDROPD_TOKEN"]
    drop.sim.set_outcome("users", "imported", seconds=3)
    d = daemon(env=env)
    (drop.inbox / "users.csv").write_text(USERS)
    wait_for(lambda: "posted: import" in d.log(), what="posted")
    drop.sim.set_token("rotated-token-1111")
    wait_for(lambda: "Canvas rejected the token" in d.log(), timeout=20, what="401 while following")
    token_file.write_text("rotated-token-1111")
    wait_for(lambda: drop.outcomes("done"), timeout=30, what="done")
    assert len(drop.sim.imports()) == 1 and not drop.outcomes("failed")


def test_done_on_another_filesystem_copies_fsyncs_and_unlinks(drop: Drop, daemon, tmpfs) -> None:
    other = tmpfs("otherfs", "20m")
    drop.write(folders={"done": str(other / "done")})
    daemon()
    data = USERS.encode()
    (drop.inbox / "users.csv").write_bytes(data)
    wait_for(lambda: list((other / "done").glob("*users.csv")), timeout=20, what="done on the other fs")
    [f] = [p for p in (other / "done").iterdir() if p.name.endswith("users.csv")]
    assert f.read_bytes() == data and not list(drop.processing.iterdir())
    assert not [p for p in (other / "done").iterdir() if p.name.startswith(".")]


def test_disk_full_keeps_the_file_and_retries(drop: Drop, daemon, tmpfs) -> None:
    small = tmpfs("smallfs", "64k")
    drop.write(folders={"done": str(small / "done")})
    d = daemon()
    data = (USERS + "".join(f"u{i},l{i},F,L,active\n" for i in range(3, 8000))).encode()  # ~150 KB
    (drop.inbox / "users.csv").write_bytes(data)
    wait_for(lambda: "cannot move the file into done/" in d.log(), timeout=20, what="ENOSPC logged")
    assert len(list(drop.processing.iterdir())) == 1
    subprocess.run(["mount", "-o", "remount,size=4m", str(small)], check=True)
    wait_for(lambda: [p for p in (small / "done").iterdir() if p.name.endswith("users.csv")], timeout=30, what="done after space")
    [f] = [p for p in (small / "done").iterdir() if p.name.endswith("users.csv")]
    assert f.read_bytes() == data and len(drop.sim.imports()) == 1


def test_sighup_reopens_the_log_file(drop: Drop, daemon, tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "sisdropd.log"
    drop.write(log={"file": str(log_file)})
    d = daemon()
    wait_for(lambda: log_file.exists() and "watching" in log_file.read_text(), what="log file written")
    rotated = log_file.with_name("sisdropd.log.1")
    log_file.rename(rotated)  # what logrotate does
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: log_file.exists() and "log file reopened" in log_file.read_text(), timeout=15, what="reopened")
    (drop.inbox / "users.csv").write_text(USERS)
    wait_for(lambda: "users.csv" in log_file.read_text(), timeout=20, what="new lines in the new file")
    assert "users.csv" not in rotated.read_text()


def test_systemd_notify_protocol(drop: Drop, daemon, tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(sock_path))
    s.settimeout(10)
    try:
        d = daemon(env=drop.env(NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="1000000"))
        msgs: list[str] = []
        while not any("WATCHDOG=1" in m for m in msgs[1:]) or len([m for m in msgs if "WATCHDOG=1" in m]) < 2:
            msgs.append(s.recv(4096).decode())
        assert msgs[0].startswith("READY=1")
        (drop.inbox / "users.csv").write_text(USERS)
        wait_for(lambda: drop.outcomes("done"), what="done")
        assert d.terminate() == 0
        while not any(m.startswith("STOPPING=1") for m in msgs):
            msgs.append(s.recv(4096).decode())
        assert any(m.startswith("STATUS=") for m in msgs)
    finally:
        s.close()
    shutil.rmtree(tmp_path / "unused", ignore_errors=True)
