"""The daemon end to end: a real ``sisdropd run`` process, real files, the simulator over HTTP."""

from __future__ import annotations

import hashlib
import os
import threading
import time

from tests.support import TOKEN, USERS, Drop, wait_for, write_slowly

ENROLL_BAD = "course_id,user_id,role,status\nC1,u1,student,active\nC1,u2,student,dropped\n"
SIDECAR_KEYS = {"original_name", "size", "sha256", "import_id", "workflow_state", "reason", "taken_at", "finished_at", "sis_import"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_users_csv_flows_to_done_with_sidecar_and_one_line_per_step(drop: Drop, daemon) -> None:
    d = daemon()
    data = USERS.encode()
    (drop.inbox / "users.csv").write_bytes(data)
    [done] = wait_for(lambda: drop.outcomes("done"), what="users.csv in done/")
    assert done.name.endswith("-users.csv") and done.read_bytes() == data
    side = drop.sidecar(done)
    assert SIDECAR_KEYS <= side.keys()
    assert side["original_name"] == "users.csv" and side["size"] == len(data) and side["sha256"] == sha(data)
    assert side["workflow_state"] == "imported" and side["sis_import"]["workflow_state"] == "imported"
    assert side["sis_import"]["data"]["counts"]["users"] == 2
    assert side["taken_at"].endswith("Z") and side["finished_at"].endswith("Z")
    [imp] = drop.sim.imports()
    assert imp["id"] == side["import_id"] and imp["sha256"] == sha(data)
    assert not list(drop.inbox.iterdir()) and not list(drop.processing.iterdir())
    wait_for(lambda: "-> done/" in d.log(), what="the outcome line")
    log = d.log()
    iid = side["import_id"]
    for needle in ("users.csv: taken", f"users.csv #{iid}: posted: import {iid}", f"users.csv #{iid}: state imported", f"users.csv #{iid}: imported in"):
        assert needle in log, needle
    assert d.terminate() == 0


def test_only_eligible_entries_are_taken_others_left_untouched(drop: Drop, daemon) -> None:
    daemon()
    leave = [".hidden.csv", "users.csv.part", "users.csv.filepart", "x.tmp", "y.partial", "z.csv~", "notes.txt", "report.xlsx"]
    for name in leave:
        (drop.inbox / name).write_text(USERS)
    (drop.inbox / "folder.csv").mkdir()
    (drop.inbox / "sub").mkdir()
    (drop.inbox / "sub" / "inner.csv").write_text(USERS)
    (drop.inbox / "users.csv").write_text(USERS)
    # users.csv was written last: every other entry settled before it did, so any of them
    # the watcher took would have been taken, oldest first, no later than users.csv.
    wait_for(lambda: drop.outcomes("done"), what="users.csv done")
    assert sorted(p.name for p in drop.inbox.iterdir()) == sorted([*leave, "folder.csv", "sub"])
    assert (drop.inbox / "sub" / "inner.csv").read_text() == USERS
    assert len(drop.sim.imports()) == 1


def test_slow_writer_is_taken_once_whole(drop: Drop, daemon) -> None:
    drop.write(watch={"settle_seconds": 1.0})
    daemon()
    data = (USERS + "".join(f"u{i},login{i},F,L,active\n" for i in range(3, 3000))).encode()
    write_slowly(drop.inbox / "users.csv", data, pieces=8, seconds=3.0)  # pauses shorter than settle
    [done] = wait_for(lambda: drop.outcomes("done"), what="done")
    assert done.read_bytes() == data
    [imp] = drop.sim.imports()
    assert imp["sha256"] == sha(data) and imp["size"] == len(data)


def test_write_then_rename_is_taken_once(drop: Drop, daemon) -> None:
    daemon()
    data = USERS.encode()
    write_slowly(drop.inbox / "users.csv.filepart", data, pieces=4, seconds=1.0)
    os.rename(drop.inbox / "users.csv.filepart", drop.inbox / "users.csv")
    wait_for(lambda: drop.outcomes("done"), what="done")
    # A later file, imported after it: by then the watcher has handled every event of the
    # upload and the rename, and users.csv was still posted once.
    (drop.inbox / "zz.csv").write_text(USERS + "u3,c,C,C,active\n")
    wait_for(lambda: len(drop.outcomes("done")) == 2, what="the later file done")
    assert sorted(i["sha256"] for i in drop.sim.imports()) == sorted([sha(data), sha((USERS + "u3,c,C,C,active\n").encode())])


def test_files_present_at_start_are_taken_in_mtime_order_one_at_a_time(drop: Drop, daemon) -> None:
    names = ["c.csv", "a.csv", "b.csv", "d.csv"]
    mtimes = [1000, 3000, 2000, 2000]  # b and d tie: by name
    for name, mt in zip(names, mtimes, strict=True):
        p = drop.inbox / name
        p.write_text(USERS)
        os.utime(p, (mt, mt))
    drop.sim.set_outcome(".*", "imported", seconds=0.4)
    daemon()
    wait_for(lambda: len(drop.outcomes("done")) == 4, what="all four done")
    imports = drop.sim.imports()
    order = [drop.sidecar(p)["original_name"] for p in sorted(drop.outcomes("done"), key=lambda p: drop.sidecar(p)["import_id"])]
    assert order == ["c.csv", "b.csv", "d.csv", "a.csv"]
    # each import reached its final state before the next one was posted
    import requests

    objs = [requests.get(f"{drop.sim.url}/api/v1/accounts/1/sis_imports/{i['id']}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).json() for i in imports]
    for prev, nxt in zip(objs, objs[1:], strict=False):
        assert prev["ended_at"] and prev["ended_at"] <= nxt["created_at"], (prev, nxt)


def test_polling_mode_sees_files(drop: Drop, daemon) -> None:
    drop.write(watch={"polling": True, "settle_seconds": 0.5})
    d = daemon()
    assert "polling" in d.log()
    (drop.inbox / "users.csv").write_text(USERS)
    wait_for(lambda: drop.outcomes("done"), what="done via polling")


def test_restart_resumes_following_instead_of_posting_again(drop: Drop, daemon) -> None:
    drop.sim.set_outcome("users", "imported", seconds=4.0)
    d = daemon()
    (drop.inbox / "users.csv").write_text(USERS)
    wait_for(lambda: "posted: import" in d.log(), what="posted")
    d.kill()  # SIGKILL while the import runs
    d2 = daemon()
    wait_for(lambda: drop.outcomes("done"), timeout=30, what="done after restart")
    assert len(drop.sim.imports()) == 1
    assert "resuming" in d2.log()
    assert not list(drop.processing.iterdir())


def test_sigterm_stops_within_10s_with_exit_0(drop: Drop, daemon) -> None:
    drop.sim.set_outcome("users", "imported", seconds=30)
    d = daemon()
    (drop.inbox / "users.csv").write_text(USERS)
    wait_for(lambda: "posted: import" in d.log(), what="posted")
    t0 = time.monotonic()
    assert d.terminate(timeout=10) == 0
    assert time.monotonic() - t0 < 10
    st = drop.status()
    assert st["in_flight"]["state"] == "running" and st["in_flight"]["import_id"] == drop.sim.imports()[0]["id"]


def test_status_shows_queue_in_flight_and_outcomes(drop: Drop, daemon) -> None:
    drop.sim.set_outcome("slow", "imported", seconds=5)
    daemon()
    (drop.inbox / "a-slow.csv").write_text(USERS)
    wait_for(lambda: (drop.status()["in_flight"] or {}).get("import_id"), what="in flight")
    (drop.inbox / "b.csv").write_text(USERS)
    st = wait_for(lambda: (s := drop.status())["queued"] and s, what="queued")
    assert st["queued"][0]["original_name"] == "b.csv"
    assert st["in_flight"]["original_name"] == "a-slow.csv" and st["in_flight"]["workflow_state"] in ("created", "importing")
    wait_for(lambda: len(drop.status()["recent"]) == 2, timeout=30, what="both done")
    text = drop.cli("status", "-c", str(drop.config))
    assert text.returncode == 0 and "a-slow.csv" in text.stdout and "b.csv" in text.stdout
    [iid] = [r["import_id"] for r in drop.status()["recent"] if r["original_name"] == "b.csv"]
    one = drop.cli("status", str(iid), "-c", str(drop.config))
    assert one.returncode == 0 and f"import {iid}: imported" in one.stdout
    assert drop.cli("status", "999999", "-c", str(drop.config)).returncode == 1
    assert TOKEN not in text.stdout + one.stdout


def test_two_daemons_on_one_folder_are_refused(drop: Drop, daemon) -> None:
    daemon()
    r = drop.cli("run", "-c", str(drop.config), timeout=20)
    assert r.returncode == 1 and "already running" in r.stderr and "Traceback" not in r.stderr


def test_many_files_in_quick_succession(drop: Drop, daemon) -> None:
    daemon()

    def writer() -> None:
        for i in range(12):
            (drop.inbox / f"users{i:02d}.csv").write_text(USERS + f"x{i},l{i},F,L,active\n")

    t = threading.Thread(target=writer)
    t.start()
    t.join()
    wait_for(lambda: len(drop.outcomes("done")) == 12, timeout=60, what="12 done")
    assert len(drop.sim.imports()) == 12
    assert len({i["sha256"] for i in drop.sim.imports()}) == 12


def test_marker_handshake(drop: Drop, daemon) -> None:
    drop.write(watch={"marker": ".ok"})
    daemon()
    (drop.inbox / "users.csv").write_text(USERS)
    # A later file with its marker: it settles after users.csv, so once it is done, users.csv
    # has been settled and passed over for want of its marker.
    (drop.inbox / "other.csv").write_text(USERS + "u3,c,C,C,active\n")
    (drop.inbox / "other.csv.ok").write_bytes(b"")
    wait_for(lambda: drop.outcomes("done"), what="the later file with its marker")
    assert (drop.inbox / "users.csv").exists() and len(drop.sim.imports()) == 1
    (drop.inbox / "users.csv.ok").write_bytes(b"")
    wait_for(lambda: len(drop.outcomes("done")) == 2, what="taken after the marker")
    assert [drop.sidecar(p)["original_name"] for p in drop.outcomes("done") if p.read_text() == USERS] == ["users.csv"]
    wait_for(lambda: not (drop.inbox / "users.csv.ok").exists(), what="marker removed")
