"""The CSV check: read a SIS CSV as Canvas would and say what it would refuse or skip.

The first DEEP_CHARS characters are parsed record by record (type, required columns and
values, statuses, quoting, each problem with its physical line); the rest of a bigger file
gets a fast pass that still reads every byte (UTF-8, quoting, a row count).
"""

from __future__ import annotations

import csv
import difflib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from sisdropd.preflight import sisformat
from sisdropd.preflight.report import SHOWN, Builder, printable
from sisdropd.preflight.sisformat import CsvType

# One CSV record (a row and any lines its quoted values span) longer than this is refused:
# no SIS row comes near it, and it bounds memory on files that are not line-oriented text.
MAX_RECORD_CHARS = 4 * 1024 * 1024


class Capped(io.RawIOBase):
    """A read-only view of ``inner`` that hands out at most ``limit + 1`` bytes.

    Counts what it handed out; one byte past the limit is enough to prove a zip member
    holds more than its entry declares, and nothing more is ever read. ``limit`` None means
    no limit. Closing it leaves ``inner`` open.
    """

    def __init__(self, inner: BinaryIO, limit: int | None, digest: Any = None) -> None:
        super().__init__()
        self._inner = inner
        self._limit = limit
        self._digest = digest  # a hashlib object fed every byte handed out, or None
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        want = len(buffer)
        if self._limit is not None:
            want = min(want, self._limit + 1 - self.count)
            if want <= 0:
                return 0
        data = self._inner.read(want)
        n = len(data)
        buffer[:n] = data
        self.count += n
        if self._digest is not None:
            self._digest.update(data)
        return n

    @property
    def overflow(self) -> bool:
        return self._limit is not None and self.count > self._limit


@dataclass
class CsvResult:
    csv_type: CsvType | None = None
    rows: int = 0
    complete: bool = False  # read to the end without a fatal problem

    @property
    def type_name(self) -> str | None:
        return self.csv_type.name if self.csv_type else None


