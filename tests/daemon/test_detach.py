"""``sisdropd run --detach --pidfile PATH``: a real python-daemon double fork, for hosts without systemd.

The detached daemon is no child of ours: it is found through its pid file, and every test
kills what it may have left running (the pid in the pid file, and the pid in the state
dir's lock file), so that a failed assertion leaks no daemon.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import TOKEN, USERS, Drop, wait_for


def alive(pid: int) -> bool:
    """``pid`` runs (a zombie nobody reaped yet counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def ppid_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


class Detached:
    """Runs ``sisdropd run --detach`` for one drop folder; ``cleanup`` kills what is left."""

    def __init__(self, drop: Drop, tmp_path: Path) -> None:
        self.drop = drop
        self.pidfile = tmp_path / "run" / "sisdropd.pid"
        self.log = tmp_path / "sisdropd.log"
        drop.write(log={"file": str(self.log)})

    @property
    def args(self) -> tuple[str, ...]:
        return ("--detach", "--pidfile", str(self.pidfile))

    def start(
        self, *run_args: str, timeout: float = 30
    ) -> tuple[subprocess.CompletedProcess[str], int, float]:
        """``sisdropd run -c CONFIG RUN_ARGS``: what it did, the pid we started, seconds taken."""
        args = [sys.executable, "-m", "sisdropd", "run", "-c", str(self.drop.config), *run_args]
        t0 = time.monotonic()
        proc = subprocess.Popen(
            args,
            env=self.drop.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # The pipes reach EOF only once every process holding them closed them: a daemon that
        # kept our stdout or stderr open would make this time out.
        out, err = proc.communicate(timeout=timeout)
        return (
            subprocess.CompletedProcess(args, proc.returncode, out, err),
            proc.pid,
            time.monotonic() - t0,
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def cleanup(self) -> None:
        config = str(self.drop.config).encode()
        for pid in {read_pid(self.pidfile), read_pid(self.drop.state_dir / "sisdropd.lock")}:
            if pid and pid != os.getpid() and alive(pid):
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if config in cmdline:  # ours, not a recycled pid
                    os.kill(pid, signal.SIGKILL)
                    wait_for(lambda p=pid: not alive(p), 10, what=f"pid {pid} killed")


@pytest.fixture
def detached(drop: Drop, tmp_path: Path) -> Iterator[Detached]:
    d = Detached(drop, tmp_path)
    try:
        yield d
    finally:
        d.cleanup()
        assert TOKEN not in d.log_text(), "the token leaked into the log file"


def no_traceback(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert TOKEN not in r.stdout + r.stderr


def test_detach_runs_a_daemon_that_imports_and_stops_on_sigterm(
    drop: Drop, detached: Detached
) -> None:
    r, child, took = detached.start(*detached.args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert took < 10, f"run --detach took {took:.1f}s to return"
    no_traceback(r)
    assert r.stdout == "", "a detached daemon prints nothing to the terminal that started it"

    pid = wait_for(lambda: read_pid(detached.pidfile), 10, what="the pid file")
    assert alive(pid), f"pid file names {pid}, which is not running"
    # The double fork: neither the process we started nor a child of it, not even a
    # session leader (so it can never acquire a controlling terminal again), and in a
    # session of its own (no hangup when our terminal goes).
    assert pid != child and ppid_of(pid) != child
    assert os.getsid(pid) != os.getsid(0) and os.getsid(pid) != pid
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    assert not alive(child), "the process we started should have exited"

    wait_for(lambda: "watching" in detached.log_text(), 20, what="'watching' in the log file")
    assert read_pid(drop.state_dir / "sisdropd.lock") == pid, (
        "the daemon holding the folder lock is the one in the pid file"
    )

    (drop.inbox / "users.csv").write_text(USERS)
    [done] = wait_for(lambda: drop.outcomes("done"), 20, what="users.csv in done/")
    assert drop.sidecar(done)["workflow_state"] == "imported"
    wait_for(lambda: "-> done/" in detached.log_text(), 10, what="the outcome in the log file")

    # A second start with the same pid file is refused where the user can see it.
    r2, _, took2 = detached.start(*detached.args)
    assert r2.returncode == 1, r2.stdout + r2.stderr
    assert "already running" in r2.stderr and f"pid {pid}" in r2.stderr, r2.stderr
    no_traceback(r2)
    assert took2 < 10
    assert alive(pid) and read_pid(detached.pidfile) == pid, (
        "the refusal must not disturb the running daemon"
    )

    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not alive(pid), 10, what=f"pid {pid} gone after SIGTERM")
    assert not detached.pidfile.exists(), "the pid file is removed at exit"
    log = detached.log_text()
    assert "stopping" in log and "stopped" in log, log[-2000:]
    assert "Traceback" not in log


def test_detach_without_a_pidfile_is_a_usage_error(drop: Drop, detached: Detached) -> None:
    r, _, _ = detached.start("--detach")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--pidfile" in r.stderr
    no_traceback(r)
    assert not (drop.state_dir / "sisdropd.lock").exists(), "no daemon may have started"
    assert detached.log_text() == ""


@pytest.mark.parametrize("left", ["dead", "another program"])
def test_a_stale_pid_file_is_replaced(drop: Drop, detached: Detached, left: str) -> None:
    if left == "dead":  # a daemon that died without cleaning up
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait(10)
    else:  # after a reboot, the pid it names is some other live program's
        gone = subprocess.Popen(["sleep", "60"])
    detached.pidfile.parent.mkdir(parents=True, exist_ok=True)
    detached.pidfile.write_text(f"{gone.pid}\n")
    try:
        r, _, _ = detached.start(*detached.args)
    finally:
        gone.kill()
        gone.wait(10)
    assert r.returncode == 0, r.stdout + r.stderr
    no_traceback(r)
    pid = wait_for(
        lambda: (p := read_pid(detached.pidfile)) != gone.pid and p,
        10,
        what="a new pid in the pid file",
    )
    assert alive(pid)
    wait_for(lambda: "watching" in detached.log_text(), 20, what="'watching' in the log file")
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not alive(pid), 10, what=f"pid {pid} gone after SIGTERM")
    assert not detached.pidfile.exists()
