"""The pre-flight check's entry points: a path, an open file descriptor, a file object.

``check_path`` (``sisdropd validate``, the daemon) opens a dropped file without following
links and hands the descriptor to ``check_fd``, which reads it with ``os.pread`` only
(its offset never moves) and dispatches by kind to the CSV, zip or XML check.
``check_open`` does the same for any binary file object. A push-style check of a CSV
whose bytes arrive block by block is ``csvcheck.CsvCheck``; ``check_fd`` uses it too.

Bad input is reported in the returned Report, never raised.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from sisdropd.preflight.csvcheck import CsvCheck
from sisdropd.preflight.files import (
    CHUNK,
    OPEN_FLAGS,
    extension,
    file_kind,
    kind_of,
    open_failure,
)
from sisdropd.preflight.report import (
    DEFAULT_LIMITS,
    Builder,
    Limits,
    Report,
    internal,
    size_problem,
)

EXTENSIONS = ("csv", "xml", "zip")
# CSVs this big are hashed on a thread of their own while the check runs (1.4 GB/s for a
# 1 GiB users CSV on two cores, against 0.9 GB/s in one thread); smaller ones in line.
_HASH_BESIDE = 4 * 1024 * 1024
# A file's change time (ctime) has the kernel's coarse clock for granularity: a jiffy, at
# most 10 ms. Once ctime is older than this, any write gives it a new value.
_TICK_NS = 50_000_000


def check_path(
    path: Path,
    *,
    name: str | None = None,
    import_type: str = "instructure_csv",
    extensions: Sequence[str] = EXTENSIONS,
    limits: Limits = DEFAULT_LIMITS,
    validate_content: bool = True,
) -> Report:
    """Check the file at ``path`` as Canvas would read it, without following links.

    Given the path, the display ``name`` used in every Problem (default: ``path.name``; the
    daemon passes the original dropped name), the configured ``import_type`` and
    ``extensions`` (case-insensitive, without dots) and the ``limits``. With
    ``validate_content`` False only the file-kind, extension, empty and size checks run
    (for import types whose content we do not know).

    Returns a Report; it is ``ok`` when the file may be posted. Its ``sha256`` is set
    when the check read every byte (a CSV, an XML file), not for a zip. Never raises for
    bad input and never blocks: a symbolic link, FIFO, device, socket or directory is
    refused without being read, a missing or unreadable file is reported as such.
    """
    display = name if name is not None else Path(path).name
    try:
        fd = os.open(path, OPEN_FLAGS)
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        build = Builder(display, kind_of(display), 0, limits)
        build.problem(None, open_failure(path, e))
        return build.done()
    try:
        return check_fd(
            fd,
            name=display,
            import_type=import_type,
            extensions=extensions,
            limits=limits,
            validate_content=validate_content,
        )
    finally:
        os.close(fd)


def check_fd(
    fd: int,
    *,
    name: str,
    import_type: str = "instructure_csv",
    extensions: Sequence[str] = EXTENSIONS,
    limits: Limits = DEFAULT_LIMITS,
    validate_content: bool = True,
    sha256: bool = False,
) -> Report:
    """Check the open file ``fd`` as ``check_path`` checks a path (same arguments).

    The file is read with ``os.pread`` alone: the descriptor's offset never moves, and it
    is neither closed nor read past what fstat said it holds at the start. A CSV is read
    once, checked and hashed in the same pass: ``sha256`` is always set for it. With
    ``sha256`` True the Report's ``sha256`` is that of the whole file for every kind:
    for a zip (checked by random access) the check is bracketed by fstat: size, mtime,
    ctime and inode are the same before and after the check and a hash pass over every
    byte, else the file is refused as changed while checked. ctime cannot be set by the
    file's writers, and the first fstat waits until ctime is older than a clock tick, so
    any write in between would have moved it: the check and the hash saw the same bytes.

    Never raises for bad input.
    """
    build = Builder(name, kind_of(name), 0, limits)
    try:
        if not _kind_checks(fd, build, extensions):
            return build.done()
        return _check_content(_FdSource(fd, build.report.size), build, import_type, validate_content, sha256)
    except Exception as e:  # a safety net: never raise for a file, say what went wrong
        build.problem(None, internal(e))
        return build.done()


def check_kind(
    fd: int, *, name: str, extensions: Sequence[str] = EXTENSIONS, limits: Limits = DEFAULT_LIMITS
) -> Report:
    """The part of ``check_fd`` that reads no content: ``fd`` is a regular file, ``name``
    has one of the ``extensions``, the file is neither empty nor bigger than ``limits``.

    For a caller that checks the content as it reads it (``CsvCheck``, fed the blocks it
    posts): the Report is ``ok`` when the content may be checked next; its ``size`` is
    fstat's. Never raises for bad input.
    """
    build = Builder(name, kind_of(name), 0, limits)
    try:
        if _kind_checks(fd, build, extensions):
            refused = size_problem(build.report.size, limits)
            if refused:
                build.problem(None, refused)
    except OSError as e:
        build.problem(None, f"could not be read ({e})")
    return build.done()


def _kind_checks(fd: int, build: Builder, extensions: Sequence[str]) -> bool:
    """A regular file with an accepted extension (its size set in the report); else a problem."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        build.problem(None, f"is {file_kind(st.st_mode)}, not a regular file")
        return False
    build.report.size = st.st_size
    wanted = {e.lower().lstrip(".") for e in extensions}
    ext = extension(build.report.name)
    if ext not in wanted:
        shown = f"the extension .{ext}" if ext else "no extension"
        accepted = ", ".join(f".{e}" for e in sorted(wanted)) or "none"
        build.problem(None, f"has {shown}; only files named {accepted} are taken")
        return False
    return True


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
        return _check_content(_FileSource(f), build, import_type, validate_content, False)
    except Exception as e:
        build.problem(None, internal(e))
        return build.done()


