"""``sisdropd run [--detach --pidfile PATH]``: the daemon.

Start-up problems are one line on stderr (and in the log file when detached), never a
traceback: exit 2 for what an admin must fix (config, folders, log file, journal), 1 for
a passing condition (another daemon holds the lock, the journal is busy). See
``sisdropd.errors`` and ``sisdropd.startup``.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import os
import sys

from sisdropd import logs, startup
from sisdropd.commands import EXIT_USAGE, config_of, err, token_of
from sisdropd.daemon import Daemon
from sisdropd.errors import StartupError
from sisdropd.folders import Folders

PR_SET_DUMPABLE = 4  # <linux/prctl.h>


def _fatal(msg: str, detached: bool) -> None:
    """A start-up failure: on stderr, and in the log file when stderr is gone (detached)."""
    if detached:
        from loguru import logger

        logger.error("{}", msg)
    err(msg)


def not_dumpable() -> bool:
    """prctl(PR_SET_DUMPABLE, 0): no core dump, and /proc/<pid>/environ, mem and fd of this
    process become root's, so another process of the same user (an alert command, say)
    cannot read the token out of it. Kept across fork (``--detach``). False where the
    call is not available (not Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def main(args: argparse.Namespace) -> int:
    not_dumpable()  # before the token is read
    if args.pidfile and not args.detach:
        err("--pidfile is for --detach (under systemd, run in the foreground: the unit tracks the process)")
        return EXIT_USAGE
    if args.detach and not args.pidfile:
        err("--detach needs --pidfile PATH")
        return EXIT_USAGE
    cfg = config_of(args)
    token = token_of(cfg)
    startup.check_files(cfg)
    if args.detach:
        # Refuse here, on the terminal that asked, what would make the detached child exit.
        folders = Folders.of(cfg)
        startup.make_folders(cfg, folders)
        startup.take_lock(cfg, folders.state_dir).close()
        startup.check_pidfile(args.pidfile)
        if cfg.log.file:
            startup.check_log_file(cfg)
        from sisdropd.commands.detach import detach

        detach(cfg, args.pidfile)
        if not cfg.log.file:
            log_file = str(cfg.folders.path("state_dir") / "sisdropd.log")
            cfg = dataclasses.replace(cfg, log=dataclasses.replace(cfg.log, file=log_file))
    logs.setup(cfg.log)
    try:
        daemon = Daemon(cfg, token)
    except StartupError as e:
        _fatal(str(e), args.detach)
        return e.status
    daemon.install_signals()
    code = daemon.run()
    if daemon.worker_thread.is_alive():  # stuck in a blocking call: the journal has its place
        sys.stderr.flush()
        os._exit(code)
    return code
