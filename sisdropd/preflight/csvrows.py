"""The deep part of the CSV check: a CSV's first records parsed one by one, as Canvas would.

The records that begin in the first DEEP_BYTES bytes (and, whatever its place, the header)
go through Python's csv reader: the header names the file's type and must hold its
required columns (fatal), and each row is checked as Canvas checks it (a missing value,
a bad status, more fields than the header: warnings, each with its line). Past that a
row costs nothing here: the byte-level pass (``csvbytes``) still checks every byte for
what is fatal, and counts the rest of the rows.

``RowCheck`` takes bytes as they come and parses only whole records (a record ends at a
line end outside quotes), so what it finds does not depend on how the bytes were cut.
"""

from __future__ import annotations

import csv
import io

from sisdropd.preflight import sisformat
from sisdropd.preflight.csvbytes import line_ends
from sisdropd.preflight.csvheader import missing_columns, unrecognised
from sisdropd.preflight.report import SHOWN, Builder, human
from sisdropd.preflight.sisformat import CsvType

# Rows checked one by one: 256 KiB, some 4,000 rows of a users CSV, parsed in about 8 ms.
# Row warnings are informational (Canvas reports every row it skips, and no more than
# Limits.max_warnings are listed), so a sample is enough; everything fatal is checked over
# the whole file by the byte-level pass. The row-by-row parse runs at some 35 MB/s, the
# byte-level pass at 2 GB/s: the sample was 1 MiB (30 ms), half of the whole check of a
# 64 MiB file, and that check is what a CSV's upload waits for (issue 15).
DEEP_BYTES = 256 * 1024
# One record (a row and any lines its quoted values span) longer than this, in the deep
# part, is refused: no SIS row comes near it, and it bounds what the parser holds.
MAX_RECORD_BYTES = 4 * 1024 * 1024

_SLICE = 64 * 1024  # bytes of records parsed at a time: bounds the text held at once
_QUOTE, _CR, _LF = 0x22, 0x0D, 0x0A

Found = list[tuple[int | None, str]]  # (line, message) of fatal problems, in finding order


