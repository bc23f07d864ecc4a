"""What the pre-flight check found: the Report, its Problems and Members, and the Limits.

``Builder`` assembles a Report with its problem and warning lists capped; the text helpers
make every message one printable line, whatever bytes a file or its name held.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SHOWN = 120  # characters of a header or value quoted back in a message


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
        return printable(f"{where}: {self.message}")


@dataclass(frozen=True)
class Member:
    """A CSV that Canvas would list in ``csv_attachments`` once it starts the import.

    ``name`` is the path inside the zip (for a plain CSV: the file's own name), ``basename``
    its last path component as Canvas lists it, ``size`` its uncompressed bytes,
    ``csv_type`` the sisformat plural type name, ``rows`` its data rows (header and blank
    lines excluded), or None when they were not counted (``CsvCheck(count_rows=False)``).
    """

    name: str
    basename: str
    size: int
    csv_type: str | None
    rows: int | None


@dataclass
class Report:
    """What the pre-flight check found in one file.

    ``kind`` is ``"csv"``, ``"zip"``, ``"xml"`` or ``"other"`` (from the name's extension).
    ``problems`` are fatal: the file must not be posted. ``warnings`` are row-level things
    Canvas skips with a warning and are informational only. ``counts`` holds data rows per
    SIS CSV type, summed over the members whose rows were counted; ``members`` the CSVs
    Canvas would list (for a zip: recognised, non-empty CSV members). ``sha256`` is set
    when the check read every byte of the file, so that the daemon need not read it once
    more to hash it.
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
    # A zip's entries and central directory, bounded before zipfile parses them (it builds
    # one ZipInfo of about 600 bytes per entry). A SIS export holds a few dozen CSVs at most;
    # 10,000 entries leaves room for one file per course of a big university. An entry
    # takes 46 bytes plus its name, extra fields (timestamps, zip64: typically 20-40 bytes)
    # and comment: 10,000 entries with 300-byte names and extras fit in 3.5 MiB, so 4 MiB.
    # Together they cap what the check holds for a zip's directory at about 10 MB.
    max_zip_entries: int = 10_000
    max_zip_directory: int = 4 * 1024**2
    max_problems: int = 20  # stop listing after this many problems (then one "and N more")
    max_warnings: int = 20


DEFAULT_LIMITS = Limits()


def size_problem(size: int, limits: Limits) -> str | None:
    """Why a file of ``size`` bytes is refused before its content is looked at, or None."""
    if size == 0:
        return "is empty (0 bytes)"
    if size > limits.max_bytes:
        return f"is {human(size)}: too big to post (the limit is {human(limits.max_bytes)})"
    return None


class Builder:
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
        if member.rows is not None:
            counts = self.report.counts
            counts[member.csv_type] = counts.get(member.csv_type, 0) + member.rows
        self.report.members.append(member)


def reason(e: BaseException) -> str:
    """An exception's message as one printable line, or its type when it has none."""
    return printable(str(e), SHOWN) or type(e).__name__


def internal(e: Exception) -> str:
    return (
        "could not be checked: internal error in the pre-flight check "
        f"({type(e).__name__}: {reason(e)})"
    )


def human(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    size = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            break
        size /= 1024
    return f"{size:.1f} {unit}"


def printable(text: str, limit: int | None = None) -> str:
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


