"""The local pre-flight check: would Canvas choke on this file, and why.

Run on every dropped file before anything is posted, and by ``sisdropd validate``. It
follows Canvas's own reading of a SIS upload (../shared/reference/canvas-sis-api.md
sections 2 and 10, and ``sisformat`` for the CSV types) closely enough that a file it
passes is one Canvas will at least start importing, and a file it refuses is one Canvas
would fail, import nothing from, or that is unsafe to open at all.

Everything here is bounded: a file is never followed through a symbolic link, never read
whole into memory, a zip member is never decompressed past the size its entry declares,
and an XML file is never allowed to declare entities. ``check_path`` and ``check_open``
report every problem in the returned ``Report`` and never raise for bad input.
"""

from __future__ import annotations

import csv
import difflib
import errno
import hashlib
import io
import os
import re
import stat
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from xml.parsers import expat

from sisdropd import sisformat
from sisdropd.sisformat import CsvType

XML_IMPORT_TYPES: frozenset[str] = frozenset({"ims_xml"})
"""Import types that read XML. Stock Canvas has none: its only type, instructure_csv, reads
CSV alone and ends an XML upload ``imported`` with nothing imported."""

_CHUNK = 64 * 1024
# One CSV record (a row and any lines its quoted values span) longer than this is refused:
# no SIS row comes near it, and it bounds memory on files that are not line-oriented text.
MAX_RECORD_CHARS = 4 * 1024 * 1024
_SHOWN = 120  # characters of a header or value quoted back in a message

