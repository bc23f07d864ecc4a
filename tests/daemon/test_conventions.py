"""Host conventions (issue 14): JSON logs keep journald's priority prefix; alert commands do not
inherit systemd's notify socket or watchdog; a command that writes state refuses a user other
than the state folder's owner (with the ``sudo -u`` line), while reading works for anyone who can."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

from tests.support import TOKEN, USERS, DaemonProcess, Drop, wait_for

ENV_DUMP = """\
import json, os, sys
json.load(sys.stdin)
with open(sys.argv[1], "w") as f:
    json.dump(sorted(os.environ), f)
"""


def test_json_logs_under_journald_keep_the_priority_prefix(drop: Drop, tmp_path: Path) -> None:
    drop.write(log={"format": "json", "level": "INFO"})
    stream = tmp_path / "journal-stream.log"
    stream.touch()
    st = os.stat(stream)

    class UnderJournald(DaemonProcess):
        def __init__(self) -> None:
            self.drop, self.log_path = drop, stream
            self._log = open(stream, "w")  # noqa: SIM115
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sisdropd", "run", "-c", str(drop.config)],
                env=drop.env(JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}"), stdout=self._log, stderr=subprocess.STDOUT,
            )

    d = UnderJournald()
    try:
        (drop.inbox / "grades.csv").write_text("student,grade\nu1,A\n")
        wait_for(lambda: "-> failed/" in d.log(), what="the rejection logged")
        lines = d.log().splitlines()
        for line in lines:
            prefix, _, doc = line.partition(">")
            entry = json.loads(doc)  # after "<N>", the JSON object whole
            assert prefix == "<" + {"INFO": "6", "WARNING": "4", "ERROR": "3", "SUCCESS": "5"}[entry["level"]], line
        assert any(line.startswith("<3>{") and "not imported" in line for line in lines), lines
    finally:
        d.close()


def test_alert_commands_do_not_inherit_the_notify_socket_or_watchdog(drop: Drop, tmp_path: Path) -> None:
    script, out = tmp_path / "env.py", tmp_path / "env.json"
    script.write_text(ENV_DUMP)
    drop.write(notify={"command": [sys.executable, str(script), str(out)], "events": ["failed"]})
    env = drop.env(NOTIFY_SOCKET=str(tmp_path / "no-such-socket"), WATCHDOG_USEC="60000000", WATCHDOG_PID=str(os.getpid()))
    d = DaemonProcess(drop, env=env)
    try:
        (drop.inbox / "grades.csv").write_text("student,grade\nu1,A\n")
        names = wait_for(lambda: out.exists() and out.stat().st_size and json.loads(out.read_text()), what="the alert ran")
        assert "SISDROPD_EVENT" in names  # it did run with the event's environment
        assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "SISDROPD_TOKEN"} & set(names), names
    finally:
        d.close()


def owned_by_nobody(drop: Drop, tmp_path: Path) -> list[tuple[Path, int]]:
    """A state folder made by a daemon that ran as nobody (chowned here: we run as root)."""
    assert os.geteuid() == 0, "these tests run as root, as the issue's admin does"
    (drop.inbox / "users.csv").write_text(USERS)
    d = DaemonProcess(drop)
    wait_for(lambda: drop.outcomes("done"), what="a file done")
    assert d.terminate() == 0
    d.close()
    (drop.root / "sisdrop" / "failed").mkdir(exist_ok=True)
    subprocess.run(["chown", "-R", "nobody", str(drop.root / "sisdrop")], check=True)
    return [(p, p.stat().st_uid) for p in sorted((drop.root / "sisdrop").rglob("*"))]


def test_state_writing_commands_refuse_another_user(drop: Drop, tmp_path: Path) -> None:
    before = owned_by_nobody(drop, tmp_path)
    for args in (["pause"], ["resume"], ["retry", "users.csv"], ["release", "x.csv"], ["discard", "x.csv"], ["abort"]):
        r = drop.cli(*args, "-c", str(drop.config))
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert f"sudo -u nobody sisdropd {' '.join(args)} -c {drop.config}" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and TOKEN not in r.stderr
    r = drop.cli("abort", "--all-pending", "--yes", "-c", str(drop.config))
    assert r.returncode == 2 and "sudo -u nobody sisdropd abort --all-pending --yes" in r.stderr
    # Nothing was written: the same entries, every one still nobody's, no pause flag.
    assert [(p, p.stat().st_uid) for p in sorted((drop.root / "sisdrop").rglob("*"))] == before
    assert not (drop.state_dir / "paused").exists()


def test_reading_commands_work_for_another_user(drop: Drop, tmp_path: Path) -> None:
    owned_by_nobody(drop, tmp_path)
    r = drop.cli("status", "-c", str(drop.config))
    assert r.returncode == 0 and "users.csv" in r.stdout, r.stdout + r.stderr
    r = drop.cli("status", "--json", "-c", str(drop.config))
    assert r.returncode == 0 and json.loads(r.stdout)["recent"][0]["state"] == "done"
    # Reading left nothing of root's behind.
    assert {p.stat().st_uid for p in (drop.root / "sisdrop").rglob("*")} == {pwd.getpwnam("nobody").pw_uid}
