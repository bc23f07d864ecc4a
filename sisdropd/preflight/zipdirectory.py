"""A zip's own records, read by hand: how it starts, and its end-of-central-directory record.

Light (no zipfile): ``truncation`` asks it whether a settled ``.zip`` is whole, cut short
or no zip at all, and ``zipcheck`` asks it before ``zipfile`` parses anything.
Layout from PKWARE's APPNOTE.TXT (sections 4.3.6, 4.3.7, 4.3.16).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from sisdropd.preflight.report import human

LOCAL_HEADER = b"PK\x03\x04"  # starts every entry's data, so the first one starts the file
END_RECORD = b"PK\x05\x06"  # end of central directory: 22 bytes, then a comment
END_RECORD_SIZE = 22
MAX_TAIL = END_RECORD_SIZE + 0xFFFF  # the longest end record: its comment is at most 65535
SIGNATURE_SIZE = 4

# What a zip may start with: its first entry's local header; the end record alone (a zip
# with no entries); a split-archive marker (PK\x07\x08 or PK00), which comes before a
# local header in zips written as one piece of a spanned set.
_ZIP_STARTS = (LOCAL_HEADER, END_RECORD, b"PK\x07\x08", b"PK00")

# First bytes of files that people name .zip by mistake, for a hint in the rejection.
_OTHER_FORMATS = (
    (b"%PDF", "a PDF document"),
    (b"\xd0\xcf\x11\xe0", "an old Office document (.xls or .doc)"),
    (b"\x1f\x8b", "a gzip file (.gz or .tgz), which Canvas does not open"),
    (b"Rar!", "a RAR archive, which Canvas does not open"),
    (b"7z\xbc\xaf", "a 7-Zip archive, which Canvas does not open"),
    (b"\xef\xbb\xbf", "text (a CSV named .zip?)"),
    (b"\xff\xfe", "UTF-16 text"),
    (b"\xfe\xff", "UTF-16 text"),
)
# Bytes that text holds (printable ASCII, tab and line ends, and whatever UTF-8 is made of).
_TEXT_BYTES = bytes(range(0x20, 0x7F)) + b"\t\n\r" + bytes(range(0x80, 0x100))


def starts_like_zip(head: bytes) -> bool:
    """True when the file's first bytes are a zip signature (see ``_ZIP_STARTS``)."""
    return head[:SIGNATURE_SIZE] in _ZIP_STARTS


def ends_with_end_record(tail: bytes) -> bool:
    """True when ``tail`` (the file's last MAX_TAIL bytes, or all of it) ends with an end
    record: 22 bytes plus its comment, ending exactly at the end of the file, so that a
    signature met by chance inside compressed data does not count."""
    at = tail.rfind(END_RECORD)
    while at >= 0:
        if len(tail) - at >= END_RECORD_SIZE:
            comment = int.from_bytes(tail[at + 20 : at + 22], "little")
            if at + END_RECORD_SIZE + comment == len(tail):
                return True
        at = tail.rfind(END_RECORD, 0, at)
    return False


def not_a_zip(head: bytes) -> str:
    """Why a file with no end record that does not start like a zip is none, in words."""
    what = ""
    for magic, words in _OTHER_FORMATS:
        if head.startswith(magic):
            what = words
            break
    else:
        sample = head[:512]
        if sample and not sample.translate(None, _TEXT_BYTES):  # nothing but text bytes
            what = "text (a CSV named .zip?)"
    looks = f"; it looks like {what}" if what else ""
    return f"not a zip file: it neither starts nor ends as a zip does{looks}"


# -------------------------------------------------------------------- the central directory

ReadAt = Callable[[int, int], bytes]  # (offset, size) -> at most size bytes from offset

_LOCATOR64 = b"PK\x06\x07"  # zip64 end-of-central-directory locator: 20 bytes
_LOCATOR64_SIZE = 20
_END64 = b"PK\x06\x06"  # zip64 end-of-central-directory record: 56 bytes (no extensible data)
_END64_SIZE = 56
_ENTRY = b"PK\x01\x02"  # one central-directory entry: 46 bytes, then name, extra, comment
_ENTRY_SIZE = 46


