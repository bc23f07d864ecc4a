"""The zip check: entries and size bounds first, then each CSV member as the CSV check reads it.

A zip is never trusted: an entry whose path could escape the extraction folder, an
encrypted or nested one, or sizes that would unpack past Canvas's limits are refused
before anything is decompressed, and no member is ever read past the size it declares.
"""

from __future__ import annotations

import io
import re
import zipfile
from typing import BinaryIO

from sisdropd.preflight import sisformat
from sisdropd.preflight.csvcheck import CsvScan
from sisdropd.preflight.files import CHUNK, basename
from sisdropd.preflight.report import Builder, Member, human, reason
from sisdropd.preflight.zipdirectory import directory_problem, not_a_zip, starts_like_zip

_DRIVE = re.compile(r"^[A-Za-z]:")


class Capped(io.RawIOBase):
    """A read-only view of ``inner`` that hands out at most ``limit + 1`` bytes.

    Counts what it handed out; one byte past the limit is enough to prove a zip member
    holds more than its entry declares, and nothing more is ever read. Closing it leaves
    ``inner`` open.
    """

    def __init__(self, inner: BinaryIO, limit: int) -> None:
        super().__init__()
        self._inner = inner
        self._limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left under the cap for -1), without a copy."""
        left = self._limit + 1 - self.count
        data = self._inner.read(left if size < 0 else min(size, left)) if left > 0 else b""
        self.count += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    @property
    def overflow(self) -> bool:
        return self.count > self._limit


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


def check_zip(f: BinaryIO, build: Builder) -> None:
    """Check a zip without trusting it: entries and size bounds first, then each CSV."""
    limits, zip_name, zip_size = build.limits, build.report.name, build.report.size

    def read_at(offset: int, size: int) -> bytes:
        f.seek(offset)
        return f.read(size)

    too_big = directory_problem(read_at, zip_size, limits.max_zip_entries, limits.max_zip_directory)
    if too_big:
        build.problem(None, too_big)
        return
    try:
        zf = zipfile.ZipFile(f)
    except Exception as e:  # garbage raises many kinds of error; all mean "not readable"
        if str(e) == "File is not a zip file":  # zipfile found no end record
            f.seek(0)
            head = f.read(512)
            if starts_like_zip(head):
                why = "no end-of-central-directory record: truncated upload?"
            else:
                why = not_a_zip(head)
        else:
            why = reason(e)
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
                    f"unpacks to {human(info.file_size)}, more than the "
                    f"{human(limits.max_member_bytes)} allowed for one member",
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
                f"would unpack to {human(declared)}, more than {limits.max_ratio} times its "
                f"{human(zip_size)}: Canvas fails such a zip (a zip bomb?)",
            )
            unbounded = True
        if not csvs:
            only = " (only empty ones, which Canvas skips)" if empty_csvs else ""
            build.problem(None, f"contains no CSV files{only}: Canvas would import nothing")
        if unbounded:
            return  # never decompress what is already refused for its size
        for info in to_read:
            _check_member(zf, info, build)


def _check_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, build: Builder) -> None:
    """Check one CSV member, reading no more than its declared size plus one byte."""
    label = f"{build.report.name}/{info.filename}"
    scan = CsvScan(label, build)
    try:
        with zf.open(info) as member:
            capped = Capped(member, info.file_size)  # type: ignore[arg-type]  # a ZipExtFile reads like one
            while block := capped.read(CHUNK):
                scan.feed(block)
    except Exception as e:  # corrupt data raises all sorts: BadZipFile, zlib.error, ValueError...
        build.problem(None, f"cannot be read from the zip ({reason(e)})", label)
        return
    if capped.overflow:
        build.problem(
            None, f"holds more data than the {info.file_size} bytes its zip entry declares", label
        )
        return
    if capped.count != info.file_size:
        build.problem(
            None,
            f"holds {capped.count} bytes but its zip entry declares {info.file_size}",
            label,
        )
        return
    result = scan.finish()
    build.add_csv(
        Member(
            info.filename, basename(info.filename), info.file_size, result.type_name, result.rows
        )
    )