_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)  # a symlink fails with ELOOP instead of being followed
    | getattr(os, "O_NONBLOCK", 0)  # a FIFO or device cannot block the open
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOCTTY", 0)  # a terminal device never becomes our controlling tty
)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a file: fatal in ``Report.problems``, informational in ``warnings``.

    ``file`` is the dropped file's name, or ``"<zip name>/<member path>"`` for a zip member;
    ``line`` the 1-based physical line (the header is line 1) or None when not about a line.
    """

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        """``file:line: message`` or ``file: message``, with control characters and
        undecodable bytes escaped so that the text is one printable line."""
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return _printable(f"{where}: {self.message}")


@dataclass(frozen=True)
class Member:
    """A CSV that Canvas would list in ``csv_attachments`` once it starts the import.

    ``name`` is the path inside the zip (for a plain CSV: the file's own name), ``basename``
    its last path component as Canvas lists it, ``size`` its uncompressed bytes,
    ``csv_type`` the sisformat plural type name, ``rows`` its data rows (header and blank
    lines excluded).
    """

    name: str
    basename: str
    size: int
    csv_type: str | None
    rows: int


@dataclass
class Report:
    """What the pre-flight check found in one file.

    ``kind`` is ``"csv"``, ``"zip"``, ``"xml"`` or ``"other"`` (from the name's extension).
    ``problems`` are fatal: the file must not be posted. ``warnings`` are row-level things
    Canvas skips with a warning and are informational only. ``counts`` holds data rows per
    SIS CSV type, summed over members; ``members`` the CSVs Canvas would list (for a zip:
    recognised, non-empty CSV members). ``sha256`` is set when the check read every byte
    of the file, so that the daemon need not read it once more to hash it.
    """

    name: str
    kind: str
    size: int
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    members: list[Member] = field(default_factory=list)
    sha256: str | None = None  # of every byte, when the check read the whole file (a CSV)

    @property
    def ok(self) -> bool:
        """True when there is no problem (warnings do not count)."""
        return not self.problems


@dataclass(frozen=True)
class Limits:
    """Bounds the check enforces; the defaults follow Canvas (section 2.2 of the reference)."""

    max_bytes: int = 20 * 1024**3  # files larger are refused ("too big to post")
    max_member_bytes: int = 10 * 1024**3  # one zip member's uncompressed size
    max_ratio: int = 100  # Canvas fails a zip whose content is > 100x its size
    max_problems: int = 20  # stop listing after this many problems (then one "and N more")
    max_warnings: int = 20


_DEFAULT_LIMITS = Limits()


# ---------------------------------------------------------------------------- entry points


def check_path(
    path: Path,
    *,
    name: str | None = None,
    import_type: str = "instructure_csv",
    extensions: Sequence[str] = ("csv", "xml", "zip"),
    limits: Limits = _DEFAULT_LIMITS,
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
    build = _Builder(display, _kind_of(display), 0, limits)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        build.problem(None, _open_failure(path, e))
        return build.done()
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            build.problem(None, f"is {_file_kind(st.st_mode)}, not a regular file")
            return build.done()
        build.report.size = st.st_size
        wanted = {e.lower().lstrip(".") for e in extensions}
        ext = _extension(display)
        if ext not in wanted:
            shown = f"the extension .{ext}" if ext else "no extension"
            accepted = ", ".join(f".{e}" for e in sorted(wanted)) or "none"
            build.problem(None, f"has {shown}; only files named {accepted} are taken")
            return build.done()
        with os.fdopen(fd, "rb", buffering=_CHUNK) as f:
            fd = -1  # the file object owns the descriptor now
            _check_content(f, build, import_type, validate_content)
    except Exception as e:  # a safety net: never raise for a file, say what went wrong
        build.problem(None, _internal(e))
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
    limits: Limits = _DEFAULT_LIMITS,
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
    build = _Builder(name, _kind_of(name), size, limits)
    try:
        _check_content(f, build, import_type, validate_content)
    except Exception as e:
        build.problem(None, _internal(e))
    return build.done()


# ------------------------------------------------------------------------------- plumbing


class _Builder:
    """A Report under construction, with the problem and warning lists capped."""

    def __init__(self, name: str, kind: str, size: int, limits: Limits) -> None:
        self.report = Report(name=name, kind=kind, size=size)
        self.limits = limits
        self._more_problems = 0
        self._more_warnings = 0

    def problem(self, line: int | None, message: str, file: str | None = None) -> None:
        if len(self.report.problems) < self.limits.max_problems:
            self.report.problems.append(Problem(file or self.report.name, line, message))
        else:
            self._more_problems += 1

    def warning(self, line: int | None, message: str, file: str | None = None) -> None:
        if len(self.report.warnings) < self.limits.max_warnings:
            self.report.warnings.append(Problem(file or self.report.name, line, message))
        else:
            self._more_warnings += 1

    def done(self) -> Report:
        name = self.report.name
        if self._more_problems:
            more = f"and {self._more_problems} more problems not listed"
            self.report.problems.append(Problem(name, None, more))
        if self._more_warnings:
            more = f"and {self._more_warnings} more warnings not listed"
            self.report.warnings.append(Problem(name, None, more))
        self._more_problems = self._more_warnings = 0
        return self.report

    def add_csv(self, member: Member) -> None:
        if member.csv_type is None:
            return
        counts = self.report.counts
        counts[member.csv_type] = counts.get(member.csv_type, 0) + member.rows
        self.report.members.append(member)


def _check_content(f: BinaryIO, build: _Builder, import_type: str, validate: bool) -> None:
    """The checks shared by check_path and check_open, into ``build``."""
    report, limits = build.report, build.limits
    if report.size == 0:
        build.problem(None, "is empty (0 bytes)")
        return
    if report.size > limits.max_bytes:
        build.problem(
            None,
            f"is {_human(report.size)}: too big to post (the limit is {_human(limits.max_bytes)})",
        )
        return
    if not validate:
        return
    try:
        if report.kind == "csv":
            digest = hashlib.sha256()
            capped = _Capped(f, None, digest)
            result = _scan_csv(io.BufferedReader(capped, _CHUNK), report.name, build)
            if capped.count == report.size and capped.read(1) == b"":
                report.sha256 = digest.hexdigest()
            build.add_csv(
                Member(report.name, report.name, report.size, result.type_name, result.rows)
            )
        elif report.kind == "zip":
            _check_zip(f, build)
        elif report.kind == "xml":
            _check_xml(f, build, import_type)
        else:
            build.problem(
                None,
                "is not named .csv, .zip or .xml: Canvas decides by the extension "
                "and would import nothing from it",
            )
    except OSError as e:
        build.problem(None, f"could not be read ({e})")


class _Capped(io.RawIOBase):
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


# ------------------------------------------------------------------------------------- CSV


@dataclass
class _CsvResult:
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
            self.first_line = line[:_SHOWN]
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


def _scan_rest(text: io.TextIOBase, lines: _Lines, label: str, build: _Builder) -> int:
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


def _scan_csv(raw: BinaryIO, label: str, build: _Builder) -> _CsvResult:
    """Read one CSV stream to the end and report on it as Canvas would.

    Given the binary stream (read, never closed: wrap a caller's file in ``_Capped``), the
    label used as Problem.file, and the builder to report into. Returns the recognised type,
    the data row count and whether the whole stream was read. Read errors (OSError, and
    zipfile/zlib errors from a member) propagate to the caller.
    """
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
    lines = _Lines(text, DEEP_CHARS)
    reader = csv.reader(lines, strict=True)
    result = _CsvResult()
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


def _check_header(t: CsvType, header: list[str], line: int, label: str, build: _Builder) -> bool:
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
    seen = _printable(",".join(row), _SHOWN)
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
            renames.append(f'"{_printable(cell, 40)}" as {match[0]}')
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


# ------------------------------------------------------------------------------------- zip

_DRIVE = re.compile(r"^[A-Za-z]:")


def _unsafe_path(name: str) -> str:
    """Why a zip entry's path could escape the folder it is extracted into, or ''."""
    if name.startswith(("/", "\\")):
        return "has an absolute path: refused, it could be written outside the extraction folder"
    if _DRIVE.match(name):
        return "has a drive-letter path: refused, it could be written outside the extraction folder"
    if ".." in re.split(r"[/\\]", name):
        return (
            "has a '..' path component: refused, it could be written outside the extraction folder"
        )
    return ""


def _basename(name: str) -> str:
    return re.split(r"[/\\]", name)[-1]


def _check_zip(f: BinaryIO, build: _Builder) -> None:
    """Check a zip without trusting it: entries and size bounds first, then each CSV."""
    limits, zip_name, zip_size = build.limits, build.report.name, build.report.size
    try:
        zf = zipfile.ZipFile(f)
    except Exception as e:  # garbage raises many kinds of error; all mean "not readable"
        if str(e) == "File is not a zip file":
            why = "no end-of-central-directory record: truncated upload?"
        else:
            why = _reason(e)
        build.problem(None, f"is not a readable zip ({why})")
        return
    with zf:
        infos = zf.infolist()
        to_read: list[zipfile.ZipInfo] = []
        csvs = empty_csvs = 0
        unbounded = False
        for info in infos:
            entry = info.filename
            label = f"{zip_name}/{entry}"
            unsafe = _unsafe_path(entry)
            if unsafe:
                build.problem(None, unsafe, label)
                continue
            ignored = sisformat.zip_entry_ignored(entry)
            lower = entry.lower()
            is_csv = not ignored and lower.endswith(".csv")
            if is_csv and info.file_size == 0:
                empty_csvs += 1  # Canvas skips it without a word
                continue
            csvs += is_csv
            # Canvas unpacks every entry, ignored ones too, before it looks at any.
            if info.file_size > limits.max_member_bytes:
                build.problem(
                    None,
                    f"unpacks to {_human(info.file_size)}, more than the "
                    f"{_human(limits.max_member_bytes)} allowed for one member",
                    label,
                )
                unbounded = True
            elif ignored:
                pass
            elif info.flag_bits & 0x1:
                build.problem(None, "is encrypted: Canvas cannot read it", label)
            elif lower.endswith(".zip"):
                build.problem(
                    None, "is a zip inside the zip: Canvas does not open nested zips", label
                )
            elif not is_csv:
                build.warning(None, "Skipping unknown file type (Canvas ignores it)", label)
            else:
                to_read.append(info)
        declared = sum(i.file_size for i in infos)
        if declared > limits.max_ratio * zip_size:
            build.problem(
                None,
                f"would unpack to {_human(declared)}, more than {limits.max_ratio} times its "
                f"{_human(zip_size)}: Canvas fails such a zip (a zip bomb?)",
            )
            unbounded = True
        if not csvs:
            only = " (only empty ones, which Canvas skips)" if empty_csvs else ""
            build.problem(None, f"contains no CSV files{only}: Canvas would import nothing")
        if unbounded:
            return  # never decompress what is already refused for its size
        for info in to_read:
            _check_member(zf, info, build)


def _check_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, build: _Builder) -> None:
    """Check one CSV member, reading no more than its declared size plus one byte."""
    label = f"{build.report.name}/{info.filename}"
    try:
        with zf.open(info) as member:
            capped = _Capped(member, info.file_size)  # type: ignore[arg-type]  # a ZipExtFile reads like one
            result = _scan_csv(io.BufferedReader(capped, _CHUNK), label, build)
    except Exception as e:  # corrupt data raises all sorts: BadZipFile, zlib.error, ValueError...
        build.problem(None, f"cannot be read from the zip ({_reason(e)})", label)
        return
    if capped.overflow:
        build.problem(
            None, f"holds more data than the {info.file_size} bytes its zip entry declares", label
        )
        return
    if result.complete and capped.count != info.file_size:
        build.problem(
            None,
            f"holds {capped.count} bytes but its zip entry declares {info.file_size}",
            label,
        )
        return
    build.add_csv(
        Member(
            info.filename, _basename(info.filename), info.file_size, result.type_name, result.rows
        )
    )


# ------------------------------------------------------------------------------------- XML


class _Refused(Exception):
    """An XML construct we refuse to parse further."""


def _check_xml(f: BinaryIO, build: _Builder, import_type: str) -> None:
    """Refuse XML for import types that read none; else check it is well-formed, streamed,
    with every entity declaration refused (no billion laughs, no external entities)."""
    if import_type not in XML_IMPORT_TYPES:
        build.problem(
            None,
            f"is XML, but import type {import_type!r} reads no XML: stock Canvas's "
            "instructure_csv import would accept it and end 'imported' with nothing imported; "
            "set [import] import_type to an XML type (ims_xml) to send XML",
        )
        return
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def refuse_declaration(name: str, *_: object) -> None:
        raise _Refused(f"declares the entity {name!r}: entity declarations are refused")

    def refuse_skipped(name: str, is_parameter: int) -> None:
        raise _Refused(
            f"uses the entity {name!r}, declared only in a DTD that is never read: refused"
        )

    parser.EntityDeclHandler = refuse_declaration
    parser.UnparsedEntityDeclHandler = refuse_declaration
    parser.SkippedEntityHandler = refuse_skipped
    parser.ExternalEntityRefHandler = lambda *_: 0  # 0: expat stops with an error
    try:
        while chunk := f.read(_CHUNK):
            parser.Parse(chunk, False)
        parser.Parse(b"", True)
    except _Refused as e:
        build.problem(parser.CurrentLineNumber, str(e))
    except expat.ExpatError as e:
        if e.code == expat.errors.codes[expat.errors.XML_ERROR_EXTERNAL_ENTITY_HANDLING]:
            build.problem(e.lineno, "refers to an external entity: external entities are refused")
        else:
            reason = expat.ErrorString(e.code)
            build.problem(e.lineno, f"is not well-formed XML: {reason} (column {e.offset + 1})")


# ------------------------------------------------------------------------------- [import]

_BOOLEANS = (
    "batch_mode",
    "multi_term_batch_mode",
    "skip_deletes",
    "override_sis_stickiness",
    "add_sis_stickiness",
    "clear_sis_stickiness",
    "update_sis_id_if_login_claimed",
    "diffing_remaster_data_set",
)
_DROP_STATUSES = ("deleted", "completed", "inactive", "deleted_last_completed")
_ENUMS: dict[str, tuple[str, ...]] = {
    "diffing_drop_status": _DROP_STATUSES,
    "batch_mode_enrollment_drop_status": _DROP_STATUSES,
    "diffing_user_remove_status": ("deleted", "suspended"),
}
IMPORT_PARAMS: tuple[str, ...] = (
    "import_type",
    "extension",
    *_BOOLEANS,
    "batch_mode_term_id",
    "diffing_data_set_identifier",
    *_ENUMS,
    "change_threshold",
    "diff_row_count_threshold",
)
"""Canvas's create parameters that [import] may set (all but the ``attachment`` itself)."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_import_params(params: Mapping[str, object]) -> list[str]:
    """Check the [import] table before anything is posted.

    Given the table as configured (keys are Canvas create parameter names, values str, bool
    or int). Returns one message per mistake, each starting ``import.<key>:``; an empty list
    means fine. These are the parameters Canvas rejects only after saving a batch that then
    stays ``initializing`` for ever (reference section 2.4), or that silently change what an
    import does. Never raises.
    """
    out: list[str] = []
    for key, value in params.items():
        if key not in IMPORT_PARAMS:
            out.append(
                f"import.{key}: unknown parameter; known: {', '.join(sorted(IMPORT_PARAMS))}"
            )
        elif key == "import_type":
            if not isinstance(value, str) or not value.strip():
                out.append(
                    "import.import_type: must be a non-empty string "
                    '("instructure_csv" is the only type stock Canvas has)'
                )
        elif key == "extension":
            if value not in ("csv", "zip", "xml"):
                out.append(f'import.extension: {value!r} is none of "csv", "zip", "xml"')
        elif key in _BOOLEANS:
            if not isinstance(value, bool):
                out.append(f"import.{key}: must be true or false, not {value!r}")
        elif key in _ENUMS:
            if value not in _ENUMS[key]:
                allowed = ", ".join(_ENUMS[key])
                out.append(f"import.{key}: {value!r} is not one of {allowed}")
        elif key == "change_threshold":
            if not _is_int(value) or not 1 <= value <= 100:  # type: ignore[operator]
                out.append(
                    f"import.change_threshold: must be a whole number 1 to 100, not {value!r}"
                )
        elif key == "diff_row_count_threshold":
            if not _is_int(value) or value <= 0:  # type: ignore[operator]
                out.append(
                    f"import.diff_row_count_threshold: must be a whole number above 0, not {value!r}"
                )
        elif key == "diffing_data_set_identifier":
            if not isinstance(value, str) or not value.strip():
                out.append("import.diffing_data_set_identifier: must be a non-empty string")
            elif len(value) > 128:
                out.append(
                    f"import.diffing_data_set_identifier: {len(value)} characters, Canvas allows 128"
                )
        elif key == "batch_mode_term_id":
            if not (_is_int(value) or (isinstance(value, str) and value.strip())):
                out.append(
                    "import.batch_mode_term_id: must be a term id or sis_term_id:<id>, "
                    f"not {value!r}"
                )
    if params.get("batch_mode") is True and "batch_mode_term_id" not in params:
        if "multi_term_batch_mode" not in params:
            out.append(
                "import.batch_mode: true needs batch_mode_term_id (or multi_term_batch_mode); "
                "Canvas answers 400"
            )
    if "multi_term_batch_mode" in params:
        if params["multi_term_batch_mode"] is False:
            out.append(
                "import.multi_term_batch_mode: Canvas turns multi-term batch mode on whenever "
                "the parameter is sent, even as false; remove the key instead"
            )
        if "change_threshold" not in params:
            out.append(
                "import.multi_term_batch_mode: needs change_threshold; Canvas answers 400 and "
                "leaves the import stuck in initializing"
            )
    if params.get("override_sis_stickiness") is not True:
        for key in ("add_sis_stickiness", "clear_sis_stickiness"):
            if params.get(key) is True:
                out.append(f"import.{key}: only works with override_sis_stickiness = true")
    return out


# --------------------------------------------------------------------------------- helpers


def _extension(name: str) -> str:
    base = _basename(name)
    return base.rsplit(".", 1)[1].lower() if "." in base else ""


def _kind_of(name: str) -> str:
    ext = _extension(name)
    return ext if ext in ("csv", "zip", "xml") else "other"


def _file_kind(mode: int) -> str:
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


def _open_failure(path: Path, err: OSError | ValueError) -> str:
    """Words for a failed open; lstat (which follows nothing) tells what the path is."""
    if isinstance(err, ValueError):
        return f"cannot be opened ({err})"
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        return "no longer exists"
    except (OSError, ValueError):
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        return "is a symbolic link; links are never followed"
    if err.errno == errno.ENOENT:
        return "no longer exists"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied: cannot read it (check its owner and mode)"
    if st is not None and not stat.S_ISREG(st.st_mode):
        return f"is {_file_kind(st.st_mode)}, not a regular file"
    return f"cannot be opened ({os.strerror(err.errno) if err.errno else err})"


def _reason(e: BaseException) -> str:
    """An exception's message as one printable line, or its type when it has none."""
    return _printable(str(e), _SHOWN) or type(e).__name__


def _internal(e: Exception) -> str:
    return (
        "could not be checked: internal error in the pre-flight check "
        f"({type(e).__name__}: {_reason(e)})"
    )


def _human(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    size = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            break
        size /= 1024
    return f"{size:.1f} {unit}"


def _printable(text: str, limit: int | None = None) -> str:
    """``text`` with undecodable bytes as ``\\xNN`` and control characters escaped, cut at
    ``limit`` characters (marked with an ellipsis)."""
    cut = limit is not None and len(text) > limit
    if cut:
        text = text[:limit]
    out = []
    for c in text:
        if c.isprintable():
            out.append(c)
        elif "\udc80" <= c <= "\udcff":  # an undecodable byte kept by surrogateescape
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        else:
            out.append(repr(c)[1:-1])
    return "".join(out) + ("…" if cut else "")


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
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return None
        kind = _kind_of(path.name)
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
        head = os.pread(fd, _CHUNK, 0)
        tail = os.pread(fd, _CHUNK, max(0, st.st_size - _CHUNK))
    finally:
        os.close(fd)
    if not tail.endswith((b"\n", b"\r")):
        last = tail.rsplit(b"\n", 1)[-1]
        header = head.split(b"\n", 1)[0]
        if b'"' not in last and b'"' not in header and last.count(b",") < header.count(b","):
            return f"the last row has {last.count(b',') + 1} of the header's {header.count(b',') + 1} fields and no line end"
        return "the last row does not end with a newline"
    return None
