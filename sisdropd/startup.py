"""Start-up checks of the daemon: each problem one line that names the key or file and what
to do (``errors.StartupError``, exit 2), or a passing condition (``errors.Busy``, exit 1).

``Daemon.__init__`` and ``commands.run`` go through these instead of calling ``mkdir``,
``lock`` or ``Journal`` bare, so that a bad ``[folders]`` entry, an unwritable state folder,
a held lock or a busy journal never reach the admin as a traceback (and systemd, which
restarts on any other status, does not restart for ever on a mistake only they can fix).
"""

from __future__ import annotations

import errno
import os
import pwd
import sqlite3
from pathlib import Path
from typing import IO

from sisdropd.config import FOLDER_NAMES, Config
from sisdropd.errors import Busy, StartupError
from sisdropd.folders import AlreadyRunning, Folders, journal_file, lock, lock_file
from sisdropd.journal import Journal

BUSY_WAIT = 5.0  # seconds a journal locked by another process may keep us waiting at start


def user() -> str:
    """The name of the user we run as (for "make it writable by ..." hints)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _key_of(cfg: Config, path: str | None) -> str:
    """The [folders] key that names ``path`` (or a folder beneath it): given, else root."""
    if path:
        p = Path(path)
        for name in FOLDER_NAMES:
            folder = cfg.folders.path(name)
            if p == folder or p in folder.parents:
                return f"folders.{name}" if getattr(cfg.folders, name) else "folders.root"
    return "folders"


def _advice(e: OSError, path: str, cfg: Config) -> str:
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"make it writable by user {user()} (the daemon's user), or change it in {cfg.source}"
    if e.errno == errno.EROFS:
        return "it is on a read-only filesystem; under systemd add it to ReadWritePaths= (systemctl edit sisdropd)"
    if e.errno in (errno.EEXIST, errno.ENOTDIR):
        return f"something that is not a folder is in the way; move it, or change the folder in {cfg.source}"
    return f"fix it, or change the folder in {cfg.source}"


def make_folders(cfg: Config, folders: Folders) -> None:
    """Create the folders (``Folders.make``) and check this user may use each of them."""
    try:
        folders.make()
    except OSError as e:
        if e.errno == errno.EXDEV:
            raise StartupError(
                f"folders.inbox and folders.processing: {e.strerror}; put both on one filesystem in {cfg.source}"
            ) from None
        where = str(e.filename) if e.filename else "?"
        raise StartupError(
            f"{_key_of(cfg, where)}: cannot create {where} ({e.strerror or e}): {_advice(e, where, cfg)}"
        ) from None
    for _, path in folders.items():
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            err = OSError(errno.EACCES, "Permission denied", str(path))
            raise StartupError(
                f"{_key_of(cfg, str(path))}: {path} is not readable and writable by user {user()}: "
                f"{_advice(err, str(path), cfg)}"
            )


def take_lock(cfg: Config, state_dir: Path) -> IO[str]:
    """The lock one daemon per state folder holds; ``Busy`` if another daemon has it."""
    try:
        return lock(state_dir)
    except AlreadyRunning as e:
        raise Busy(str(e)) from None
    except OSError as e:
        path = str(e.filename or lock_file(state_dir))
        raise StartupError(
            f"{_key_of(cfg, str(state_dir))}: cannot open the lock file {path} ({e.strerror or e}): "
            f"{_advice(e, path, cfg)}"
        ) from None


def _busy(e: sqlite3.Error) -> bool:
    text = str(e).lower()
    return "locked" in text or "busy" in text


def open_journal(cfg: Config, state_dir: Path) -> Journal:
    """The journal, opened for the daemon.

    ``Busy`` when another process holds a write lock on it for ``BUSY_WAIT`` seconds (a
    backup, an admin's sqlite3 shell): systemd tries again. ``StartupError`` when it
    cannot be opened at all. Other database errors (a damaged file) are the journal's to
    report and pass through unchanged.
    """
    path = journal_file(state_dir)
    busy = Busy(
        f"the journal {path} is locked by another process (a backup? an sqlite3 shell?); "
        "sisdropd starts once it is free"
    )
    if path.exists():
        # A short probe: Journal() itself would wait 30 s on a lock (fine once running).
        try:
            probe = sqlite3.connect(path, timeout=BUSY_WAIT, isolation_level=None)
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.execute("ROLLBACK")
            finally:
                probe.close()
        except sqlite3.OperationalError as e:
            if _busy(e):
                raise busy from None
        except sqlite3.Error:
            pass  # a damaged file: Journal() says so
    try:
        return Journal(state_dir)
    except sqlite3.OperationalError as e:
        if _busy(e):
            raise busy from None
        raise StartupError(
            f"{_key_of(cfg, str(state_dir))}: cannot open the journal {path} ({e}): "
            f"make {state_dir} and the files in it writable by user {user()}"
        ) from None


def check_files(cfg: Config) -> None:
    """Files the config names that must exist before anything starts (the CA bundle)."""
    ca = cfg.canvas.ca_bundle
    if ca and not os.path.isdir(ca):  # requests also takes a folder of CA certificates
        try:
            with open(ca, "rb") as f:
                head = f.read(4096)
        except OSError as e:
            raise StartupError(
                f"canvas.ca_bundle: cannot read {ca} ({e.strerror or e}): give the PEM file of "
                f"your institution's CA, readable by user {user()}, or remove the key"
            ) from None
        if b"-----BEGIN" not in head:
            raise StartupError(f"canvas.ca_bundle: {ca} is not a PEM file (no -----BEGIN line)")


def log_file_problem(cfg: Config, e: OSError) -> StartupError:
    """The one line for a ``[log] file`` that cannot be opened."""
    return StartupError(
        f"log.file: cannot open {cfg.log.file} ({e.strerror or e}): make its folder writable by "
        f"user {user()}, or change [log] file in {cfg.source}"
    )


def check_log_file(cfg: Config) -> None:
    """Open ``[log] file`` for appending (as the log sink will), or say why it cannot be."""
    assert cfg.log.file
    try:
        Path(cfg.log.file).parent.mkdir(parents=True, exist_ok=True)
        with open(cfg.log.file, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise log_file_problem(cfg, e) from None


def check_pidfile(pidfile: str) -> None:
    """The pid file's folder exists (or can be made) and this user may write in it."""
    folder = Path(pidfile).absolute().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StartupError(f"--pidfile: cannot create {folder} ({e.strerror or e})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StartupError(f"--pidfile: {folder} is not writable by user {user()}; choose another place")
