"""Undo and emergency stop (issue 14): ``sisdropd restore ID`` follows Canvas's restore job to its
end; ``sisdropd abort --all-pending`` pauses the daemon, lists the account's pending imports
(other integrations' too), asks, aborts them all and leaves the daemon paused. Against the
simulator, which serves restore_states, Progress and abort_all_pending as Canvas does."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support import TOKEN, USERS, Drop, holds, run_in_pty, wait_for


def submitted(drop: Drop, tmp_path: Path) -> int:
    f = tmp_path / "users.csv"
    f.write_text(USERS)
    r = drop.cli("submit", str(f), "-c", str(drop.config))
    assert r.returncode == 0, r.stdout + r.stderr
    return int(re.search(r"imported: import (\d+)", r.stdout).group(1))


def state_of(drop: Drop, import_id: int) -> str:
    return next(i["workflow_state"] for i in drop.sim.imports() if i["id"] == import_id)


def test_restore_follows_the_job_to_restored(drop: Drop, tmp_path: Path) -> None:
    iid = submitted(drop, tmp_path)
    r = drop.cli("restore", str(iid), "-c", str(drop.config))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"restored: import {iid}" in r.stdout and state_of(drop, iid) == "restored"
    assert "\r" not in r.stdout + r.stderr  # no progress line into a pipe
    other = submitted(drop, tmp_path)
    r2 = drop.cli("restore", str(other), "--undelete-only", "-c", str(drop.config))
    assert r2.returncode == 0 and f"partially_restored: import {other}" in r2.stdout, r2.stdout
    third = submitted(drop, tmp_path)  # --batch-mode reaches Canvas too: the undo is narrowed
    r3 = drop.cli("restore", str(third), "--batch-mode", "-c", str(drop.config))
    assert r3.returncode == 0 and f"partially_restored: import {third}" in r3.stdout, r3.stdout
    off = {"batch_mode": False, "undelete_only": False, "unconclude_only": False}
    assert drop.sim.restores() == [
        (iid, off), (other, {**off, "undelete_only": True}), (third, {**off, "batch_mode": True})
    ]
    assert all(TOKEN not in x.stdout + x.stderr for x in (r, r2, r3))


def test_restore_of_an_unknown_import_or_a_failed_job_exits_1(drop: Drop, tmp_path: Path) -> None:
    r = drop.cli("restore", "999999", "-c", str(drop.config))
    assert r.returncode == 1 and "import 999999: not found in account 1" in r.stdout
    iid = submitted(drop, tmp_path)
    drop.sim.fail_restores(True)
    r = drop.cli("restore", str(iid), "-c", str(drop.config))
    assert r.returncode == 1 and f"restore failed: import {iid}" in r.stdout, r.stdout
    r = drop.cli("restore", str(iid), "--undelete-only", "--unconclude-only", "-c", str(drop.config))
    assert r.returncode == 2 and "not allowed with" in r.stderr


def test_restore_on_a_terminal_shows_the_job_progress(drop: Drop, tmp_path: Path) -> None:
    iid = submitted(drop, tmp_path)
    code, out = run_in_pty(["restore", str(iid), "-c", str(drop.config)], drop.env())
    assert code == 0, out
    assert re.search(rf"\r\x1b\[Kimport {iid}: restore (queued|running), \d+%", out), out
    assert out.rstrip().endswith(f"restored: import {iid}")


def pending_setup(drop: Drop, daemon) -> tuple[object, int, int, int]:
    """Another integration's import runs; our daemon's file and a third user's import wait behind it."""
    running = drop.sim.hold_queue()
    d = daemon()
    (drop.inbox / "users.csv").write_text(USERS)
    ours = wait_for(lambda: (s := drop.status()["in_flight"]) and s["import_id"], what="our file posted")
    theirs = drop.sim.foreign_import(5.0, user_id=77)
    assert state_of(drop, ours) == "created" and state_of(drop, theirs) == "created"
    return d, running, ours, theirs


def test_abort_all_pending_pauses_lists_aborts_and_stays_paused(drop: Drop, daemon) -> None:
    d, running, ours, theirs = pending_setup(drop, daemon)
    # No terminal and no --yes: refused before anything is done.
    r = drop.cli("abort", "--all-pending", "-c", str(drop.config))
    assert r.returncode == 1 and "not confirmed" in r.stdout
    assert not (drop.state_dir / "paused").exists() and state_of(drop, ours) == "created"
    r = drop.cli("abort", "--all-pending", "--yes", "-c", str(drop.config))
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(rf"import {ours}  created .* by .*this token's user", r.stdout), r.stdout
    assert re.search(rf"import {theirs}  created .* \(user 77\)", r.stdout), r.stdout
    assert f"import {running} " not in r.stdout  # running, not pending: untouched
    assert state_of(drop, ours) == state_of(drop, theirs) == "aborted"
    assert state_of(drop, running) == "importing"
    assert (drop.state_dir / "paused").exists() and drop.status()["paused"] is True
    wait_for(lambda: drop.outcomes("failed"), what="our aborted file in failed/")
    assert drop.sidecar(drop.outcomes("failed")[0])["workflow_state"] == "aborted"
    wait_for(lambda: "asked to pause" in d.log() and "asked to abort --all-pending" in d.log(), what="requests logged")
    # Still paused: a new file waits in the inbox (settle_seconds is 0.5: 3 s would have taken it).
    (drop.inbox / "later.csv").write_text(USERS)
    holds(lambda: (drop.inbox / "later.csv").exists(), 3.0, what="later.csv left in the inbox")
    drop.sim.release()
    assert TOKEN not in r.stdout + r.stderr


def test_abort_all_pending_asks_on_a_terminal(drop: Drop, daemon) -> None:
    _, _, ours, theirs = pending_setup(drop, daemon)
    args = ["abort", "--all-pending", "-c", str(drop.config)]
    code, out = run_in_pty(args, drop.env(), answer="no", prompt="Type yes")
    assert code == 1 and "not confirmed: nothing aborted" in out, out
    assert not (drop.state_dir / "paused").exists()  # put back as it was
    assert state_of(drop, ours) == state_of(drop, theirs) == "created"
    code, out = run_in_pty(args, drop.env(), answer="yes", prompt="Type yes")
    assert code == 0 and "aborted: every pending import" in out, out
    assert state_of(drop, ours) == state_of(drop, theirs) == "aborted"
    assert (drop.state_dir / "paused").exists()
    drop.sim.release()


def test_abort_all_pending_with_canvas_unreachable_says_the_daemon_stays_paused(drop: Drop) -> None:
    drop.write(canvas={"base_url": "http://127.0.0.1:9", "timeout": 1, "retry_initial": 0.1, "retry_max": 0.3})
    r = drop.cli("abort", "--all-pending", "--yes", "-c", str(drop.config))
    assert r.returncode == 3, r.stdout + r.stderr  # Canvas unreachable, as for submit and restore
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("cannot ask Canvas: ") and "nothing aborted" in last, r.stdout
    assert "the daemon stays paused" in last and "sisdropd resume" in last, last
    assert (drop.state_dir / "paused").exists()
