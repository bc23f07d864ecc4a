"""Guardrails: the change guard, the operator's commands, rules by file name, a stale feed."""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

from tests.support import Drop, holds, wait_for

BATCH = {"import_type": "instructure_csv", "batch_mode": True, "batch_mode_term_id": "sis_term_id:2026FA"}


def users(n: int) -> str:
    return "user_id,login_id,status\n" + "".join(f"u{i},login{i},active\n" for i in range(n))


def enrollments(n: int) -> str:
    return "course_id,user_id,role,status\n" + "".join(f"C1,u{i},student,active\n" for i in range(n))


def zipped(**files: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(f"{name}.csv", text)
    return buf.getvalue()


def held(drop: Drop) -> list[Path]:
    d = drop.root / "sisdrop" / "held"
    # Hidden names are the sidecar's temporary file while it is being written.
    return sorted(p for p in d.iterdir() if not p.name.endswith(".json") and not p.name.startswith(".")) if d.exists() else []


def test_a_file_that_drops_40_percent_of_users_is_held_released_then_imported(drop: Drop, daemon, tmp_path: Path) -> None:
    out = tmp_path / "alerts.jsonl"
    script = tmp_path / "alert.py"
    script.write_text("import sys\nopen(sys.argv[1], 'a').write(sys.stdin.read() + '\\n')\n")
    drop.write(**{"import": BATCH}, notify={"command": [sys.executable, str(script), str(out)], "events": ["held"]})
    d = daemon()
    (drop.inbox / "users_20261101.csv").write_text(users(10))
    wait_for(lambda: drop.outcomes("done"), what="first import")
    (drop.inbox / "users_20261102.csv").write_text(users(6))
    [h] = wait_for(lambda: held(drop), what="held")
    side = json.loads(h.with_name(h.name + ".json").read_text())
    assert side["reason"].startswith("held by the change guard: users fell from 10 to 6 rows (-40.0%, limit 10%)")
    assert side["guard"]["counts"] == [{"type": "users", "last_import": 10, "this_file": 6, "change_percent": -40.0}]
    assert len(drop.sim.imports()) == 1
    wait_for(lambda: "WARNING users_20261102.csv: held by the change guard" in d.log(), what="warning line")
    event = wait_for(lambda: out.exists() and json.loads(out.read_text().splitlines()[0]), what="held alert")
    assert event["event"] == "held" and event["file"] == "users_20261102.csv"
    assert drop.status()["held"][0]["original_name"] == "users_20261102.csv"
    r = drop.cli("release", "users_20261102.csv", "-c", str(drop.config))
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: len(drop.outcomes("done")) == 2, what="released file imported")
    assert len(drop.sim.imports()) == 2 and not held(drop)
    wait_for(lambda: "asked to release" in d.log(), what="the daemon logs who asked")
    assert drop.cli("release", "nope.csv", "-c", str(drop.config)).returncode == 1


def test_missing_type_is_held_and_discard_sends_it_to_failed(drop: Drop, daemon) -> None:
    drop.write(**{"import": {"import_type": "instructure_csv", "diffing_data_set_identifier": "nightly"}})
    daemon()
    (drop.inbox / "sis_1.zip").write_bytes(zipped(users=users(5), enrollments=enrollments(5)))
    wait_for(lambda: drop.outcomes("done"), what="first")
    (drop.inbox / "sis_2.zip").write_bytes(zipped(users=users(5)))
    [h] = wait_for(lambda: held(drop), what="held")
    assert "no enrollments rows (the last import had 5)" in json.loads(h.with_name(h.name + ".json").read_text())["reason"]
    r = drop.cli("discard", h.name, "-c", str(drop.config))
    assert r.returncode == 0
    [failed] = wait_for(lambda: drop.outcomes("failed"), what="discarded")
    assert drop.sidecar(failed)["reason"].startswith("discarded by operator")
    assert len(drop.sim.imports()) == 1


