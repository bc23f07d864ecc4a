"""``sisdropd run [--detach --pidfile PATH]``: the daemon, in the foreground or detached."""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import os
import sys

from sisdropd import logs
from sisdropd.commands import EXIT_FAILED, EXIT_USAGE, config_of, err, token_of
from sisdropd.daemon import Daemon
from sisdropd.folders import AlreadyRunning, Folders, lock

PR_SET_DUMPABLE = 4  # <linux/prctl.h>


def _fatal(msg: str, detached: bool) -> None:
    """A start-up failure: on stderr, and in the log file when stderr is gone (detached)."""
    if detached:
        from loguru import logger

        logger.error("{}", msg)
    err(msg)


def _cannot_prepare(e: OSError) -> str:
    return f"cannot prepare the folders: {e.strerror or e}{f': {e.filename}' if e.filename else ''}"


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
    cfg = config_of(args)
    token = token_of(cfg)
    if args.detach and not args.pidfile:
        err("--detach needs --pidfile PATH")
        return EXIT_USAGE
    if args.detach:
        # Refuse here, on the terminal that asked, what would make the detached child exit.
        try:
            folders = Folders.of(cfg)
            folders.make()
            lock(folders.state_dir).close()
        except AlreadyRunning as e:
            err(str(e))
            return EXIT_FAILED
        except OSError as e:
            err(_cannot_prepare(e))
            return EXIT_USAGE
        from sisdropd.commands.detach import detach

        detach(cfg, args.pidfile)
        if not cfg.log.file:
            log_file = str(cfg.folders.path("state_dir") / "sisdropd.log")
            cfg = dataclasses.replace(cfg, log=dataclasses.replace(cfg.log, file=log_file))
    logs.setup(cfg.log)
    try:
        daemon = Daemon(cfg, token)
    except AlreadyRunning as e:
        _fatal(str(e), args.detach)
        return EXIT_FAILED
    except OSError as e:
        _fatal(_cannot_prepare(e), args.detach)
        return EXIT_USAGE
    daemon.install_signals()
    code = daemon.run()
    if daemon.worker_thread.is_alive():  # stuck in a blocking call: the journal has its place
        sys.stderr.flush()
        os._exit(code)
    return code
