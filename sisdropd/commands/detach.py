"""``sisdropd run --detach --pidfile PATH``: a classic Unix daemon, for hosts without systemd.

python-daemon does the double fork, the session, the closed descriptors and the pid file
(``TimeoutPIDLockFile``: created exclusively, holding our pid, removed at exit). A second
start is refused here, before detaching, so the refusal reaches the terminal that asked.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import daemon
import daemon.pidfile
import lockfile

from sisdropd.config import Config


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def detach(cfg: Config, pidfile: str) -> None:
    """Become a background daemon holding ``pidfile``; returns in the daemon process.

    Exits the calling process with status 1 and one line on stderr when the pid file
    names a live process. A stale pid file (dead process) is replaced.
    """
    path = Path(pidfile).absolute()
    lock = daemon.pidfile.TimeoutPIDLockFile(str(path), acquire_timeout=0)
    if lock.is_locked():
        pid = lock.read_pid()
        if pid and _alive(pid):
            print(f"sisdropd: already running (pid {pid}, pid file {path})", file=sys.stderr)
            raise SystemExit(1)
        lock.break_lock()
    if not cfg.log.file:
        print(
            f"sisdropd: note: no [log] file is set; a detached daemon logs to {cfg.folders.path('state_dir') / 'sisdropd.log'}",
            file=sys.stderr,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    ctx = daemon.DaemonContext(pidfile=lock, working_directory="/", umask=0o027, detach_process=True)
    try:
        ctx.open()
    except lockfile.AlreadyLocked:
        raise SystemExit(1) from None
