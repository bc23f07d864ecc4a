"""The operator's commands as real processes, with and without a running daemon (issue 11,
points 2, 4, 6 and 7; issue 12, points 4 and 5).

- release, discard and retry move the file and its record together whether the daemon
  runs or not; a command killed half-way (SIGKILL at its named crash points) is finished
  at the daemon's next start, never closed as lost;
- two commands racing (with the daemon running) never both move one file;
- a file whose lost post waits for a look-alike import: one "stuck" alert, and
  ``sisdropd discard`` gives up on it with the import named;
- names read from the journal are plain names: forged rows move and delete nothing;
- commands signal only a live daemon holding the lock (the kernel says who), never the
  pid the lock file names;
- a corrupt journal stops ``sisdropd run`` with exit 2 and one line;
- a SIGKILL between the copy and the unlink of a move across filesystems is finished.

Held and failed files are made as the worker makes them, on the drop's real folders and
journal, before the daemon starts (a daemon running meanwhile would take them itself).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from sisdropd import config, operator
from sisdropd.folders import Folders, lock_file, stored_name
from sisdropd.journal import Journal
from tests.support import USERS, Drop, alerts, holds, recorder, wait_for


def held_file(drop: Drop, name: str = "users.csv", data: str = USERS) -> str:
    """A file held in held/ with its record, as the change guard leaves one; its stored name."""
    cfg = config.load(drop.config)
    folders = Folders.of(cfg)
    folders.make()
    journal = Journal(folders.state_dir)
    try:
        stored = stored_name(name)
        (folders.processing / stored).write_text(data)
        fid = journal.add(original_name=name, stored_name=stored, size=len(data), mtime=1.0)
        operator.park(cfg, journal, folders, journal.get(fid), "held by the change guard: test", note="change guard")
    finally:
        journal.close()
    return stored


def failed_file(drop: Drop, daemon, name: str = "users.csv") -> Path:
    """A file the daemon sent to failed/ (Canvas failed its import); the daemon is stopped after."""
    stem = name.rsplit(".", 1)[0]
    drop.sim.set_outcome(stem, "failed")
    d = daemon()
    (drop.inbox / name).write_text(USERS)
    [failed] = wait_for(lambda: drop.outcomes("failed"), 30, what="failed")
    assert d.terminate() == 0
    drop.sim.set_outcome(stem, "imported")
    return failed


def records(drop: Drop) -> list[tuple[str, str]]:
    with sqlite3.connect(drop.state_dir / "journal.sqlite3") as db:
        return list(db.execute("SELECT original_name, state FROM files ORDER BY id"))


def cli(drop: Drop, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return drop.cli(*args, "-c", str(drop.config), env=drop.env(**env) if env else None)


def held(drop: Drop) -> list[Path]:
    d = drop.root / "sisdrop" / "held"
    return sorted(p for p in d.iterdir() if not p.name.startswith(".")) if d.exists() else []


# -- while the daemon is stopped ----------------------------------------------------------


def test_release_while_stopped_then_the_daemon_imports_it(drop: Drop, daemon) -> None:
    stored = held_file(drop)
    r = cli(drop, "release", "users.csv")
    assert r.returncode == 0 and "released" in r.stdout, r.stdout + r.stderr
    assert (drop.processing / stored).read_text() == USERS and held(drop) == []  # the file and its sidecar
    daemon()
    [done] = wait_for(lambda: drop.outcomes("done"), 30, what="imported after the start")
    assert done.read_text() == USERS and len(drop.sim.imports()) == 1


def test_discard_while_stopped_is_in_failed_at_once_and_stays_there(drop: Drop, daemon) -> None:
    stored = held_file(drop)
    r = cli(drop, "discard", "users.csv")
    assert r.returncode == 0, r.stdout + r.stderr
    [failed] = drop.outcomes("failed")
    assert failed.name == stored and drop.sidecar(failed)["reason"].startswith("discarded by operator (held by")
    assert held(drop) == [] and records(drop) == [("users.csv", "failed")]
    d = daemon()
    (drop.inbox / "later.csv").write_text(USERS.replace("u1", "u9"))  # an event that must come after start-up
    wait_for(lambda: len(drop.outcomes("done")) == 1, 30, what="a later file imported")
    assert records(drop)[0] == ("users.csv", "failed") and "vanished" not in d.log()
    assert len(drop.sim.imports()) == 1 and drop.outcomes("failed") == [failed]


def test_retry_while_stopped_then_the_daemon_imports_it(drop: Drop, daemon) -> None:
    failed = failed_file(drop, daemon)
    before = drop.sidecar(failed)
    r = cli(drop, "retry", "users.csv")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not failed.exists() and drop.sidecar(failed) == before  # its old sidecar stays
    daemon()
    [done] = wait_for(lambda: drop.outcomes("done"), 30, what="imported after the start")
    assert done.read_text() == USERS and len(drop.sim.imports()) == 2


@pytest.mark.parametrize("point", ["intent", "carried"])
@pytest.mark.parametrize("command", ["release", "discard", "retry"])
def test_a_command_killed_half_way_is_finished_at_the_next_start(drop: Drop, daemon, command: str, point: str) -> None:
    if command == "retry":
        failed_file(drop, daemon)
    else:
        held_file(drop)
    r = cli(drop, command, "users.csv", SISDROPD_CRASH_AT=point)
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    d = daemon()
    if command == "discard":
        wait_for(lambda: records(drop) == [("users.csv", "failed")], 20, what="the discard finished")
        assert len(drop.outcomes("failed")) == 1 and held(drop) == [] and drop.sim.imports() == []
    else:
        wait_for(lambda: drop.outcomes("done"), 30, what="the file imported")
        assert held(drop) == [] and len(drop.sim.imports()) == (2 if command == "retry" else 1)
    assert f"finished a {command} begun before the restart" in d.log() and "vanished" not in d.log()


# -- racing a running daemon ----------------------------------------------------------------


def test_release_and_discard_racing_never_both_move_the_file(drop: Drop, daemon) -> None:
    names = [f"users_{i}.csv" for i in range(3)]
    for name in names:
        held_file(drop, name, USERS.replace("u1", name[:7]))
    daemon()
    for name in names:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "sisdropd", command, name, "-c", str(drop.config)], env=drop.env(),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for command in ("release", "discard")
        ]
        codes = sorted(p.wait(60) for p in procs)
        assert codes == [0, 1], [p.communicate() for p in procs]
    wait_for(lambda: not list(drop.processing.iterdir()) and len(drop.finished()) == 3, 30, what="all three finished")
    for path in drop.finished():  # each file in exactly one place, its record saying the same
        name = drop.sidecar(path)["original_name"]
        assert [state for n, state in records(drop) if n == name] == [path.parent.name]
    assert held(drop) == [] and len(drop.sim.imports()) == len(drop.outcomes("done"))


def stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.parametrize(("slow", "fast", "folder"), [("release", "discard", "failed"), ("discard", "release", "done")])
def test_a_command_that_loses_a_race_changes_nothing(drop: Drop, daemon, slow: str, fast: str, folder: str) -> None:
    """The slow command found the held record, then stopped; the fast one moved it meanwhile."""
    held_file(drop)
    daemon()
    paused = subprocess.Popen(
        [sys.executable, "-m", "sisdropd", slow, "users.csv", "-c", str(drop.config)], env=drop.env(SISDROPD_PAUSE_AT="found"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for(lambda: stopped(paused.pid), 20, what=f"{slow} stopped after finding the record")
        r = cli(drop, fast, "users.csv")
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        paused.send_signal(signal.SIGCONT)
    out, _ = paused.communicate(timeout=30)
    assert paused.returncode == 1 and ("is no longer held" in out or "changed meanwhile" in out), out
    [path] = wait_for(lambda: drop.outcomes(folder), 30, what=f"the file in {folder}/")
    assert path.read_text() == USERS and drop.finished() == [path] and held(drop) == []
    wait_for(lambda: records(drop) == [("users.csv", folder)], 10, what="its record saying the same")


def test_a_file_waiting_for_a_look_alike_import_is_alerted_once_and_can_be_discarded(drop: Drop, daemon, tmp_path: Path) -> None:
    argv, out = recorder(tmp_path)
    drop.write(notify={"command": argv, "events": ["stuck", "failed"], "stuck_after": 1}, canvas={"timeout": 1})
    drop.sim.hold_queue()  # another client's import holds the queue: ours stays `created`, no files
    drop.sim.inject("drop_after", method="POST", path="sis_imports$")
    d = daemon()
    (drop.inbox / "users.csv").write_text(USERS)
    [ours] = wait_for(lambda: [i for i in drop.sim.imports() if i["user_id"] == 17], 20, what="our post")
    wait_for(lambda: alerts(out, "stuck"), 20, what="the stuck alert")
    [stuck] = alerts(out, "stuck")
    assert stuck["file"] == "users.csv" and stuck["waiting_for"] == ours["id"] and f"import {ours['id']}" in stuck["reason"]
    assert f"waiting for import {ours['id']} (created" in d.log()
    r = cli(drop, "discard", "users.csv")
    assert r.returncode == 0, r.stdout + r.stderr
    [failed] = wait_for(lambda: drop.outcomes("failed"), 10, what="discarded")
    assert drop.sidecar(failed)["reason"].startswith(f"discarded by operator while waiting for import {ours['id']}")
    wait_for(lambda: "asked to discard" in d.log(), 10, what="the daemon logs the request")
    assert len(alerts(out, "stuck")) == 1
    assert sum(1 for m, p, _ in drop.sim.request_log() if m == "POST") == 1  # never posted again
    drop.sim.release()


# -- names from the journal, the lock, the journal itself ------------------------------------


def test_forged_journal_names_move_and_delete_nothing(drop: Drop, daemon, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    canary.write_text("precious\n")
    held_file(drop, "a.csv")
    held_file(drop, "b.csv")
    failed = failed_file(drop, daemon, "c.csv")
    held_dir = drop.root / "sisdrop" / "held"
    with sqlite3.connect(drop.state_dir / "journal.sqlite3") as db:  # an attacker edits the journal
        db.execute("UPDATE files SET stored_name = ? WHERE original_name = 'a.csv'", (str(canary),))
        db.execute("UPDATE files SET stored_name = ? WHERE original_name = 'b.csv'", (f"../../{canary.name}",))
        db.execute("UPDATE files SET stored_name = ? WHERE original_name = 'c.csv'", ("../../canary",))
    assert (held_dir / f"../../{canary.name}").resolve() == canary.resolve()
    for command, name in (("release", "a.csv"), ("discard", "a.csv"), ("release", "b.csv"), ("discard", "b.csv"), ("retry", "c.csv")):
        r = cli(drop, command, name)
        assert r.returncode == 1 and "not a plain file name" in r.stdout, (command, name, r.stdout, r.stderr)
    assert canary.read_text() == "precious\n" and failed.exists()
    with sqlite3.connect(drop.state_dir / "journal.sqlite3") as db:  # and an open record for the daemon
        db.execute(
            "INSERT INTO files (original_name, stored_name, state, taken_at, updated) VALUES ('d.csv', ?, 'queued', '2026-01-01T00:00:00Z', 0)",
            (str(canary),),
        )
    d = daemon()
    wait_for(lambda: ("d.csv", "lost") in records(drop), 20, what="the forged record closed")
    assert canary.read_text() == "precious\n" and "not a plain file name" in d.log()


def test_a_command_never_signals_the_pid_a_stale_lock_file_names(drop: Drop) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        drop.state_dir.mkdir(parents=True, exist_ok=True)
        lock_file(drop.state_dir).write_text(f"{sleeper.pid}\n")  # a daemon stopped; its pid reused
        r = cli(drop, "pause")
        assert r.returncode == 0, r.stderr
        # SIGUSR1 kills a `sleep` at once: a second is ample to see it.
        holds(lambda: sleeper.poll() is None, 1.0, what="the unrelated process lives")
        assert cli(drop, "resume").returncode == 0 and sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_command_pokes_a_running_daemon(drop: Drop, daemon) -> None:
    d = daemon()
    assert cli(drop, "pause").returncode == 0
    # The daemon acts on SIGUSR1 at once; without it only at its 5-second tick.
    wait_for(lambda: "asked to pause" in d.log(), 3, what="the daemon poked")


def test_a_corrupt_journal_stops_the_start_with_exit_2_and_one_line(drop: Drop) -> None:
    drop.state_dir.mkdir(parents=True, exist_ok=True)
    journal = drop.state_dir / "journal.sqlite3"
    journal.write_bytes(b"not a database at all\n" * 100)
    r = drop.cli("run", "-c", str(drop.config), timeout=30)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(journal) in lines[0] and "Traceback" not in r.stderr
    assert "restore it from a backup" in lines[0]


def test_a_sigkill_between_copy_and_unlink_across_filesystems_is_finished(drop: Drop, daemon, tmpfs) -> None:
    other = tmpfs("otherfs", "20m")
    drop.write(folders={"done": str(other / "done")})
    d = daemon(env=drop.env(SISDROPD_CRASH_AT="copied"))
    (drop.inbox / "users.csv").write_text(USERS)
    assert d.proc.wait(30) == -signal.SIGKILL, d.log()
    [copy] = [p for p in (other / "done").iterdir() if p.name.endswith("users.csv")]
    assert len(list(drop.processing.iterdir())) == 1  # both copies, as the crash left them
    daemon()
    wait_for(lambda: not list(drop.processing.iterdir()), 20, what="the move finished")
    assert copy.read_text() == USERS and len(drop.sim.imports()) == 1
    assert json.loads(copy.with_name(copy.name + ".json").read_text())["workflow_state"] == "imported"


def test_release_discard_and_retry_print_their_result_alone(drop: Drop) -> None:
    """A one-shot command prints its result line, nothing on stderr: not the journal's DEBUG
    lines (the config's level is DEBUG) in loguru's default format."""
    held_file(drop, "a.csv")
    held_file(drop, "b.csv", USERS.replace("u1", "u9"))
    for command, name in (("release", "a.csv"), ("discard", "b.csv"), ("retry", "b.csv")):
        r = cli(drop, command, name)
        assert r.returncode == 0 and r.stderr == "", f"{command}: {r.stdout}{r.stderr}"
        assert len(r.stdout.splitlines()) == 1, r.stdout
    assert sorted(records(drop)) == [("a.csv", "queued"), ("b.csv", "queued")]


def test_a_corrupt_journal_is_a_problem_for_check_and_status_as_for_run(drop: Drop) -> None:
    """``check`` names it as a problem (exit 1) and ``status`` refuses it (exit 2), each with the
    advice ``run`` gives; no "run as the daemon's user" hint: the user is not the cause."""
    drop.state_dir.mkdir(parents=True, exist_ok=True)
    journal = drop.state_dir / "journal.sqlite3"
    journal.write_bytes(b"not a database at all\n" * 100)
    r = cli(drop, "check")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"problem: the journal {journal} is not a usable database" in r.stdout and "restore it from a backup" in r.stdout
    for args in (["status"], ["status", "--json"]):
        r = cli(drop, *args)
        assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
        [line] = r.stderr.splitlines()
        assert str(journal) in line and "restore it from a backup" in line and "sudo" not in line, line
