"""What the Canvas simulator finds in an uploaded SIS file: CSVs, counts, messages.

:func:`analyse` reads an upload the way Canvas's CSV importer does (reference §9, §10):
a ``.csv`` is one CSV, a ``.zip`` is extracted (``__MACOSX`` and friends ignored, other
non-CSV members warned about), anything else holds nothing. Each CSV must be UTF-8 (BOM
allowed); its header alone decides its type via :mod:`sisdropd.preflight.sisformat`; rows with problems
are skipped with a warning. Files are processed in importer order. Everything is streamed
from disk; every message goes to a spool file, only the first 24 of each kind stay in memory.
"""

from __future__ import annotations

import codecs
import csv
import os
import shutil
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sisdropd.preflight.sisformat import (
    COUNT_KEYS,
    CSV_TYPES,
    UNRECOGNISED_HEADER,
    CsvType,
    normalise_header,
    recognise,
    row_problems,
    zip_entry_ignored,
)

CHUNK = 1 << 20
HEAD = 24  # messages kept in processing_errors / processing_warnings
INLINE_ROWS = 50  # Canvas's sis_batch_parallelism_count_threshold (counting 1 extra row)
ZIP_RATIO_LIMIT = 100
ZIP_HARD_LIMIT = 50 * 1024**3

# Statistics classes Canvas reports, with the counters each one has.
STAT_CLASSES: dict[str, tuple[str, ...]] = {
    "Account": ("created", "restored", "deleted"),
    "EnrollmentTerm": ("created", "restored", "deleted"),
    "AbstractCourse": ("created", "restored", "deleted"),
    "Course": ("created", "concluded", "restored", "deleted"),
    "CourseSection": ("created", "restored", "deleted"),
    "GroupCategory": ("created", "restored", "deleted"),
    "Group": ("created", "restored", "deleted"),
    "Pseudonym": ("created", "restored", "deleted"),
    "CommunicationChannel": ("created", "restored", "deleted"),
    "Enrollment": ("created", "concluded", "deactivated", "restored", "deleted"),
    "GroupMembership": ("created", "restored", "deleted"),
    "UserObserver": ("created", "restored", "deleted"),
    "AccountUser": ("created", "restored", "deleted"),
}
_STAT_OF_TYPE = {
    "accounts": "Account",
    "terms": "EnrollmentTerm",
    "abstract_courses": "AbstractCourse",
    "courses": "Course",
    "sections": "CourseSection",
    "users": "Pseudonym",
    "logins": "Pseudonym",
    "enrollments": "Enrollment",
    "admins": "AccountUser",
    "group_categories": "GroupCategory",
    "groups": "Group",
    "group_memberships": "GroupMembership",
    "user_observers": "UserObserver",
}
_TYPE_ORDER = {t.name: i for i, t in enumerate(CSV_TYPES)}


class Stopped(Exception):
    """Analysis was interrupted because the simulator is stopping."""


@dataclass
class Message:
    """One SIS batch error: ``kind`` is "error" (failure kind) or "warning" (row kind)."""

    kind: str
    file: str | None
    message: str
    row: int | None = None
    row_info: str | None = None


def empty_statistics() -> dict[str, object]:
    """Canvas's ``data.statistics`` with every counter at 0."""
    stats: dict[str, object] = {"total_state_changes": 0}
    for cls, keys in STAT_CLASSES.items():
        stats[cls] = dict.fromkeys(keys, 0)
    return stats