@dataclass(frozen=True)
class Directory:
    """The central directory as the end record declares it, located as zipfile locates it.

    ``entries`` is the declared number of entries and ``size`` the declared bytes (the
    zip64 record's when there is one), ``start`` the offset zipfile reads it from: right
    before the end records, whatever offset they declare (so a zip with a prefix, such as
    a self-extracting one, still reads).
    """

    entries: int
    size: int
    start: int
    zip64: bool


def read_directory(read_at: ReadAt, file_size: int) -> Directory | None:
    """Find the end record and read what it says of the central directory, or None when
    there is no end record (zipfile then says "File is not a zip file").

    Mirrors CPython's ``zipfile._EndRecData`` and ``_EndRecData64`` (3.11): an end record
    without a comment as the last 22 bytes, else the last signature among the final 64 KiB;
    a zip64 locator and record right before it replace the counts.
    """
    if file_size < END_RECORD_SIZE:
        return None
    last = read_at(file_size - END_RECORD_SIZE, END_RECORD_SIZE)
    if last.startswith(END_RECORD) and last.endswith(b"\0\0"):
        at, record = file_size - END_RECORD_SIZE, last
    else:
        base = max(0, file_size - MAX_TAIL)
        tail = read_at(base, file_size - base)
        found = tail.rfind(END_RECORD)
        if found < 0 or len(tail) - found < END_RECORD_SIZE:
            return None
        at, record = base + found, tail[found : found + END_RECORD_SIZE]
    _, _, _, _, entries, size, _, _ = struct.unpack("<4s4H2LH", record)
    zip64 = False
    if at >= _LOCATOR64_SIZE + _END64_SIZE:
        locator = read_at(at - _LOCATOR64_SIZE, _LOCATOR64_SIZE)
        end64 = read_at(at - _LOCATOR64_SIZE - _END64_SIZE, _END64_SIZE)
        if locator.startswith(_LOCATOR64) and end64.startswith(_END64):
            entries, size = struct.unpack_from("<QQ", end64, 32)
            at -= _LOCATOR64_SIZE + _END64_SIZE
            zip64 = True
    return Directory(entries=entries, size=size, start=at - size, zip64=zip64)


def count_entries(read_at: ReadAt, directory: Directory) -> int:
    """Walk the central directory's entries one fixed header at a time and count them, in
    constant memory (the time is bounded by the directory's size, checked first).

    The count is what zipfile would turn into ZipInfo objects: it parses entries until it
    has consumed ``size`` bytes, whatever ``entries`` declares. Where the directory is
    malformed the count stops there (zipfile then says what is wrong).
    """
    count, at, end = 0, directory.start, directory.start + directory.size
    if directory.start < 0:
        return 0
    while at < end:
        header = read_at(at, _ENTRY_SIZE)
        if len(header) < _ENTRY_SIZE or not header.startswith(_ENTRY):
            break
        name, extra, comment = struct.unpack_from("<3H", header, 28)
        at += _ENTRY_SIZE + name + extra + comment
        count += 1
    return count


def directory_problem(
    read_at: ReadAt, file_size: int, max_entries: int, max_bytes: int
) -> str | None:
    """Why a zip's central directory is too big to parse, or None.

    Checked before zipfile runs: zipfile reads the whole directory into memory and builds
    one ZipInfo object (about 600 bytes) per entry, so a 17 MB zip of 200,000 tiny entries
    cost 118 MB before any limit could look at it.
    """
    directory = read_directory(read_at, file_size)
    if directory is None:
        return None
    bomb = "no SIS export comes near it: a zip bomb?"
    if directory.entries > max_entries:
        return f"declares {directory.entries} entries, more than the {max_entries} allowed ({bomb})"
    if directory.size > max_bytes:
        return (
            f"has a central directory of {human(directory.size)}, more than the "
            f"{human(max_bytes)} allowed ({bomb})"
        )
    entries = count_entries(read_at, directory)  # the declared count may lie
    if entries > max_entries:
        return f"has {entries} entries, more than the {max_entries} allowed ({bomb})"
    return None
