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


def _a_sisdropd(pid: int) -> bool:
    """``pid`` runs, and is a sisdropd: after a reboot a pid file left behind can name any
    live process (init, a shell), which must not keep the daemon from starting. Where there
    is no /proc to ask, a live pid counts."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        return b"sisdropd" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # gone meanwhile, or no /proc at all
    except OSError:
        return True  # hidden from us (hidepid): assume it is one


def detach(cfg: Config, pidfile: str) -> None:
    """Become a background daemon holding ``pidfile``; returns in the daemon process.

    Exits the calling process with status 1 and one line on stderr when the pid file
    names a live sisdropd. A stale pid file (a dead process, or a live one that is not
    sisdropd) is replaced.
    """
    path = Path(pidfile).absolute()
    lock = daemon.pidfile.TimeoutPIDLockFile(str(path), acquire_timeout=0)
    if lock.is_locked():
        pid = lock.read_pid()
        if pid and _a_sisdropd(pid):
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