@dataclass
class Analysis:
    """The outcome of reading one upload.

    ``attachments``: (display name, path on disk, size) of every recognised CSV, in importer
    order. ``supplied``: singular importer names found. ``counts``: rows imported per
    COUNT_KEYS key. ``spool``: CSV of all messages (kind, file, message, row, row_info).
    ``inline``: small enough for Canvas to run it in one job (``data.running_immediately``).
    ``courses``/``sections``/``enrollments``: SIS ids seen (not deleted) with the id that
    ties each one to a term (course -> term_id, section -> course_id, enrollment ->
    course_id or section_id), for batch mode. ``terms``: term ids of the terms CSVs.
    """

    spool: Path
    attachments: list[tuple[str, Path, int]] = field(default_factory=list)
    supplied: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0))
    statistics: dict[str, object] = field(default_factory=empty_statistics)
    n_errors: int = 0
    n_warnings: int = 0
    head_errors: list[Message] = field(default_factory=list)
    head_warnings: list[Message] = field(default_factory=list)
    rows: int = 0
    inline: bool = True
    courses: dict[str, str] = field(default_factory=dict)
    sections: dict[str, str] = field(default_factory=dict)
    enrollments: dict[tuple[str, str, str, str], str] = field(default_factory=dict)
    terms: set[str] = field(default_factory=set)

    @property
    def state(self) -> str:
        """The final workflow_state the content alone gives."""
        if self.n_errors:
            return "failed_with_messages"
        return "imported_with_messages" if self.n_warnings else "imported"


# Rows past this many (per import) are counted without row checks or statistics, so that
# benchmarks can push gigabytes through the simulator; real Canvas checks every row.
ROW_CHECK_LIMIT = 200_000


