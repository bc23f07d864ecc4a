"""The CSV check, push-style: feed a CSV's bytes as they come, get the Report at the end.

``CsvCheck`` is the public push API: an uploader hands it each block it reads (and then
sends), and it checks and hashes them on the way; ``finish`` gives the Report that
``check_path`` gives for the same bytes. ``check_path`` itself feeds it, so there is one
CSV check, whoever reads the file. ``CsvScan`` is the check of one CSV stream, also used
for each CSV inside a zip: the byte-level pass (``csvbytes``: UTF-8 and quoting over every
byte, fatal) beside the deep part (``csvrows``: the header and the first rows).
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType

from sisdropd.preflight.csvbytes import ByteScan
from sisdropd.preflight.csvrows import RowCheck
from sisdropd.preflight.report import (
    DEFAULT_LIMITS,
    Builder,
    Limits,
    Member,
    Report,
    internal,
    size_problem,
)
from sisdropd.preflight.sisformat import CsvType

_BOM = b"\xef\xbb\xbf"
_QUEUED = 8  # blocks the background hash may lag behind the check (8 MiB of 1 MiB blocks)
_SLICE = 64 * 1024  # a fed block is hashed and checked this much at a time, in cache
_STRAY = (
    "Malformed CSV: a quote inside an unquoted value (column {column}); Canvas refuses it: "
    'quote the whole value and double the quote ("")'
)
_AFTER = (
    "Malformed CSV: text after the closing quote of a quoted value (column {column}); "
    "Canvas refuses it: a quoted value must end at a comma or the end of its line"
)
_OPEN = "Malformed CSV: a quoted value that never ends (in the record that begins on line {line})"
_MOVED = (
    "changed while it was read: a fault found in its bytes was not there when they were "
    "read again to say where it is"
)
_UTF8 = (
    "Invalid UTF-8 (byte 0x{byte:02X} at column {column}{also}): Canvas refuses the whole "
    "file; save it as UTF-8 ({guess})"
)
_LATIN = "it may be Latin-1 or Windows-1252"
_UTF16 = "it is UTF-16: it starts with a UTF-16 byte-order mark"


@dataclass
class CsvResult:
    """What one CSV stream turned out to be: its type (None if unrecognised) and data rows
    (None when the rows past the deep part were not counted)."""

    csv_type: CsvType | None = None
    rows: int | None = 0

    @property
    def type_name(self) -> str | None:
        return self.csv_type.name if self.csv_type else None


class CsvScan:
    """Check one CSV stream fed in consecutive blocks, reporting into ``build`` as ``label``.

    Warnings go to ``build`` as the rows are parsed; problems are held back and added by
    ``finish`` in line order, so that the Report is the same however the bytes were cut.
    With ``count=False`` the byte-level pass counts nothing (``ByteScan``): the rows past
    the deep part are not counted, and a fault's place in a problem means nothing.
    """

    def __init__(self, label: str, build: Builder, *, count: bool = True) -> None:
        self.label, self.build, self.count = label, build, count
        self._head = b""  # the first bytes, until it is known whether they hold a BOM
        self._bytes: ByteScan | None = None
        self._rows: RowCheck | None = None
        self._found: list[tuple[int | None, str]] = []

    @property
    def fatal(self) -> bool:
        """True when a problem is already known: the file will be refused."""
        scan = self._bytes
        return bool(self._found) or (scan is not None and (scan.fault is not None or scan.bad is not None))

    @property
    def placed(self) -> bool:
        """False when the problems' places are not known: a fault found by a pass that
        counted no lines (``count=False``)."""
        scan = self._bytes
        return self.count or scan is None or (scan.fault is None and scan.bad is None)

    def feed(self, block: bytes | bytearray) -> None:
        """Take the next bytes of the stream (not kept after this returns)."""
        scan, rows = self._bytes, self._rows
        if scan is None or rows is None:
            self._head += block
            if len(self._head) < len(_BOM):
                return
            self._start()
            return
        offset, known = scan.offset, scan.fault is not None
        scan.scan(block)
        if rows.active:
            if scan.fault is not None and not known:  # the deep part stops before it
                with memoryview(block) as view:
                    rows.feed(view[: scan.fault.offset - offset], stop=True)
            else:
                rows.feed(block)

    def _start(self) -> None:
        head, self._head = self._head, b""
        base = len(_BOM) if head.startswith(_BOM) else 0  # Canvas strips a BOM
        self._bytes = ByteScan(base, count=self.count)
        self._rows = RowCheck(self.label, self.build, self._found, base)
        if len(head) > base:
            self.feed(head[base:])

    def finish(self) -> CsvResult:
        """The end of the stream: add the problems to ``build`` and say what it held."""
        if self._bytes is None:
            self._start()
        scan, rows = self._bytes, self._rows
        assert scan is not None and rows is not None
        scan.finish()
        rows.finish(complete=scan.fault is None)
        found = [(line, 0, message) for line, message in self._found]
        fault = scan.fault
        if fault is not None:
            if fault.kind == "open":
                message = _OPEN.format(line=fault.record_line)
            else:
                message = (_STRAY if fault.kind == "stray" else _AFTER).format(column=fault.column)
            found.append((fault.line, 1, message))
        if scan.bad is not None:
            line, column, byte = scan.bad
            more = scan.bad_lines - 1
            also = f"; {more} more line{'s' if more > 1 else ''} too" if more > 0 else ""
            # 0xFF or 0xFE as the very first byte: a UTF-16 byte-order mark, never Latin-1 text.
            guess = _UTF16 if (line, column) == (1, 1) and byte in (0xFE, 0xFF) else _LATIN
            found.append((line, 2, _UTF8.format(byte=byte, column=column, also=also, guess=guess)))
        found.sort(key=lambda f: (f[0] if f[0] is not None else float("inf"), f[1]))
        for where, _, message in found:
            self.build.problem(where, message, self.label)
        if not rows.reached_cut:  # the deep part read every record
            return CsvResult(rows.csv_type, rows.rows)
        if not self.count:
            return CsvResult(rows.csv_type, None)
        more_rows = scan.records - rows.records  # the record ends the byte pass saw after it
        if fault is None and not scan.ends_with_line_end:
            more_rows += 1  # a last row without a line end
        return CsvResult(rows.csv_type, rows.rows + max(0, more_rows))


class CsvCheck:
    """The pre-flight check of one CSV, fed its bytes in order: the push API.

    ``CsvCheck(name, size=..., limits=..., validate_content=..., background=..., sha256=...)`` then
    ``feed(block)`` for each consecutive block of the file, then ``finish()`` for the
    Report. ``name`` is the display name (as ``check_path``'s ``name``), ``size`` the
    file's size in bytes as found by fstat before reading: an empty or too big file is
    refused at once (``fatal``) and its bytes only hashed; a file that turns out to hold
    another number of bytes than ``size`` is refused as changed while read.

    The Report equals ``check_path``'s for the same bytes, however they were cut into
    blocks: the same problems, warnings, counts, members, size, kind "csv", and ``sha256``,
    the SHA-256 of exactly the bytes fed (so that an uploader that sends the blocks it
    feeds need not hash them again). Only a file refused for its size differs: check_path
    does not read it (``sha256`` None) where CsvCheck hashed what it was fed.

    ``fatal`` turns True as soon as a problem is known, so that an upload can be cut short
    at once; ``finish`` is still needed for the Report. The check runs in ``feed``, in the
    caller's thread; with ``background=True`` the hashing runs on a thread of its own
    (hashlib releases the GIL, so it takes a second core) and ``feed`` blocks while 8
    blocks wait to be hashed. Blocks must then not change after ``feed`` (a bytearray or
    memoryview is copied; bytes are not). ``finish`` (or ``close``, or leaving a ``with``
    block) ends that thread; ``close`` abandons the check without a Report. With
    ``sha256=False`` nothing is hashed (``sha256`` None): for a caller that needs no hash,
    such as an uploader that sends the very blocks it feeds and keeps no record of them.

    With ``count_rows=False`` the byte-level pass past the deep part looks only for the
    fatal faults and counts no lines (``ByteScan(count=False)``: about three times as
    fast): the member's ``rows`` is None and ``counts`` has no entry for it, unless the
    deep part read the whole file. The verdict is the same. So are the problems: when the
    pass finds a fault, ``finish`` checks the file once more, counting, over the bytes
    that ``reread()`` gives (the file from its first byte again, in blocks), and returns
    that check's Report (with this one's ``sha256``); if the fault is not there the second
    time, the file is refused as changed while it was read. For a caller that keeps no
    record of the file (``sisdropd submit``); ``reread`` is then required.

    Memory is bounded whatever the file: a block is not kept once it is checked (with
    ``background``, up to 8 wait to be hashed), the byte-level pass works on 64 KiB pieces
    and the deep part holds at most one record (refused past 4 MiB) and a 64 KiB slice.

    Never raises for bad content; an internal error is reported as a problem.
    """

    def __init__(
        self,
        name: str,
        *,
        size: int,
        limits: Limits = DEFAULT_LIMITS,
        validate_content: bool = True,
        background: bool = False,
        sha256: bool = True,
        count_rows: bool = True,
        reread: Callable[[], Iterable[bytes]] | None = None,
    ) -> None:
        if not count_rows and reread is None:
            raise ValueError("count_rows=False needs reread: the places of a fault are found by reading again")
        self._build = Builder(name, "csv", size, limits)
        self._reread = None if count_rows else reread
        self._digest = hashlib.sha256() if sha256 else None
        self._size = size
        self._fed = 0
        self._error: Exception | None = None
        self._abandoned = False
        self._scan: CsvScan | None = None
        self._queue: queue.Queue[bytes | None] | None = None
        self._thread: threading.Thread | None = None
        refused = size_problem(size, limits)
        if refused:
            self._build.problem(None, refused)
        elif validate_content:
            self._scan = CsvScan(name, self._build, count=count_rows)
        if background and self._digest is not None:
            self._queue = queue.Queue(maxsize=_QUEUED)
            self._thread = threading.Thread(target=self._work, name=f"sha256 {name}"[:60], daemon=True)
            self._thread.start()

    @property
    def fatal(self) -> bool:
        """True once a problem is known among the bytes fed: the file will be refused."""
        return bool(self._build.report.problems) or self._error is not None or (
            self._scan is not None and self._scan.fatal
        )

    def feed(self, block: bytes | bytearray | memoryview) -> None:
        """Hash and check the next block of the file."""
        self._fed += len(block)
        if self._digest is None:  # the check alone
            if self._scan is not None and self._error is None:
                self._check(block if isinstance(block, (bytes, bytearray)) else bytes(block))
        elif self._queue is not None:  # hashed on the helper thread, while this one checks
            block = block if isinstance(block, bytes) else bytes(block)
            self._queue.put(block)
            if self._scan is not None and self._error is None:
                self._check(block)
        elif self._scan is None or self._error is not None:
            self._digest.update(block)
        else:
            for at in range(0, len(block), _SLICE):  # hashed and checked while in cache
                piece = block[at : at + _SLICE] if len(block) > _SLICE else block
                self._digest.update(piece)
                self._check(piece if isinstance(piece, (bytes, bytearray)) else bytes(piece))

    def finish(self) -> Report:
        """The end of the file: wait for the check and return the Report."""
        self._stop()
        build, scan = self._build, self._scan
        if not build.report.problems and self._fed != self._size:
            build.problem(
                None,
                f"changed while it was read: {self._fed} bytes, not the {self._size} it "
                "had when it was opened",
            )
        elif scan is not None and self._error is None:
            try:
                result = scan.finish()
                if not scan.placed:
                    return self._recheck()
                if result.csv_type is not None:
                    name = build.report.name
                    build.add_csv(Member(name, name, self._size, result.type_name, result.rows))
            except Exception as e:  # a safety net: never raise for a file
                self._error = e
        if self._error is not None:
            build.problem(None, internal(self._error))
        report = build.done()
        report.sha256 = self._digest.hexdigest() if self._digest is not None else None
        return report

    def _recheck(self) -> Report:
        """The Report of a counted check of the bytes ``reread`` gives (see the class)."""
        assert self._reread is not None
        name, limits = self._build.report.name, self._build.limits
        try:
            with CsvCheck(name, size=self._size, limits=limits, sha256=False) as again:
                for block in self._reread():
                    again.feed(block)
                report = again.finish()
        except OSError as e:
            build = Builder(name, "csv", self._size, limits)
            build.problem(None, f"could not be read again to say where its problem is ({e})")
            report = build.done()
        if report.ok:
            build = Builder(name, "csv", self._size, limits)
            build.problem(None, _MOVED)
            report = build.done()
        report.sha256 = self._digest.hexdigest() if self._digest is not None else None
        return report

    def close(self) -> None:
        """Abandon the check (no Report): stop its thread, if it has one."""
        self._abandoned = True
        self._stop()

    def __enter__(self) -> CsvCheck:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check(self, block: bytes | bytearray) -> None:
        assert self._scan is not None
        try:
            self._scan.feed(block)
        except Exception as e:  # a safety net: keep hashing, report it at the end
            self._error = e

    def _work(self) -> None:
        """The helper thread: hash blocks until the end (None) is queued."""
        assert self._queue is not None
        while (block := self._queue.get()) is not None:
            if not self._abandoned and self._digest is not None:
                self._digest.update(block)  # releases the GIL: runs beside the check

    def _stop(self) -> None:
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
