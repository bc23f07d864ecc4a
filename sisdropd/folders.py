"""Our folders: their names, making them, the names files get in them, and the state dir.

The folder names are the fields of ``config.FoldersConfig`` (``FOLDER_NAMES``), written
nowhere else. ``Folders.of(cfg)`` gives every path; ``make`` creates what is missing.
``stored_name`` gives a taken file the name it keeps in processing/, done/, failed/ and
held/: a UTC timestamp and a random tag before the original name, so the name ends with
the original, sorts by time, and never collides. A dropped name need not be UTF-8 (a
Windows client's ``Müller.csv`` in CP1252); the journal holds text only, so
``readable`` writes each such byte as ``%XX``, and that is the name the journal, the
logs, the sidecar and the stored name carry. ``plain`` checks a name read back from
the journal before any path is built from it (a forged row must not reach outside our
folders). The state dir holds the journal (``journal_file``), the lock a running daemon
holds (``lock``, a POSIX record lock: ``lock_holder`` asks the kernel who holds it,
without taking it) and the pause flag (``pause_flag``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import stat
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from sisdropd.config import FOLDER_NAMES, Config

NAME_MAX = 255  # bytes, the usual filesystem limit for one name
ROOM = len(".errors.csv")  # what the sidecar and errors file add to a stored name
FOLDER_MODE = 0o750  # the folders we make: the group (the uploaders') may look, never write
STATE_MODE = 0o700  # the state dir: the journal and the lock are the daemon's alone
_STORED = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}-(?P<orig>.+)$", re.S)


@dataclass(frozen=True)
class Folders:
    """Every folder of one configuration, as absolute paths."""

    inbox: Path
    processing: Path
    done: Path
    failed: Path
    held: Path
    state_dir: Path

    @classmethod
    def of(cls, cfg: Config) -> Folders:
        return cls(**{name: cfg.folders.path(name) for name in FOLDER_NAMES})

    def items(self) -> list[tuple[str, Path]]:
        """``(name, path)`` of each folder, in ``FOLDER_NAMES`` order."""
        return [(name, getattr(self, name)) for name in FOLDER_NAMES]

    def make(self) -> None:
        """Create every folder that is missing: 0750, the state dir 0700 (the journal, the
        lock), whatever the umask; a folder that exists keeps its mode (inbox/ is the
        admin's: the README's 3770). Raises OSError (EXDEV when inbox/ and processing/ are
        on two filesystems: taking a file must be one atomic rename)."""
        for name, path in self.items():
            make_dir(path, STATE_MODE if name == "state_dir" else FOLDER_MODE)
        if os.stat(self.inbox).st_dev != os.stat(self.processing).st_dev:
            raise OSError(
                errno.EXDEV,
                "inbox/ and processing/ must be on one filesystem, so that taking a file is one atomic rename",
            )


def make_dir(path: Path, mode: int) -> None:
    """``path`` and its missing parents, each made with ``mode`` exactly (a parent we make
    is a folder of ours too); what exists is left as it is."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        try:
            p.mkdir(mode=mode)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs
        # mkdir's mode passes through the umask; chmod does not. A setgid bit inherited
        # from the parent (the uploaders' group for what is made in it) is kept.
        os.chmod(p, mode | (os.stat(p).st_mode & stat.S_ISGID))
    if not path.is_dir():  # a file (or a link to one) where the folder should be
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))


def readable(name: str) -> str:
    """``name`` as valid UTF-8 text: each byte of it that was not UTF-8 (which
    ``os.fsdecode`` keeps as a surrogate escape, and SQLite cannot store) written as
    ``%XX``; any other name is itself. ``b'M\\xfcller.csv'`` reads ``M%FCller.csv``, as the
    log, the status, the sidecar and the stored name show it: one an operator can type
    unquoted, and a Windows client can fetch."""
    if name.isascii():
        return name
    text = "".join(f"%{ord(c) - 0xDC00:02X}" if "\udc80" <= c <= "\udcff" else c for c in name)
    return text.encode("utf-8", "replace").decode("utf-8")  # a lone surrogate no file name gives