class _Analyser:
    def __init__(self, workdir: Path, skip_deletes: bool, stop: Callable[[], bool]) -> None:
        self.workdir = workdir
        self.skip_deletes = skip_deletes
        self.stop = stop
        workdir.mkdir(parents=True, exist_ok=True)
        self.result = Analysis(spool=workdir / "messages.spool")
        self._spool_fh = open(self.result.spool, "w", encoding="utf-8", newline="")  # noqa: SIM115
        self._spool = csv.writer(self._spool_fh)
        self._n = 0

    def close(self) -> None:
        self._spool_fh.close()

    def add(self, msg: Message) -> None:
        r = self.result
        if msg.kind == "error":
            r.n_errors += 1
            if len(r.head_errors) < HEAD:
                r.head_errors.append(msg)
        else:
            r.n_warnings += 1
            if len(r.head_warnings) < HEAD:
                r.head_warnings.append(msg)
        row = "" if msg.row is None else str(msg.row)
        self._spool.writerow([msg.kind, msg.file or "", msg.message, row, msg.row_info or ""])

    def _tmp(self, suffix: str) -> Path:
        self._n += 1
        return self.workdir / f"{self._n:05d}{suffix}"

    # -- one CSV ---------------------------------------------------------------------------

    def prepare(self, path: Path, msgname: str) -> tuple[CsvType, list[str]] | None:
        """Check UTF-8 and the header row (Canvas's process_file).

        Returns the type and normalised header, or None: with an error added for invalid
        UTF-8, a malformed or unrecognised header; silently for a file without any row.
        """
        if path.stat().st_size == 0:
            return None  # Canvas lists no attachment for an empty CSV
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            with open(path, "rb") as fh:
                while block := fh.read(CHUNK):
                    decoder.decode(block)
                decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            self.add(Message("error", msgname, "Invalid UTF-8"))
            return None
        try:
            with open(path, encoding="utf-8-sig", newline="") as fh:
                header = next((row for row in csv.reader(fh, strict=True) if row), None)
        except csv.Error:
            self.add(Message("error", msgname, "Malformed CSV"))
            return None
        if header is None:
            return None  # only blank lines: Canvas's header loop never runs
        t = recognise(header)
        if t is None:
            self.add(Message("error", msgname, UNRECOGNISED_HEADER))
            return None
        return t, normalise_header(header)

    def count_rows(self, path: Path, msgname: str) -> int | None:
        """Data rows of a recognised CSV; None (and "Malformed CSV") if it does not parse.

        Canvas counts every CSV before importing anything, so a malformed file contributes
        no rows at all (it stays listed among the attachments).
        """
        rows = -1  # the header
        try:
            with open(path, encoding="utf-8-sig", newline="") as fh:
                for row in csv.reader(fh, strict=True):
                    if row:
                        rows += 1
                        if rows % 50000 == 0 and self.stop():
                            raise Stopped
        except csv.Error:
            self.add(Message("error", msgname, "Malformed CSV"))
            return None
        return max(rows, 0)

    def filtered_copy(self, path: Path, header: list[str]) -> tuple[Path, int] | None:
        """A users CSV without password columns, as Canvas lists it; None if none to drop."""
        drop = {i for i, c in enumerate(header) if c in ("password", "ssha_password")}
        if not drop:
            return None
        dst = self._tmp("_filtered.csv")
        with (
            open(path, encoding="utf-8-sig", newline="") as src,
            open(dst, "w", encoding="utf-8", newline="") as out,
        ):
            writer = csv.writer(out, lineterminator="\n")
            try:
                for row in csv.reader(src):
                    writer.writerow([v for i, v in enumerate(row) if i not in drop])
            except csv.Error:
                pass  # reported by the row pass
        return dst, dst.stat().st_size

    def rows(self, path: Path, t: CsvType, header: list[str], msgname: str) -> None:
        """Count, check and remember the data rows of one recognised CSV."""
        r = self.result
        col = {c: i for i, c in enumerate(header)}

        def get(row: list[str], *names: str) -> str:
            for n in names:
                i = col.get(n)
                if i is not None and i < len(row) and row[i].strip():
                    return row[i].strip()
            return ""

        stat_cls = _STAT_OF_TYPE.get(t.name)
        stats = r.statistics
        seen_header = False
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, strict=True)
            try:
                for row in reader:
                    if not row:
                        continue
                    if not seen_header:
                        seen_header = True
                        continue
                    r.rows += 1
                    if r.rows % 10000 == 0 and self.stop():
                        raise Stopped
                    if r.rows > ROW_CHECK_LIMIT:  # a simulator's shortcut: count, do not check
                        r.counts[t.name] = r.counts.get(t.name, 0) + 1
                        continue
                    problems = row_problems(t, header, row)
                    if problems:
                        info = ",".join(row)[:1000]
                        for p in problems:
                            self.add(Message("warning", msgname, p, reader.line_num, info))
                        continue
                    r.counts[t.name] = r.counts.get(t.name, 0) + 1
                    status = get(row, "status").lower()
                    if status == "deleted" and self.skip_deletes:
                        continue
                    if stat_cls:
                        key = _stat_key(stat_cls, status)
                        cls_stats = stats[stat_cls]
                        assert isinstance(cls_stats, dict)
                        cls_stats[key] += 1
                        if t.name == "users" and get(row, "email") and status != "deleted":
                            cc = stats["CommunicationChannel"]
                            assert isinstance(cc, dict)
                            cc["created"] += 1
                    deleted = status in ("deleted", "deleted_last_completed")
                    if t.name == "terms":
                        r.terms.add(get(row, "term_id"))
                    elif deleted:
                        pass
                    elif t.name == "courses":
                        r.courses[get(row, "course_id")] = get(row, "term_id")
                    elif t.name == "sections":
                        r.sections[get(row, "section_id")] = get(row, "course_id")
                    elif t.name == "enrollments":
                        course, section = get(row, "course_id"), get(row, "section_id")
                        key4 = (
                            course,
                            section,
                            get(row, "user_id", "user_integration_id"),
                            get(row, "role", "role_id"),
                        )
                        r.enrollments[key4] = course or section
            except csv.Error:
                self.add(Message("error", msgname, "Malformed CSV", reader.line_num))

    # -- uploads -----------------------------------------------------------------------------

    def run(self, found: list[tuple[str, str, Path, int]]) -> None:
        """Process CSVs given as (message name, display name, path, size), as Canvas does.

        Headers are checked in the order given (and recognised files listed in that order);
        rows are counted, then imported, in importer order. Row warnings name the file by
        its message name (path in the zip) when the import is small enough to run inline
        (at most 49 data rows in all), else by its display (base) name.
        """
        r = self.result
        ready: list[tuple[int, int, CsvType, list[str], str, str, Path]] = []
        for n, (msgname, display, path, size) in enumerate(found):
            prepared = self.prepare(path, msgname)
            if prepared is None:
                continue
            t, header = prepared
            listed = (display, path, size)
            if t.name == "users":
                copy = self.filtered_copy(path, header)
                if copy:
                    listed = (display.removesuffix(".csv") + "_filtered.csv", *copy)
            r.attachments.append(listed)
            ready.append((_TYPE_ORDER[t.name], n, t, header, msgname, display, path))
        ready.sort(key=lambda x: (x[0], x[1]))
        usable = []
        total = 0
        for item in ready:
            rows = self.count_rows(item[6], item[4])
            if rows is not None:
                usable.append(item)
                total += rows
        r.inline = total + 1 <= INLINE_ROWS
        for _, _, t, header, msgname, display, path in usable:
            if t.singular not in r.supplied:
                r.supplied.append(t.singular)
            self.rows(path, t, header, msgname if r.inline else display)

    def zip(self, upload: Path, name: str) -> None:
        """Extract the zip's CSVs and process them; unreadable zips give an error."""
        try:
            zf = zipfile.ZipFile(upload)
        except (zipfile.BadZipFile, OSError, ValueError):
            self.add(Message("error", name, "Unable to read zip file"))
            return
        found: list[tuple[str, str, Path, int]] = []
        with zf:
            infos = zf.infolist()
            total = sum(i.file_size for i in infos)
            if total > ZIP_HARD_LIMIT or total > ZIP_RATIO_LIMIT * max(1, upload.stat().st_size):
                self.add(
                    Message("error", name, "Zip file too large: uncompressed size exceeds limit")
                )
                return
            for info in sorted(infos, key=lambda i: i.filename):  # Canvas globs, sorted
                if info.is_dir() or zip_entry_ignored(info.filename):
                    continue
                if not info.filename.lower().endswith(".csv"):
                    self.add(Message("warning", info.filename, "Skipping unknown file type"))
                    continue
                dst = self._tmp(".csv")
                try:
                    with zf.open(info) as src, open(dst, "wb") as out:
                        shutil.copyfileobj(src, out, CHUNK)
                except (zipfile.BadZipFile, zlib.error, OSError, RuntimeError, NotImplementedError):
                    self.add(Message("error", info.filename, "Unable to extract file from zip"))
                    continue
                base = info.filename.replace("\\", "/").rsplit("/", 1)[-1]
                found.append((info.filename, base, dst, info.file_size))
        self.run(found)


