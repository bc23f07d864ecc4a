"""What operators get: JSON logs, journald-friendly lines, alerts and a Prometheus textfile."""

from __future__ import annotations

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.support import TOKEN, USERS, Drop, wait_for

RECORDER = """\
import json, os, sys
doc = json.load(sys.stdin)
doc["_env"] = {k: v for k, v in os.environ.items() if k.startswith("SISDROPD_")}
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(doc) + "\\n")
"""


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_json_log_lines_carry_file_import_id_and_level(drop: Drop, daemon) -> None:
    drop.write(log={"format": "json", "level": "INFO"})
    d = daemon()
    (drop.inbox / "users.csv").write_text(USERS)
    wait_for(lambda: drop.outcomes("done"), what="done")
    wait_for(lambda: "-> done/" in d.log(), what="outcome logged")
    lines = [json.loads(line) for line in d.log().splitlines() if line.strip()]
    assert all({"time", "level", "message"} <= line.keys() for line in lines)
    posted = [line for line in lines if line["message"].startswith("posted: import")]
    assert posted and posted[0]["file"] == "users.csv" and isinstance(posted[0]["import_id"], int)
    outcome = [line for line in lines if "-> done/" in line["message"]]
    assert outcome[0]["level"] == "SUCCESS" and outcome[0]["import_id"] == posted[0]["import_id"]


def test_under_journald_lines_have_priority_and_no_timestamp(drop: Drop, daemon) -> None:
    # journald hands the service a stream and names it in $JOURNAL_STREAM (device:inode).
    log_path = drop.root / "journal-stream.log"
    log_path.touch()
    st = os.stat(log_path)
    from tests.support import DaemonProcess

    class JournaldDaemon(DaemonProcess):
        def __init__(self, drop: Drop) -> None:
            self.log_path = log_path
            import subprocess

            self._log = open(log_path, "w")  # noqa: SIM115
            self.drop = drop
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sisdropd", "run", "-c", str(drop.config)],
                env=drop.env(JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}"), stdout=self._log, stderr=subprocess.STDOUT,
            )
            wait_for(lambda: "watching" in self.log(), 20, what="start")

    d = JournaldDaemon(drop)
    try:
        (drop.inbox / "grades.csv").write_text("student,grade\nu1,A\n")
        wait_for(lambda: drop.outcomes("failed"), what="rejected")
        wait_for(lambda: "-> failed/" in d.log(), what="outcome logged")
        lines = d.log().splitlines()
        assert lines[0].startswith("<6>INFO") and "sisdropd" in lines[0]
        assert any(line.startswith("<3>ERROR   grades.csv: not imported") for line in lines), lines
    finally:
        d.close()


def test_failed_outcome_runs_the_notify_command(drop: Drop, daemon, tmp_path: Path) -> None:
    script, out = tmp_path / "alert.py", tmp_path / "alerts.jsonl"
    script.write_text(RECORDER)
    drop.write(notify={"command": [sys.executable, str(script), str(out)], "events": ["failed", "done", "warnings"]})
    daemon()
    (drop.inbox / "grades.csv").write_text("student,grade\nu1,A\n")
    (drop.inbox / "enrollments.csv").write_text("course_id,user_id,role,status\nC1,u1,student,active\nC1,u2,student,dropped\n")
    got = wait_for(lambda: len(events(out)) >= 3 and events(out), timeout=30, what="three events")
    by = {(e["event"], e["file"]) for e in got}
    assert {("failed", "grades.csv"), ("done", "enrollments.csv"), ("warnings", "enrollments.csv")} <= by
    failed = next(e for e in got if e["event"] == "failed")
    assert failed["reason"].startswith("rejected by the pre-flight check") and failed["import_id"] is None
    assert failed["_env"]["SISDROPD_EVENT"] == "failed" and failed["_env"]["SISDROPD_FILE"] == "grades.csv"
    assert Path(failed["sidecar"]).exists()
    done = next(e for e in got if e["event"] == "done")
    assert done["_env"]["SISDROPD_IMPORT_ID"] == str(done["import_id"]) and done["_env"]["SISDROPD_STATE"] == "imported_with_messages"
    assert TOKEN not in out.read_text() and "SISDROPD_TOKEN" not in out.read_text()


def test_failing_notifier_never_blocks_imports(drop: Drop, daemon) -> None:
    drop.write(notify={"command": ["/nonexistent/alert"], "events": ["failed", "done"]})
    d = daemon()
    (drop.inbox / "a.csv").write_text(USERS)
    (drop.inbox / "bad.csv").write_text("x,y\n1,2\n")
    wait_for(lambda: len(drop.finished()) == 2, timeout=30, what="both finished")
    wait_for(lambda: "could not notify" in d.log(), what="notifier failure logged")


def test_webhook_and_stuck_event(drop: Drop, daemon) -> None:
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        drop.sim.set_outcome("users", "imported", seconds=8)
        drop.write(notify={"webhook": f"http://127.0.0.1:{srv.server_port}/hook", "events": ["stuck", "done"], "stuck_after": 1})
        d = daemon()
        (drop.inbox / "users.csv").write_text(USERS)
        wait_for(lambda: any(e["event"] == "stuck" for e in received), timeout=20, what="stuck event")
        stuck = next(e for e in received if e["event"] == "stuck")
        assert stuck["file"] == "users.csv" and stuck["import_id"] and stuck["running_seconds"] >= 1
        assert "import still" in d.log()
        wait_for(lambda: any(e["event"] == "done" for e in received), timeout=30, what="done event")
        assert sum(e["event"] == "stuck" for e in received) == 1
    finally:
        srv.shutdown()


def parse_prom(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    return samples


def test_metrics_textfile(drop: Drop, daemon, tmp_path: Path) -> None:
    prom = tmp_path / "textfile" / "sisdropd.prom"
    prom.parent.mkdir()
    drop.write(metrics={"textfile": str(prom)})
    drop.sim.inject("500", method="GET", path="sis_imports/", count=1)
    d = daemon()
    (drop.inbox / "users.csv").write_text(USERS)
    (drop.inbox / "bad.csv").write_text("x,y\n1,2\n")
    wait_for(lambda: len(drop.finished()) == 2, timeout=30, what="finished")
    m = wait_for(lambda: prom.exists() and (s := parse_prom(prom.read_text())).get('sisdropd_files_total{outcome="done"}') == 1 and s, timeout=15, what="metrics")
    assert m['sisdropd_files_total{outcome="failed"}'] == 1
    assert m['sisdropd_imports_total{state="imported"}'] == 1
    assert m["sisdropd_queue_length"] == 0 and m["sisdropd_up"] == 1
    assert m["sisdropd_last_success_timestamp_seconds"] > 1.7e9
    assert m['sisdropd_retries_total{cause="network"}'] >= 1
    assert d.terminate() == 0
    assert parse_prom(prom.read_text())["sisdropd_up"] == 0
    # counters come from the journal: a restart keeps them
    daemon()
    wait_for(lambda: parse_prom(prom.read_text())["sisdropd_up"] == 1, timeout=15, what="up again")
    assert parse_prom(prom.read_text())['sisdropd_files_total{outcome="done"}'] == 1
