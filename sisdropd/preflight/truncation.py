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
from sisdropd.preflight.zipdirectory import (
    MAX_TAIL,
    SIGNATURE_SIZE,
    ends_with_end_record,
    starts_like_zip,
)


def looks_truncated(path: Path) -> str | None:
    """Why a settled file looks like an upload cut short, or None if it looks whole.

    A zip must end with its end-of-central-directory record; one that does not, but starts
    like a zip (or is shorter than a zip's 4-byte signature), looks cut short. One that
    neither starts nor ends like a zip is no zip at all: None, so that it is taken at once
    and ``check_path`` rejects it, instead of waiting as if more were coming. A CSV's last
    row must end with a newline and have at least the header's number of fields.

    Only regular files are read (never a link or a FIFO); anything unreadable returns None
    and is left to ``check_path``.
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
            tail = os.pread(fd, MAX_TAIL, max(0, st.st_size - MAX_TAIL))
            if ends_with_end_record(tail):
                return None
            if st.st_size < SIGNATURE_SIZE:
                return f"{st.st_size} bytes, shorter than any zip"
            if starts_like_zip(os.pread(fd, SIGNATURE_SIZE, 0)):
                return "no end-of-central-directory record at the end of the zip"
            return None  # not a zip at all: check_path says so
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
