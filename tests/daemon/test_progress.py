"""``sisdropd submit`` on a terminal (issue 14): one self-rewriting line shows the upload (bytes,
MB/s), then Canvas's state and progress; a pipe, ``--json`` and the log get none of it. Run on
a real pseudo-terminal against the simulator."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support import USERS, Drop, run_in_pty

ERASE = "\r\x1b[K"


def big_users(path: Path, rows: int = 20000) -> Path:
    row = "u1,l1,First," + "L" * 200 + ",active\n"
    path.write_text(USERS + row * rows)
    return path


def test_submit_on_a_terminal_rewrites_one_progress_line(drop: Drop, tmp_path: Path) -> None:
    drop.sim.set_outcome("users", "imported", seconds=1.5)  # long enough for a few status checks
    f = big_users(tmp_path / "users.csv")
    code, out = run_in_pty(["submit", str(f), "-c", str(drop.config)], drop.env())
    assert code == 0, out
    size = f.stat().st_size / 1e6
    # The upload, ending at 100% with its speed, then Canvas's states, each redrawn in place.
    assert re.search(rf"{ERASE}users\.csv: uploading {size:.1f} of {size:.1f} MB \(100%\), [\d.]+ MB/s", out), out
    states = re.findall(rf"{re.escape(ERASE)}users\.csv: import (\d+) (\w+), (\d+)%", out)
    assert {s for _, s, _ in states} >= {"importing", "imported"}, states
    assert any(0 < int(p) < 100 for _, s, p in states if s == "importing"), states
    # What stays on the screen of each line is what follows its last erase: the log lines
    # and the outcome, each whole, never behind progress text.
    seen = [line.rsplit(ERASE, 1)[-1] for line in out.split("\r\n") if line]
    assert seen[-1].startswith("imported: import "), seen
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ (INFO|DEBUG)", line) for line in seen[:-1]), seen


def test_a_pipe_json_and_the_log_get_no_progress(drop: Drop, tmp_path: Path) -> None:
    f = big_users(tmp_path / "users.csv")
    r = drop.cli("submit", str(f), "-c", str(drop.config))
    assert r.returncode == 0, r.stderr
    for text in (r.stdout, r.stderr):
        assert "\r" not in text and "\x1b" not in text and "uploading" not in text and "MB/s" not in text
    # --json on a terminal: the JSON alone on stdout, no progress line.
    code, out = run_in_pty(["submit", str(f), "--json", "-c", str(drop.config)], drop.env())
    assert code == 0 and "\x1b[K" not in out and "uploading" not in out, out
    # A log file under a terminal: no progress line in it either.
    log = tmp_path / "submit.log"
    drop.write(log={"file": str(log), "level": "DEBUG"})
    code, out = run_in_pty(["submit", str(f), "-c", str(drop.config)], drop.env())
    assert code == 0 and "uploading" in out
    text = log.read_text()
    assert "posting" in text and "uploading" not in text and "\x1b" not in text and "\r" not in text