class _FdSource:
    """An open file read by ``os.pread`` only: as consecutive blocks, or as a file object."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size

    def blocks(self) -> Iterator[bytes]:
        offset = 0
        while block := os.pread(self.fd, CHUNK, offset):
            offset += len(block)
            yield block

    def file(self) -> BinaryIO:
        return io.BufferedReader(_PreadFile(self.fd, self.size), CHUNK)


class _FileSource:
    """A caller's file object, read from where it stands."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f

    def blocks(self) -> Iterator[bytes]:
        while block := self.f.read(CHUNK):
            yield block

    def file(self) -> BinaryIO:
        return self.f


class _PreadFile(io.RawIOBase):
    """A seekable read-only file over a descriptor, read with ``os.preadv``: its own
    position, the descriptor's offset untouched (``zipfile`` needs seek and tell)."""

    def __init__(self, fd: int, size: int) -> None:
        super().__init__()
        self._fd, self._size, self._at = fd, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = os.preadv(self._fd, [buffer], self._at)
        self._at += n
        return n

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        at = offset + (0, self._at, self._size)[whence]
        if at < 0:
            raise OSError(22, f"negative seek position {at}")
        self._at = at
        return at

    def tell(self) -> int:
        return self._at

    def close(self) -> None:  # the descriptor belongs to the caller
        super().close()


def _check_content(
    source: _FdSource | _FileSource, build: Builder, import_type: str, validate: bool, sha256: bool
) -> Report:
    """The checks shared by check_fd and check_open, into ``build``; its Report."""
    report, limits = build.report, build.limits
    refused = size_problem(report.size, limits)
    if refused:
        build.problem(None, refused)
        return build.done()
    if report.kind == "csv" and validate:
        background = report.size >= _HASH_BESIDE  # hash on a second core beside the check
        try:
            with CsvCheck(report.name, size=report.size, limits=limits, background=background) as check:
                for block in source.blocks():
                    check.feed(block)
                return check.finish()
        except OSError as e:
            build.problem(None, f"could not be read ({e})")
            return build.done()
    digest = hashlib.sha256()
    read_whole = changed = False

    def hashed() -> Iterator[bytes]:
        nonlocal read_whole
        for block in source.blocks():
            digest.update(block)
            yield block
        read_whole = True

    try:
        if validate and report.kind == "zip":
            if sha256 and isinstance(source, _FdSource):  # bracketed: see check_fd
                before = settled_stat(source.fd)
                check_zip(source.file(), build)
                for _ in hashed():
                    pass
                changed = stat_identity(before) != stat_identity(os.fstat(source.fd))
            else:
                check_zip(source.file(), build)
        elif validate and report.kind == "xml":
            check_xml(hashed(), build, import_type)
        elif validate:
            build.problem(
                None,
                "is not named .csv, .zip or .xml: Canvas decides by the extension "
                "and would import nothing from it",
            )
        if sha256 and not read_whole:
            for _ in hashed():
                pass
    except OSError as e:
        build.problem(None, f"could not be read ({e})")
    if changed:
        build.problem(
            None,
            "changed while it was checked (its size or times moved): what would be posted "
            "is not what was checked",
        )
    report = build.done()
    if read_whole and not changed:
        report.sha256 = digest.hexdigest()
    return report


def check_zip(f: BinaryIO, build: Builder) -> None:
    """``zipcheck.check_zip``, imported on first use: a CSV never needs it."""
    from sisdropd.preflight import zipcheck

    zipcheck.check_zip(f, build)


def check_xml(blocks: Iterator[bytes], build: Builder, import_type: str) -> None:
    """``xmlcheck.check_xml``, imported on first use: a CSV never needs it (nor expat)."""
    from sisdropd.preflight import xmlcheck

    xmlcheck.check_xml(blocks, build, import_type)


def stat_identity(st: os.stat_result) -> tuple[int, ...]:
    """What a write to a file changes, for an fstat before and after a read of it."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def settled_stat(fd: int) -> os.stat_result:
    """fstat, once the file's ctime is older than a clock tick (waiting at most 0.5 s), so
    that any later write gives it another ctime (see ``check_fd``)."""
    for _ in range(10):
        st = os.fstat(fd)
        wait = st.st_ctime_ns + _TICK_NS - time.time_ns()
        if wait <= 0:
            break
        time.sleep(min(wait, _TICK_NS) / 1e9)
    return st