def stored_name(original: str, now: datetime | None = None) -> str:
    """``<UTC timestamp>-<6 hex>-<readable(original)>``, short enough that it and its sidecar fit.

    The name ends with the original name (its ``readable`` form: valid UTF-8, as the
    journal and the sidecar have it); when the original is too long for a prefix, the
    prefix shrinks to the random tag; an original longer than the filesystem allows
    beside its ``.errors.csv`` keeps its last bytes only.
    """
    when = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    tag = secrets.token_hex(3)
    original = readable(original)
    for prefix in (f"{when}-{tag}-", f"{tag}-"):
        candidate = prefix + original
        if len(os.fsencode(candidate)) <= NAME_MAX - ROOM:
            return candidate
    # Too long to keep whole beside its sidecar: keep its end (the extension included);
    # the sidecar's original_name has it in full.
    raw = os.fsencode(original)[-(NAME_MAX - ROOM - len(tag) - 1) :]
    while raw and 0x80 <= raw[0] <= 0xBF:  # do not start inside a UTF-8 character
        raw = raw[1:]
    return f"{tag}-{os.fsdecode(raw)}"


class UnsafeName(ValueError):
    """A name from the journal that is not one plain file name (a forged or damaged row)."""


def plain(name: str) -> str:
    """``name`` itself if it is one plain file name: not empty, not ``.`` or ``..``, no
    ``/`` (so not absolute), no NUL. Raises ``UnsafeName`` otherwise.

    Every path built from a name stored in the journal goes through this: the journal is
    a file an attacker with the operator's rights could edit, and the operator's commands
    (often run as root) must not then move or delete files outside our folders.
    """
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name or (os.altsep and os.altsep in name):
        raise UnsafeName(f"the journal names {name!r}, which is not a plain file name: refusing to touch it (has the journal been edited?)")
    return name


def inside(folder: Path, name: str, suffix: str = "") -> Path:
    """``folder / (name + suffix)`` once ``plain(name)`` agrees: the one way a path is built
    from a journal's stored name (a sidecar is ``inside(folder, name, ".json")``)."""
    return folder / (plain(name) + suffix)


def original_name(stored: str) -> str:
    """The dropped name inside a stored name (the whole name if it carries no prefix)."""
    m = _STORED.match(stored)
    return m.group("orig") if m else stored


def taken_at(stored: str) -> float | None:
    """When a file was taken, from the UTC time at the start of its stored name (None if it has none)."""
    m = _STORED.match(stored)
    if not m:
        return None
    try:
        return datetime.strptime(stored[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def journal_file(state_dir: Path) -> Path:
    """The journal (SQLite) in ``state_dir``."""
    return state_dir / "journal.sqlite3"


def pause_flag(state_dir: Path) -> Path:
    """The file whose presence pauses the daemon (``sisdropd pause`` makes it, ``resume`` removes it)."""
    return state_dir / "paused"


def lock_file(state_dir: Path) -> Path:
    """The file a running daemon holds locked, with its pid inside."""
    return state_dir / "sisdropd.lock"


class AlreadyRunning(Exception):
    """Another sisdropd holds the lock on these folders."""


def lock(state_dir: Path) -> IO[str]:
    """Hold the lock file for the life of the process, or raise AlreadyRunning.

    A POSIX record lock (``fcntl``), so that ``lock_holder`` can ask the kernel who holds
    it. Such a lock is the process's: it ends when the process closes *any* descriptor of
    the lock file, so the holder must never open that file again (nothing in the daemon
    does); the pid written inside is for people, never trusted.
    """
    f = open(lock_file(state_dir), "a+")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.lockf(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EAGAIN):
            f.close()
            raise
        f.close()
        pid = lock_holder(state_dir)
        raise AlreadyRunning(
            f"another sisdropd (pid {pid or '?'}) is already running on {state_dir}; two daemons on one folder would post files twice"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


# struct flock on Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid.
_FLOCK = "hhqqi4x"


def lock_holder(state_dir: Path) -> int | None:
    """The pid of the live process that holds the lock, or None when none does.

    Asked of the kernel (``F_GETLK``) without taking the lock, so a daemon starting at
    that moment is never refused because of the question; the pid file's content is not
    trusted (after a stop it names a process that may now be anything).
    """
    try:
        fd = os.open(lock_file(state_dir), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    except OSError:
        return None
    finally:
        os.close(fd)
    l_type, _, _, _, pid = struct.unpack(_FLOCK, answer)
    return pid if l_type != fcntl.F_UNLCK and pid > 0 else None
