"""A dropped file as a file: opening it without following links, and what its name says.

Canvas decides CSV, zip or XML by the name's extension (reference section 2.2), so
``kind_of`` does too. ``OPEN_FLAGS`` open a path so that a symbolic link fails instead of
being followed and a FIFO or device cannot block.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

# Bytes per read. Measured on a 64 MiB CSV: 64 KiB to 256 KiB reads check 35% faster
# than 1 MiB ones (each read is then hashed, checked for UTF-8, line ends and quotes while
# it sits in the CPU's cache), and 64 KiB keeps the whole check of a CSV under 0.5 MiB.
CHUNK = 64 * 1024

OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)  # a symlink fails with ELOOP instead of being followed
    | getattr(os, "O_NONBLOCK", 0)  # a FIFO or device cannot block the open
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOCTTY", 0)  # a terminal device never becomes our controlling tty
)


def basename(name: str) -> str:
    """The last component of a path written with / or \\ (a zip entry's, as Canvas lists it)."""
    return re.split(r"[/\\]", name)[-1]


def extension(name: str) -> str:
    """The lower-cased extension of the last path component, without its dot, or ''."""
    base = basename(name)
    return base.rsplit(".", 1)[1].lower() if "." in base else ""


def kind_of(name: str) -> str:
    """``csv``, ``zip`` or ``xml`` as Canvas would read a file of this name, else ``other``."""
    ext = extension(name)
    return ext if ext in ("csv", "zip", "xml") else "other"


def file_kind(mode: int) -> str:
    """Words for what a non-regular file is (a directory, a FIFO...)."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def open_failure(path: Path, err: OSError | ValueError) -> str:
    """Words for a failed open; lstat (which follows nothing) tells what the path is."""
    if isinstance(err, ValueError):
        return f"cannot be opened ({err})"
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        return "does not exist"
    except (OSError, ValueError):
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        return "is a symbolic link; links are never followed"
    if err.errno == errno.ENOENT:
        return "does not exist"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied: cannot read it (check its owner and mode)"
    if st is not None and not stat.S_ISREG(st.st_mode):
        return f"is {file_kind(st.st_mode)}, not a regular file"
    return f"cannot be opened ({os.strerror(err.errno) if err.errno else err})"
