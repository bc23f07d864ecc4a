"""Operator commands from another shell: release, discard, retry, pause, resume, abort.

They work whether or not the daemon runs. ``operator`` changes the file and its record;
this module prints the result, records the request for the daemon to log ("who asked for
what"), and pokes a running daemon with SIGUSR1 so it acts at once instead of at its
next tick: only a live daemon that holds the lock, as the kernel says (never the pid
file's word, and without taking the lock, so a daemon starting meanwhile is not refused).
"""

from __future__ import annotations

import argparse
import getpass
import os
import signal

from sisdropd import operator
from sisdropd.canvas import CanvasClient, client_for
from sisdropd.commands import as_state_owner, config_of, say, token_of
from sisdropd.config import Config
from sisdropd.folders import Folders, lock_holder
from sisdropd.journal import Journal


def who() -> str:
    """The asking user and process, for the daemon's log."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    via = os.environ.get("SUDO_USER")
    return f"{user}{f' (via sudo from {via})' if via else ''}, pid {os.getpid()}"


def poke(folders: Folders) -> None:
    """Wake a running daemon (SIGUSR1 to the process holding the lock); quiet if none runs."""
    pid = lock_holder(folders.state_dir)
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError:
        pass


def _report(folders: Folders, journal: Journal, command: str, name: str | None, result: operator.Result) -> int:
    journal.add_request(command, name or result.file, who(), result.message)
    journal.close()
    poke(folders)
    say(result.message)
    return 0 if result.ok else 1


def main(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    as_state_owner(cfg)  # writes the journal or the pause flag: as the daemon's user only
    token = token_of(cfg) if args.command == "abort" else None
    return run(cfg, args.command, getattr(args, "name", None), token)


def run(cfg: Config, command: str, name: str | None = None, token: str | None = None) -> int:
    """``sisdropd COMMAND [NAME]`` for release, discard, retry, pause, resume and abort.

    ``retry`` reads the token only when it must ask Canvas (a file whose import may still
    run); ``abort`` needs it (``token``).
    """
    folders = Folders.of(cfg)
    if command in ("pause", "resume"):
        result = operator.pause(folders, command == "pause", who())
        return _report(folders, Journal(folders.state_dir), command, None, result)
    journal = Journal(folders.state_dir)
    clients: list[CanvasClient] = []

    def client() -> CanvasClient:
        clients.append(client_for(cfg, token or token_of(cfg), patience="command"))
        return clients[-1]

    try:
        if command == "release":
            result = operator.release(cfg, journal, folders, name or "", who())
        elif command == "discard":
            result = operator.discard(cfg, journal, folders, name or "", who())
        elif command == "retry":
            result = operator.retry(cfg, journal, folders, name or "", who(), client)
        elif command == "abort":
            result = operator.abort(journal, client(), cfg.canvas.timeout, name)
        else:
            raise ValueError(f"not an operator command: {command}")
    finally:
        for c in clients:
            c.close()
    return _report(folders, journal, command, name, result)
