"""Does a settled file look like an upload cut short? Asked before a file is taken.

OpenSSH's server writes under the final name and closes the file when a connection
breaks, so a file that stopped changing can still be half an upload; the watcher leaves
such a file waiting (``[watch] truncated_after``) instead of taking it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sisdropd.preflight.files import CHUNK, OPEN_FLAGS, kind_of

_TAIL = 65557  # the longest end-of-central-directory record: 22 bytes + a 65535-byte comment


def looks_truncated(path: Path) -> str | None:
    """Why a settled file looks like an upload cut short, or None if it looks whole.

    A zip must end with its end-of-central-directory record; a CSV's last row must end
    with a newline and have at least the header's number of fields. OpenSSH's server
    writes under the final name and closes the file when a connection breaks, so a
    stable file can still be half an upload. Only regular files are read (never a link or
    a FIFO); anything unreadable returns None and is left to ``check_path``.
    """
    try:
        fd = os.open(path, OPEN_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return None
        kind = kind_of(path.name)
        if kind == "zip":
            os.lseek(fd, max(0, st.st_size - _TAIL), os.SEEK_SET)
            tail = os.read(fd, _TAIL)
            # The record is 22 bytes plus its comment, and must end exactly at the end of
            # the file: a signature somewhere inside the data does not count.
            at = tail.rfind(b"PK\x05\x06")
            while at >= 0:
                if len(tail) - at >= 22 and at + 22 + int.from_bytes(tail[at + 20 : at + 22], "little") == len(tail):
                    return None
                at = tail.rfind(b"PK\x05\x06", 0, at)
            return "no end-of-central-directory record at the end of the zip"
        if kind != "csv":
            return None
        head = os.pread(fd, CHUNK, 0)
        tail = os.pread(fd, CHUNK, max(0, st.st_size - CHUNK))
    finally:
        os.close(fd)
    if not tail.endswith((b"\n", b"\r")):
        last = tail.rsplit(b"\n", 1)[-1]
        header = head.split(b"\n", 1)[0]
        if b'"' not in last and b'"' not in header and last.count(b",") < header.count(b","):
            return f"the last row has {last.count(b',') + 1} of the header's {header.count(b',') + 1} fields and no line end"
        return "the last row does not end with a newline"
    return None