def _stat_key(cls: str, status: str) -> str:
    if status in ("deleted", "deleted_last_completed"):
        return "deleted"
    if status == "completed" and cls in ("Course", "Enrollment"):
        return "concluded"
    if status == "inactive" and cls == "Enrollment":
        return "deactivated"
    return "created"


def total_state_changes(stats: dict[str, object]) -> int:
    """Sum of every per-class counter."""
    return sum(sum(v.values()) for v in stats.values() if isinstance(v, dict))


def analyse(
    upload: Path,
    kind: str,
    name: str,
    workdir: Path,
    *,
    skip_deletes: bool = False,
    stop: Callable[[], bool] = lambda: False,
) -> Analysis:
    """Read one stored upload as Canvas would.

    ``kind`` is "csv", "zip" or anything else (nothing processed); ``name`` is the stored
    file name (used in messages and as the CSV's display name). Scratch files (extracted
    CSVs, filtered copies, the message spool) go to ``workdir``. Raises Stopped if ``stop()``
    turns true while rows are being read.
    """
    a = _Analyser(workdir, skip_deletes, stop)
    try:
        if kind == "csv":
            a.run([(name, name, upload, os.path.getsize(upload))])
        elif kind == "zip":
            a.zip(upload, name)
    finally:
        a.close()
    stats = a.result.statistics
    stats["total_state_changes"] = total_state_changes(stats)
    return a.result