class _Malformed(Exception):
    """A fatal CSV problem found while reading lines, with its physical line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (surrogateescape)
_QUOTE_OR_BREAK = re.compile('[",\r\n]')


def _stray_quote(line: str, in_quotes: bool) -> tuple[bool, int | None]:
    """Follow quoting through one physical line the way Canvas's (Ruby's) CSV parser does.

    Given the line and whether it starts inside a quoted value, returns whether it ends
    inside one and the 0-based column of a quote inside an unquoted value (None if none).
    Ruby refuses such a quote ("Illegal quoting") and Canvas fails the whole file as
    Malformed CSV, while Python's csv module quietly keeps it, hence this check. The
    other quoting faults are left to ``csv`` in strict mode.
    """
    i, n = 0, len(line)
    field_start: int | None = None if in_quotes else 0
    while i <= n:
        if in_quotes:
            j = line.find('"', i)
            if j < 0:
                return True, None
            if line.startswith('"', j + 1):  # "" is an escaped quote
                i = j + 2
                continue
            in_quotes, field_start, i = False, None, j + 1
            continue
        m = _QUOTE_OR_BREAK.search(line, i)
        if m is None:
            return False, None
        j = m.start()
        if line[j] == '"':
            if j != field_start:
                return False, j
            in_quotes = True
        else:
            field_start = j + 1
        i = j + 1
    return in_quotes, None


class _Lines:
    """The physical lines of a CSV, for ``csv.reader``, checked on the way through.

    Lines are split as ``newline=''`` text is (``\\n``, ``\\r\\n`` or ``\\r``, kept), so its
    count is the physical line number. Records the first line holding bytes that are not
    UTF-8, raises ``_Malformed`` for a quote inside an unquoted value and for a record
    longer than MAX_RECORD_CHARS (``record_chars`` is reset by the reader's consumer after
    each row).
    """

    def __init__(self, text: io.TextIOBase, deep_chars: int | None = None) -> None:
        self._text = text
        self.deep_chars = deep_chars
        self.chars = 0
        self.stopped_early = False  # stopped at a record boundary after deep_chars
        self.number = 0
        self.record_chars = 0
        self._in_quotes = False
        self.bad_line: int | None = None
        self.bad_detail = ""
        self.bad_lines = 0
        self.first_line = ""

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self.deep_chars is not None and self.chars > self.deep_chars and not self._in_quotes:
            self.stopped_early = True  # the rest gets the fast pass (_scan_rest)
            raise StopIteration
        line = self._text.readline(MAX_RECORD_CHARS + 1)
        if not line:
            raise StopIteration
        self.chars += len(line)
        self.number += 1
        if self.number == 1:
            self.first_line = line[:SHOWN]
        self.record_chars += len(line)
        if self.record_chars > MAX_RECORD_CHARS:
            raise _Malformed(
                self.number,
                f"Malformed CSV: a record longer than {MAX_RECORD_CHARS // 1024**2} MiB "
                "(an unterminated quote, or not a text file?)",
            )
        bad = _UNDECODED.search(line)
        if bad:
            self.bad_lines += 1
            if self.bad_line is None:
                self.bad_line = self.number
                byte = ord(bad.group()) - 0xDC00
                self.bad_detail = f"byte 0x{byte:02X} at column {bad.start() + 1}"
        if '"' in line:
            self._in_quotes, col = _stray_quote(line, self._in_quotes)
            if col is not None:
                raise _Malformed(
                    self.number,
                    f"Malformed CSV: a quote inside an unquoted value (column {col + 1}); "
                    'Canvas refuses it: quote the whole value and double the quote ("")',
                )
        return line


# The first this many characters of a CSV are parsed record by record (types, required
# values, statuses, quoting: each problem with its line); the rest of a bigger file gets
# a fast pass that still reads every byte: UTF-8, balanced quotes, and a row count (line
# ends, so a quoted value holding a line break, or a blank line, counts as a row there). A 1 GiB export is
# checked in seconds instead of minutes; Canvas still reports every row it skips.
DEEP_CHARS = 4 * 1024 * 1024
_REST_CHUNK = 1 << 20


def _scan_rest(text: io.TextIOBase, lines: _Lines, label: str, build: Builder) -> int:
    """The fast pass over what ``lines`` left unread; returns the data rows it counted.

    Every byte is read: bytes that are not UTF-8 and quoting faults (a quote inside an
    unquoted value, an unterminated quoted value) are found with their lines; lines
    without a quote, outside a quoted value, cost one count.
    """
    newlines = 0
    last = "\n"
    bad_line: int | None = None
    bad_lines = 0
    in_quotes = False
    stray: tuple[int, int] | None = None  # (line, column) of the first quote fault
    carry = ""  # the incomplete last line of the previous block
    cursor = lines.number + 1  # the physical line at which ``carry`` starts

    def follow_quotes(block: str) -> None:
        nonlocal in_quotes, stray, cursor
        for line in block.splitlines(keepends=True):
            if stray is None and (in_quotes or '"' in line):
                in_quotes, col = _stray_quote(line, in_quotes)
                if col is not None:
                    stray = (cursor, col)
            cursor += 1

    while chunk := text.read(_REST_CHUNK):
        if not chunk.isascii():  # (instant) only then look for bytes that were not UTF-8
            try:
                chunk.encode("utf-8")  # a surrogate from surrogateescape fails here, in C
            except UnicodeEncodeError as e:
                if bad_line is None:
                    bad_line = lines.number + newlines + chunk.count("\n", 0, e.start) + 1
                bad_lines += 1
        n = chunk.count("\n")
        newlines += n or chunk.count("\r")
        last = chunk[-1]
        if stray is None and (in_quotes or carry or '"' in chunk):
            data = carry + chunk
            cut = max(data.rfind("\n"), data.rfind("\r")) + 1
            carry = data[cut:]
            follow_quotes(data[:cut])
        else:
            cursor += n
    if carry and stray is None:
        follow_quotes(carry)
    if bad_line is not None and lines.bad_line is None:
        lines.bad_line, lines.bad_detail, lines.bad_lines = bad_line, "a byte that is not UTF-8", bad_lines
    if stray is not None:
        build.problem(
            stray[0],
            f"Malformed CSV: a quote inside an unquoted value (column {stray[1] + 1}); "
            'Canvas refuses it: quote the whole value and double the quote ("")',
            label,
        )
    elif in_quotes:
        build.problem(
            lines.number + 1,
            "Malformed CSV: a quoted value that never ends (after this line)",
            label,
        )
    return max(0, newlines + (0 if last in "\r\n" else 1))


def scan_csv(raw: BinaryIO, label: str, build: Builder) -> CsvResult:
    """Read one CSV stream to the end and report on it as Canvas would.

    Given the binary stream (read, never closed: wrap a caller's file in ``Capped``), the
    label used as Problem.file, and the builder to report into. Returns the recognised type,
    the data row count and whether the whole stream was read. Read errors (OSError, and
    zipfile/zlib errors from a member) propagate to the caller.
    """
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
    lines = _Lines(text, DEEP_CHARS)
    reader = csv.reader(lines, strict=True)
    result = CsvResult()
    header: list[str] | None = None
    check_rows = False
    last_line = 0  # physical line the previous record ended on
    try:
        for row in reader:
            start, last_line = last_line + 1, reader.line_num
            lines.record_chars = 0
            if header is None:
                if not row:  # blank lines before the header
                    continue
                header = sisformat.normalise_header(row)
                result.csv_type = sisformat.recognise(row)
                if result.csv_type is None:
                    build.problem(start, _unrecognised(row, lines.first_line), label)
                    return result
                check_rows = _check_header(result.csv_type, header, start, label, build)
                continue
            if not any(cell.strip() for cell in row):  # Canvas skips rows without a value
                continue
            result.rows += 1
            if len(row) > len(header):
                build.warning(
                    start,
                    f"has {len(row)} fields but the header has {len(header)}: "
                    "a comma in an unquoted value? Canvas skips or misreads this row",
                    label,
                )
            elif check_rows and result.csv_type is not None:
                for message in sisformat.row_problems(result.csv_type, header, row):
                    build.warning(start, message, label)
        if lines.stopped_early and header is not None:
            result.rows += _scan_rest(text, lines, label, build)
        result.complete = True
    except csv.Error as e:
        begins = last_line + 1
        where = f" (in the record that begins on line {begins})" if begins < reader.line_num else ""
        build.problem(reader.line_num, f"Malformed CSV: {e}{where}", label)
    except _Malformed as e:
        build.problem(e.line, str(e), label)
    finally:
        if lines.bad_line is not None:
            more = lines.bad_lines - 1
            also = f"; {more} more line{'s' if more > 1 else ''} too" if more else ""
            build.problem(
                lines.bad_line,
                f"Invalid UTF-8 ({lines.bad_detail}{also}): Canvas refuses the whole file; "
                "save it as UTF-8 (it may be Latin-1 or Windows-1252)",
                label,
            )
    if header is None:
        if result.complete:
            build.problem(None, "has no header row (only blank lines)", label)
        result.complete = False
    return result


def _check_header(t: CsvType, header: list[str], line: int, label: str, build: Builder) -> bool:
    """Report required columns missing from a recognised header; True if rows are worth
    checking one by one (a missing column would make every row warn alike)."""
    if not t.validated:
        return False
    present = set(header)
    missing = [g for g in t.required if not any(c in present for c in g)]
    if missing:
        names = ", ".join(" or ".join(g) for g in missing)
        build.problem(
            line,
            f"{t.name} CSV without the required column{'s' if len(missing) > 1 else ''} "
            f"{names}: Canvas would skip every row with a warning and import nothing",
            label,
        )
    return not missing


def _unrecognised(row: list[str], first_line: str) -> str:
    """Canvas's message for a header that matches no type, with what we saw and a hint."""
    seen = printable(",".join(row), SHOWN)
    message = f'{sisformat.UNRECOGNISED_HEADER}: the header "{seen}" matches no SIS CSV type'
    hint = _header_hint(row, first_line)
    return f"{message} ({hint})" if hint else message


def _header_hint(row: list[str], first_line: str) -> str:
    """A cheap guess at why a header was not recognised, or ''."""
    if first_line.startswith("PK\x03\x04"):
        return "the file is a zip archive or an Excel workbook, not CSV text"
    if first_line[:2] in ("\udcff\udcfe", "\udcfe\udcff"):
        return "the file is UTF-16 text; save it as CSV UTF-8"
    if len(row) == 1:
        for sep, sep_name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
            if sep in row[0]:
                return f"its columns are separated by {sep_name}; Canvas reads commas only"
    header = sisformat.normalise_header(row)
    renames, fixed = [], []
    for cell in header if len(header) <= _MAX_FUZZY_CELLS else ():
        guess = cell.replace(" ", "_").replace("-", "_")
        match = difflib.get_close_matches(guess, _COLUMNS, n=1, cutoff=0.75)
        if cell not in _COLUMNS and match:
            renames.append(f'"{printable(cell, 40)}" as {match[0]}')
            fixed.append(match[0])
        else:
            fixed.append(cell)
    fixed_type = sisformat.recognise(fixed) if renames else None
    if fixed_type is not None:
        return f"with {', '.join(renames)} it would read as {fixed_type.name}"
    # Else the one type whose required columns it comes closest to, if there is one.
    present = set(header)
    scored = []
    for t in sisformat.CSV_TYPES:
        groups = [g for g in t.required if g != ("status",)]
        lacking = [" or ".join(g) for g in groups if not any(c in present for c in g)]
        if len(lacking) < len(groups):
            scored.append((len(groups) - len(lacking), -len(lacking), t.name, lacking))
    scored.sort(reverse=True)
    if not scored or (len(scored) > 1 and scored[0][:2] == scored[1][:2]):
        return ""
    _, _, name, lacking = scored[0]
    return f"closest to {name}, which also needs {', '.join(lacking)}"


# Every column name the type table requires: the words a mistyped header cell is matched to.
_COLUMNS = sorted({c for t in sisformat.CSV_TYPES for g in t.required for c in g})
_MAX_FUZZY_CELLS = 64  # wider headers get no spelling hint: difflib per cell is not free
