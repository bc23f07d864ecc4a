"""The commands: one module per family, each with ``main(args) -> exit status``.

``cli`` parses the command line and imports only the module of the command that runs, so
``validate``, ``status`` and ``submit`` start without the daemon, watchdog or the
simulator. Exit statuses follow the interface: problems a user caused (bad config,
missing token, unreadable file) are one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sisdropd.config import Config, load, read_token, resolve_path
from sisdropd.errors import StartupError
from sisdropd.logs import add_secret, clean

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_GAVE_UP, EXIT_TOKEN = 0, 1, 2, 3, 4


def say(line: str = "") -> None:
    """One line of a command's output on stdout, cleaned of control characters and secrets."""
    print(clean(line), flush=True)


def err(msg: str) -> None:
    """One line on stderr, cleaned of control characters and secrets."""
    print(f"sisdropd: {clean(msg)}", file=sys.stderr)


def config_of(args: argparse.Namespace) -> Config:
    """The config ``-c`` names (else ``$SISDROPD_CONFIG``, else the system default).

    Raises ``ConfigError``; ``cli.main`` prints it.
    """
    return load(resolve_path(getattr(args, "config", None)))


def token_of(cfg: Config) -> str:
    """The Canvas token, registered as a secret before anything can log it. Raises ``TokenError``."""
    token, _ = read_token(cfg)
    add_secret(token)
    return token


def as_state_owner(cfg: Config) -> None:
    """Refuse to write state (the journal, the pause flag, files moved between folders) as a
    user other than the state folder's owner: root would leave files behind that the daemon,
    running as its own user, cannot change. Raises ``StartupError`` (exit 2) whose line is
    the command to run instead (``sudo -u <owner> sisdropd ...``). Reading needs no check.
    """
    state_dir = cfg.folders.path("state_dir")
    probe = next((p for p in (state_dir, *state_dir.parents) if p.exists()), Path("/"))
    uid = probe.stat().st_uid
    if uid == os.geteuid():
        return
    import shlex  # here: only a refusal needs it

    owner = _user(uid)
    argv = sys.argv[1:]
    if not {"-c", "--config"} & set(argv) and not any(a.startswith("--config=") for a in argv):
        argv = ["-c", cfg.source, *argv]
    raise StartupError(
        f"{probe} belongs to {owner}: run this as its owner, so that the daemon can still change what it "
        f"writes: sudo -u {shlex.quote(owner)} {shlex.join(['sisdropd', *argv])}"
    )


def unreadable(path: Path, e: Exception) -> str:
    """Why the journal at ``path`` cannot be read, and what to do, by cause: another
    process's lock, another user's file, or the error alone."""
    text = str(e).lower()
    if "locked" in text or "busy" in text:
        return f"cannot read the journal {path} ({e}): another process holds it (a backup? an sqlite3 shell?); try again once it is free"
    probe = next((p for p in (path, *path.parents) if _stat(p) is not None), None)
    st = _stat(probe) if probe is not None else None
    if st is not None and st.st_uid != os.geteuid():
        import shlex  # here: only this refusal needs it

        owner = _user(st.st_uid)
        return (
            f"cannot read the journal {path} ({e}): {probe} belongs to {owner}: run this as that user, "
            f"e.g. sudo -u {shlex.quote(owner)} {shlex.join(['sisdropd', *sys.argv[1:]])}"
        )
    return f"cannot read the journal {path} ({e})"


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


def _user(uid: int) -> str:
    import pwd  # here: only a refusal needs it

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"#{uid}"
