"""The pre-flight check's entry points: ``check_path`` for a dropped file, ``check_open``
for a file object, each dispatching by kind to the CSV, zip or XML check.

A file is never followed through a symbolic link, never read whole into memory, and bad
input is reported in the returned Report, never raised.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from sisdropd.preflight.csvcheck import Capped, scan_csv
from sisdropd.preflight.files import CHUNK, OPEN_FLAGS, extension, file_kind, kind_of, open_failure
from sisdropd.preflight.report import (
    DEFAULT_LIMITS,
    Builder,
    Limits,
    Member,
    Report,
    human,
    internal,
)
from sisdropd.preflight.xmlcheck import check_xml
from sisdropd.preflight.zipcheck import check_zip


def check_path(
    path: Path,
    *,
    name: str | None = None,
    import_type: str = "instructure_csv",
    extensions: Sequence[str] = ("csv", "xml", "zip"),
    limits: Limits = DEFAULT_LIMITS,
    validate_content: bool = True,
) -> Report:
    """Check the file at ``path`` as Canvas would read it, without following links.

    Given the path, the display ``name`` used in every Problem (default: ``path.name``; the
    daemon passes the original dropped name), the configured ``import_type`` and
    ``extensions`` (case-insensitive, without dots) and the ``limits``. With
    ``validate_content`` False only the file-kind, extension, empty and size checks run
    (for import types whose content we do not know).

    Returns a Report; it is ``ok`` when the file may be posted. Never raises for bad input
    and never blocks: a symbolic link, FIFO, device, socket or directory is refused without
    being read, a missing or unreadable file is reported as such.
    """
    display = name if name is not None else Path(path).name
    build = Builder(display, kind_of(display), 0, limits)
    try:
        fd = os.open(path, OPEN_FLAGS)
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        build.problem(None, open_failure(path, e))
        return build.done()
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            build.problem(None, f"is {file_kind(st.st_mode)}, not a regular file")
            return build.done()
        build.report.size = st.st_size
        wanted = {e.lower().lstrip(".") for e in extensions}
        ext = extension(display)
        if ext not in wanted:
            shown = f"the extension .{ext}" if ext else "no extension"
            accepted = ", ".join(f".{e}" for e in sorted(wanted)) or "none"
            build.problem(None, f"has {shown}; only files named {accepted} are taken")
            return build.done()
        with os.fdopen(fd, "rb", buffering=CHUNK) as f:
            fd = -1  # the file object owns the descriptor now
            _check_content(f, build, import_type, validate_content)
    except Exception as e:  # a safety net: never raise for a file, say what went wrong
        build.problem(None, internal(e))
    finally:
        if fd >= 0:
            os.close(fd)
    return build.done()


def check_open(
    f: BinaryIO,
    *,
    name: str,
    size: int,
    import_type: str = "instructure_csv",
    limits: Limits = DEFAULT_LIMITS,
    validate_content: bool = True,
) -> Report:
    """Check an already opened file, positioned at its start.

    Given a readable binary ``f`` (seekable for a zip), the display ``name`` (its extension
    decides CSV, zip or XML, as it does for Canvas), its ``size`` in bytes, the configured
    ``import_type`` and ``limits``. ``validate_content`` as in ``check_path``. ``f`` is read
    but neither closed nor required to be a real file.

    Returns a Report (empty, too big, and content problems; no file-kind or extension-list
    check). Never raises for bad content.
    """
    build = Builder(name, kind_of(name), size, limits)
    try:
        _check_content(f, build, import_type, validate_content)
    except Exception as e:
        build.problem(None, internal(e))
    return build.done()


def _check_content(f: BinaryIO, build: Builder, import_type: str, validate: bool) -> None:
    """The checks shared by check_path and check_open, into ``build``."""
    report, limits = build.report, build.limits
    if report.size == 0:
        build.problem(None, "is empty (0 bytes)")
        return
    if report.size > limits.max_bytes:
        build.problem(
            None,
            f"is {human(report.size)}: too big to post (the limit is {human(limits.max_bytes)})",
        )
        return
    if not validate:
        return
    try:
        if report.kind == "csv":
            digest = hashlib.sha256()
            capped = Capped(f, None, digest)
            result = scan_csv(io.BufferedReader(capped, CHUNK), report.name, build)
            if capped.count == report.size and capped.read(1) == b"":
                report.sha256 = digest.hexdigest()
            build.add_csv(
                Member(report.name, report.name, report.size, result.type_name, result.rows)
            )
        elif report.kind == "zip":
            check_zip(f, build)
        elif report.kind == "xml":
            check_xml(f, build, import_type)
        else:
            build.problem(
                None,
                "is not named .csv, .zip or .xml: Canvas decides by the extension "
                "and would import nothing from it",
            )
    except OSError as e:
        build.problem(None, f"could not be read ({e})")