class RowCheck:
    """Parse the first records of one CSV into ``build`` (warnings) and ``problems``.

    ``feed`` the bytes after any BOM (``base``: its length) in order; ``stop`` says they
    end where a quoting fault was found, and no later record may be parsed. ``finish``
    parses a last record without a line end. Then: ``csv_type`` (None if unrecognised),
    ``rows`` (data rows parsed, blank and valueless ones excluded), ``records`` (records
    consumed, blank lines and the header included), ``reached_cut`` (True when it stopped
    at the end of the deep part, so the byte-level pass counts the rows after it).
    """

    def __init__(self, label: str, build: Builder, problems: Found, base: int = 0) -> None:
        self.label, self.build, self.problems = label, build, problems
        self.active = True
        self.reached_cut = False
        self.fatal = False
        self.records = 0
        self.rows = 0
        self.csv_type: CsvType | None = None
        self._header: list[str] | None = None
        self._width = 0
        self._check: sisformat.RowChecker | None = None
        self._pending = bytearray()  # bytes after the last record parsed
        self._base = base  # file offset of _pending[0]
        self._lines = 0  # line ends before _pending
        self._first_line: str | None = None

    def feed(self, data: bytes | bytearray | memoryview, *, stop: bool = False) -> None:
        """Take the next bytes; parse the whole records among what has come."""
        if not self.active:
            return
        self._pending += data
        self._run(final=False)
        if stop:
            self.active = False

    def finish(self, *, complete: bool) -> None:
        """The end of the file; ``complete`` is False after a quoting fault."""
        if self.active and complete:
            self._run(final=True)
        if self._header is None and complete and not self.fatal:
            self.problems.append((None, "has no header row (only blank lines)"))
        self.active = False
        self._pending = bytearray()

    # -------------------------------------------------------------------------------------

    def _run(self, final: bool) -> None:
        """Parse the whole records among the pending bytes, a bounded slice at a time."""
        buf = self._pending
        while self.active and buf:
            deep_left = DEEP_BYTES - self._base
            past_deep = deep_left <= 0  # only blank lines so far: parse up to the header
            # Parse up to the first record end at or past a slice's length, or past the
            # deep part's end: the records that begin before DEEP_BYTES are the deep part.
            search = (_SLICE if past_deep else min(deep_left, _SLICE)) - 1
            end = _record_end_from(buf, search, final) if search < len(buf) else None
            if end is None:
                end = _last_record_end(buf, final)
            if end is None:
                if len(buf) > MAX_RECORD_BYTES:
                    self._refuse_long_record(0)
                return
            if end > MAX_RECORD_BYTES and self._long_record(buf, end, final):
                return
            cut = not past_deep and end >= deep_left  # the record that crosses the line
            text = buf[:end].decode("utf-8", "surrogateescape")
            del buf[:end]
            self._base += end
            self._parse(text, past_deep)
            if self.active and self._header is not None and (cut or past_deep):
                self.reached_cut, self.active = True, False

    def _parse(self, text: str, past_deep: bool) -> None:
        """Parse whole records; ``past_deep``: stop right after the header if it comes."""
        if self._first_line is None:
            ends = [i for i in (text.find("\n"), text.find("\r")) if i >= 0]
            self._first_line = text[: min([*ends, SHOWN])]
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        before, done = self._lines, 0  # line ends before the text; lines read of it
        label, warn, check, width = self.label, self.build.warning, self._check, self._width
        records = rows = 0
        try:
            for row in reader:
                start, done = before + done + 1, reader.line_num
                records += 1
                if self._header is None:
                    if row and not self._take_header(row, start):
                        return
                    check, width = self._check, self._width
                    if self._header is not None and past_deep:
                        return
                    continue
                if not "".join(row).strip():  # Canvas skips rows without a value
                    continue
                rows += 1
                if len(row) > width:
                    warn(
                        start,
                        f"has {len(row)} fields but the header has {width}: "
                        "a comma in an unquoted value? Canvas skips or misreads this row",
                        label,
                    )
                elif check is not None:
                    for message in check(row):
                        warn(start, message, label)
        except csv.Error as e:  # the byte-level pass found the quoting whole: a value too long
            line = before + reader.line_num
            where = f" (in the record that begins on line {before + done + 1})" if before + done + 1 < line else ""
            self.problems.append((line, f"Malformed CSV: {e}{where}"))
            self.fatal, self.active = True, False
            return
        finally:
            self.records += records
            self.rows += rows
        self._lines = before + reader.line_num

    def _take_header(self, row: list[str], line: int) -> bool:
        """Recognise the header; False when it names no type (nothing more is parsed)."""
        csv_type = sisformat.recognise(row)
        if csv_type is None:
            self.problems.append((line, unrecognised(row, self._first_line or "")))
            self.fatal, self.active = True, False
            return False
        header = sisformat.normalise_header(row)
        self.csv_type, self._header, self._width = csv_type, header, len(header)
        missing = missing_columns(csv_type, header)
        if missing:  # every row would warn alike: one problem says it
            self.problems.append((line, missing))
            self.fatal = True
        else:
            self._check = sisformat.row_checker(csv_type, header)
        return True

    def _long_record(self, buf: bytearray, end: int, final: bool) -> bool:
        """Refuse the first record longer than MAX_RECORD_BYTES in ``buf[:end]``, if any."""
        start = 0
        while start < end:
            stop = _record_end_from(buf, start, final, odd=0) or end
            if stop - start > MAX_RECORD_BYTES:
                self._refuse_long_record(start)
                return True
            start = stop
        return False

    def _refuse_long_record(self, start: int) -> None:
        line = self._lines + 1 + line_ends(bytes(self._pending[:start]))
        self.problems.append(
            (
                line,
                f"Malformed CSV: a record longer than {human(MAX_RECORD_BYTES)} "
                "(an unterminated quote, or not a text file?)",
            )
        )
        self.fatal, self.active = True, False
        self._pending = bytearray()


def _last_record_end(buf: bytearray, final: bool) -> int | None:
    """Where the last whole record in ``buf`` (which starts at a record's start) ends."""
    size = len(buf)
    quotes = buf.count(b'"')
    if final:
        return size if size and quotes % 2 == 0 else None
    pos, after = size, 0
    while True:
        i = max(buf.rfind(b"\n", 0, pos), buf.rfind(b"\r", 0, pos))
        if i < 0:
            return None
        after += buf.count(b'"', i + 1, pos)
        if buf[i] == _CR and i + 1 == size:  # a \n may follow in the next block
            pos = i
            continue
        if (quotes - after) % 2 == 0:
            return i + 1
        pos = i


def _record_end_from(
    buf: bytearray, start: int, final: bool, odd: int | None = None
) -> int | None:
    """Where the first record that ends at or after ``buf[start]`` ends, if known yet;
    ``odd``: whether ``buf[:start]`` holds an odd number of quotes, when known."""
    if odd is None:
        odd = buf.count(b'"', 0, start) % 2
    pos, size = start, len(buf)
    while True:
        ends = [i for i in (buf.find(b"\n", pos), buf.find(b"\r", pos)) if i >= 0]
        if not ends:
            inside = (odd + buf.count(b'"', pos)) % 2
            return size if final and size and not inside else None
        i = min(ends)
        odd = (odd + buf.count(b'"', pos, i)) % 2
        if not odd:
            if buf[i] == _LF:
                return i + 1
            if i + 1 < size:
                return i + 2 if buf[i + 1] == _LF else i + 1
            return i + 1 if final else None
        pos = i + 1