def test_pause_takes_nothing_until_resumed(drop: Drop, daemon) -> None:
    d = daemon()
    assert drop.cli("pause", "-c", str(drop.config)).returncode == 0
    wait_for(lambda: "paused: no new files are taken" in d.log(), what="daemon paused")
    (drop.inbox / "users.csv").write_text(users(3))
    # No event follows a file left alone, so a bounded wait shows it: four times
    # settle_seconds, while a running daemon takes a file once it has settled.
    holds(lambda: (drop.inbox / "users.csv").exists() and drop.sim.imports() == [], 2.0, what="left in the inbox")
    assert drop.status()["paused"] is True
    assert "PAUSED" in drop.cli("status", "-c", str(drop.config)).stdout
    assert drop.cli("resume", "-c", str(drop.config)).returncode == 0
    wait_for(lambda: drop.outcomes("done"), timeout=15, what="taken after resume")
    log = d.log()
    assert "asked to pause" in log and log.index("resumed: taking new files") < log.index("users.csv: taken")


def test_retry_puts_a_failed_file_back_and_keeps_its_old_sidecar(drop: Drop, daemon) -> None:
    drop.sim.set_outcome("users", "failed")
    daemon()
    (drop.inbox / "users.csv").write_text(users(3))
    [failed] = wait_for(lambda: drop.outcomes("failed"), what="failed")
    old_sidecar = failed.with_name(failed.name + ".json")
    before = old_sidecar.read_text()
    drop.sim.set_outcome("users", "imported")
    r = drop.cli("retry", "users.csv", "-c", str(drop.config))
    assert r.returncode == 0, r.stdout
    [done] = wait_for(lambda: drop.outcomes("done"), what="done on retry")
    assert done.read_text() == users(3) and old_sidecar.read_text() == before
    assert not drop.outcomes("failed")
    assert len(drop.sim.imports()) == 2


def test_abort_the_import_in_flight(drop: Drop, daemon) -> None:
    drop.sim.set_outcome("users", "imported", seconds=30)
    daemon()
    assert drop.cli("abort", "-c", str(drop.config)).returncode == 1  # nothing in flight
    (drop.inbox / "users.csv").write_text(users(3))
    wait_for(lambda: (drop.status()["in_flight"] or {}).get("import_id"), what="in flight")
    r = drop.cli("abort", "-c", str(drop.config))
    assert r.returncode == 0 and "aborted import" in r.stdout
    [failed] = wait_for(lambda: drop.outcomes("failed"), timeout=20, what="aborted")
    assert drop.sidecar(failed)["workflow_state"] == "aborted"


def test_bad_rule_is_refused_at_start(drop: Drop) -> None:
    with open(drop.config, "a") as f:
        f.write("\n[[rules]]\nmatch = 'x(.zip'\n")
    r = drop.cli("run", "-c", str(drop.config))
    assert r.returncode == 2 and "rules[0].match: not a regular expression" in r.stderr


def test_stale_feed_alert_once_then_arriving_again(drop: Drop, daemon, tmp_path: Path) -> None:
    out = tmp_path / "alerts.jsonl"
    script = tmp_path / "alert.py"
    script.write_text("import sys\nopen(sys.argv[1], 'a').write(sys.stdin.read() + '\\n')\n")
    drop.write(guard={"max_silence": 2}, notify={"command": [sys.executable, str(script), str(out)], "events": ["stale"]})
    d = daemon()
    wait_for(lambda: "no new file for" in d.log(), timeout=15, what="stale error")
    wait_for(lambda: out.exists() and out.read_text().strip(), what="stale alert")
    # Two later checks: each operator request makes the daemon log it, then check the
    # silence; once the second request is logged, the first request's check has run.
    for n in (1, 2):
        assert drop.cli("resume", "-c", str(drop.config)).returncode == 0
        wait_for(lambda n=n: d.log().count("asked to resume") == n, timeout=15, what=f"request {n} logged")
    assert d.log().count("no new file for") == 1 and len(out.read_text().splitlines()) == 1
    (drop.inbox / "users.csv").write_text(users(2))
    wait_for(lambda: "files are arriving again" in d.log(), timeout=15, what="recovered")
