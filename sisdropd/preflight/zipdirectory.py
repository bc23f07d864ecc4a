"""A zip's own records, read by hand: how it starts, and its end-of-central-directory record.

Light (no zipfile): ``truncation`` asks it whether a settled ``.zip`` is whole, cut short
or no zip at all, and ``zipcheck`` asks it before ``zipfile`` parses anything.
Layout from PKWARE's APPNOTE.TXT (sections 4.3.6, 4.3.7, 4.3.16).
"""

from __future__ import annotations

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
