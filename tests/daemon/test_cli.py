"""The commands as a user types them: exit statuses, messages, no tracebacks, no token."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sisdropd.watcher import Watcher
from tests.support import TOKEN, USERS, Drop, Inbox, wait_for

ENROLL_BAD = "course_id,user_id,role,status\nC1,u1,student,active\nC1,u2,student,dropped\n"


def no_traceback(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert TOKEN not in r.stdout + r.stderr


def test_submit_imports_and_leaves_the_file(drop: Drop, tmp_path: Path) -> None:
    f = tmp_path / "users.csv"
    f.write_text(USERS)
    r = drop.cli("submit", str(f), "-c", str(drop.config))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "imported: import" in r.stdout and f.read_text() == USERS
    no_traceback(r)
    # the seed script's story, one line per event: posted, each state, the outcome
    assert "users.csv: posting" in r.stderr and "posted: import" in r.stderr and "state imported" in r.stderr


def test_submit_with_warnings_exits_0_and_json_prints_canvas_object(drop: Drop, tmp_path: Path) -> None:
    f = tmp_path / "enrollments.csv"
    f.write_text(ENROLL_BAD)
    r = drop.cli("submit", str(f), "-c", str(drop.config), "--json")
    assert r.returncode == 0 and '"workflow_state": "imported_with_messages"' in r.stdout
    no_traceback(r)


@pytest.mark.parametrize("state", ["failed", "failed_with_messages", "aborted"])
def test_submit_failed_states_exit_1(drop: Drop, tmp_path: Path, state: str) -> None:
    drop.sim.set_outcome("users", state)
    f = tmp_path / "users.csv"
    f.write_text(USERS)
    r = drop.cli("submit", str(f), "-c", str(drop.config))
    assert r.returncode == 1 and state in r.stdout
    no_traceback(r)


def test_submit_rejected_by_preflight_exits_1_and_posts_nothing(drop: Drop, tmp_path: Path) -> None:
    f = tmp_path / "grades.csv"
    f.write_text("student,grade\nu1,A\n")
    r = drop.cli("submit", str(f), "-c", str(drop.config))
    assert r.returncode == 1 and "Couldn't find Canvas CSV import headers" in r.stdout
    assert drop.sim.imports() == []


def test_submit_no_wait_prints_the_id(drop: Drop, tmp_path: Path) -> None:
    drop.sim.set_outcome("users", "imported", seconds=30)
    f = tmp_path / "users.csv"
    f.write_text(USERS)
    r = drop.cli("submit", str(f), "-c", str(drop.config), "--no-wait", timeout=20)
    assert r.returncode == 0 and f"posted: import {drop.sim.imports()[0]['id']}" in r.stdout


def test_submit_bad_token_exits_4(drop: Drop, tmp_path: Path) -> None:
    f = tmp_path / "users.csv"
    f.write_text(USERS)
    r = drop.cli("submit", str(f), "-c", str(drop.config), env=drop.env(SISDROPD_TOKEN="wrong-token-123"))
    assert r.returncode == 4 and "Invalid access token" in r.stdout
    assert "wrong-token-123" not in r.stdout + r.stderr
    no_traceback(r)


def test_submit_canvas_unreachable_exits_3(drop: Drop, tmp_path: Path) -> None:
    drop.write(canvas={"base_url": "http://127.0.0.1:9", "timeout": 1, "retry_initial": 0.1, "retry_max": 0.3})
    f = tmp_path / "users.csv"
    f.write_text(USERS)
    r = drop.cli("submit", str(f), "-c", str(drop.config), timeout=60)
    assert r.returncode == 3 and "unreachable" in r.stdout
    no_traceback(r)


def test_submit_gives_up_waiting_exits_3(drop: Drop, tmp_path: Path) -> None:
    drop.sim.set_outcome("users", "stuck")
    drop.write(watch={"max_wait": 1.5})
    f = tmp_path / "users.csv"
    f.write_text(USERS)
    r = drop.cli("submit", str(f), "-c", str(drop.config))
    assert r.returncode == 3 and "gave up waiting" in r.stdout and "created" in r.stdout


def test_config_problems_exit_2_naming_the_key(drop: Drop) -> None:
    drop.write(watch={"settle_seconds": "soon", "bogus": 1})
    for args in (["run"], ["submit", "x.csv"], ["status"], ["check"]):
        r = drop.cli(*args, "-c", str(drop.config))
        no_traceback(r)
        if args == ["check"]:
            assert r.returncode == 1 and "watch.settle_seconds" in r.stdout
        else:
            assert r.returncode == 2, (args, r.stderr)
            assert "watch.settle_seconds: expected a number" in r.stderr and "watch.bogus: unknown key" in r.stderr


def test_http_to_a_remote_host_is_refused(drop: Drop, tmp_path: Path) -> None:
    drop.write(canvas={"base_url": "http://canvas.example.edu"})
    r = drop.cli("submit", str(tmp_path / "x.csv"), "-c", str(drop.config))
    assert r.returncode == 2 and "http is accepted for loopback hosts only" in r.stderr
    no_traceback(r)


def test_missing_config_file_and_missing_token(drop: Drop, tmp_path: Path) -> None:
    r = drop.cli("run", "-c", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "no such config file" in r.stderr
    env = drop.env()
    del env["SISDROPD_TOKEN"]
    r = drop.cli("run", "-c", str(drop.config), env=env)
    assert r.returncode == 2 and "no Canvas token found" in r.stderr
    no_traceback(r)


def test_validate_prints_file_line_message(tmp_path: Path, drop: Drop) -> None:
    good, bad = tmp_path / "users.csv", tmp_path / "enroll.csv"
    good.write_text(USERS)
    bad.write_text("course_id,user_id,role,status\nC1,u1,student,active\nC1,u2\xff,student,active\n".encode("latin-1").decode("latin-1"), encoding="latin-1")
    r = drop.cli("validate", str(good))
    assert r.returncode == 0 and "ok (csv: users 2)" in r.stdout
    r = drop.cli("validate", str(good), str(bad))
    assert r.returncode == 1 and f"{bad}:3:" in r.stdout
    no_traceback(r)


def test_check_reports_ok_and_each_problem(drop: Drop) -> None:
    r = drop.cli("check", "-c", str(drop.config))
    assert r.returncode == 0, r.stdout
    assert "accepts the token" in r.stdout and "may list SIS imports" in r.stdout
    r = drop.cli("check", "-c", str(drop.config), env=drop.env(SISDROPD_TOKEN="nope-nope"))
    assert r.returncode == 1 and "problem: Canvas: HTTP 401" in r.stdout
    no_traceback(r)


def test_fake_canvas_command_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    p = subprocess.Popen(
        [sys.executable, "-m", "sisdropd", "fake-canvas", "--port", "0", "--token", "abc123"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        line = p.stdout.readline()
        assert "http://127.0.0.1:" in line
        url = line.split("http://", 1)[1].split()[0].rstrip(",")
        import requests

        r = requests.get(f"http://{url}/api/v1/users/self", headers={"Authorization": "Bearer abc123"}, timeout=5)
        assert r.status_code == 200 and r.json()["id"]
    finally:
        p.terminate()
        assert p.wait(10) == 0


def test_demo_shows_files_flowing_to_done_and_failed() -> None:
    r = subprocess.run([sys.executable, "-m", "sisdropd", "demo"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Outcomes" in r.stdout and "Where to look next" in r.stdout
    assert "users.csv          done" in r.stdout and "grades.csv         failed" in r.stdout
    assert "posted: import" in r.stderr
    # The folder is removed at the end: nothing suggests a look into it as if it were there.
    where = r.stdout.split("Where to look next", 1)[1]
    assert "sisdropd-demo-" not in where and "sisdropd demo --keep" in where, where


def test_rescan_catches_what_events_missed_and_restarts_a_dead_observer(tmp_path: Path) -> None:
    box = Inbox(tmp_path, extensions=["csv"])
    inbox, taken = box.path, box.taken
    w = Watcher(inbox, box.intake, settle_seconds=0.2, rescan_interval=0.5)
    w.start()
    try:
        (inbox / "a.csv").write_text(USERS)
        wait_for(lambda: taken() == ["a.csv"], 5, what="a.csv via events")
        w._observer.stop()  # the observer thread dies (as after an exception in a handler)
        w._observer.join(5)
        assert not w.alive()
        (inbox / "b.csv").write_text(USERS)  # no thread sees this event
        wait_for(lambda: taken() == ["a.csv", "b.csv"], 5, what="b.csv via the rescan")
        wait_for(w.alive, 5, what="observer restarted")
        (inbox / "c.csv").write_text(USERS)
        wait_for(lambda: "c.csv" in taken(), 5, what="c.csv via the new observer")
        assert w.rescans >= 1
    finally:
        w.stop()
        box.close()


def test_idle_watcher_sleeps(tmp_path: Path) -> None:
    """With nothing to settle the settler waits on an event: no busy loop (CPU stays near 0)."""
    box = Inbox(tmp_path, extensions=["csv"])
    w = Watcher(box.path, box.intake, settle_seconds=10, rescan_interval=60)
    w.start()
    try:
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(1.5)  # the measuring window, not a wait for something: CPU used while idle
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        used = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        assert used < 0.3, f"idle watcher used {used:.2f}s CPU in 1.5s"
    finally:
        w.stop()
        box.close()


def test_upload_memory_does_not_grow_with_file_size(drop: Drop, tmp_path: Path) -> None:
    """Peak RSS of `sisdropd submit` for a 16 MB and a 160 MB file: the difference is small."""
    drop.write(watch={"validate": False})  # measure the upload path itself
    drop.sim.set_outcome("big", "imported", seconds=0.1)
    peaks = []
    for mb in (16, 160):
        f = tmp_path / f"big{mb}.csv"
        row = b"u0000001,login0000001,First," + b"L" * 900 + b",active\n"  # long rows: fewer for the simulator to read
        block = USERS.encode() + row * ((1 << 20) // len(row))
        with open(f, "wb") as out:
            for _ in range(mb):
                out.write(block)
        code = (
            "import runpy, sys; sys.argv = ['sisdropd'] + sys.argv[1:];\n"
            "try:\n runpy.run_module('sisdropd', run_name='__main__')\n"
            "except SystemExit as e:\n code = e.code\n"
            # VmHWM, not ru_maxrss: a child forked from the test process inherits that
            # process's peak into ru_maxrss (as if it were its own); VmHWM is its own.
            "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]\n"
            "print('MAXRSS', hwm, file=sys.stderr); sys.exit(code)"
        )
        r = subprocess.run(
            [sys.executable, "-c", code, "submit", str(f), "-c", str(drop.config)],
            env=drop.env(), capture_output=True, text=True, timeout=120,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        peaks.append(int(r.stderr.rsplit("MAXRSS", 1)[1].split()[0]) / 1024)
        os.unlink(f)
    assert peaks[1] - peaks[0] < 20, f"peak RSS {peaks[0]:.0f} MB -> {peaks[1]:.0f} MB"
    assert peaks[1] < 100, peaks


def test_cli_usage_errors_exit_2() -> None:
    r = subprocess.run([sys.executable, "-m", "sisdropd", "frobnicate"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    r = subprocess.run([sys.executable, "-m", "sisdropd", "submit"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2


def test_sigint_from_a_terminal_also_exits_0(drop: Drop, daemon) -> None:
    import signal

    d = daemon()
    d.proc.send_signal(signal.SIGINT)
    assert d.proc.wait(10) == 0


