"""looks_truncated: a settled file cut short waits; a whole one, or no zip at all, does not.

A ``.zip`` that neither starts nor ends like a zip is not a zip: it is not "truncated"
(which would leave it waiting ``truncated_after``, an hour by default) and the pre-flight
check rejects it at once, saying so. One that starts like a zip and has no end record, or
is shorter than a zip's 4-byte signature, may be an upload cut short and waits as before.
"""

from __future__ import annotations

import io
import random
import zipfile

from sisdropd.preflight import check_path, looks_truncated
from tests.unit.preflight_helpers import ENROLLMENTS, USERS, make_zip, only, write

CUT_ZIP = "no end-of-central-directory record at the end of the zip"


def random_bytes(n: int) -> bytes:
    data = random.Random(11).randbytes(n)
    assert not data.startswith(b"PK")
    return data


def test_random_bytes_named_zip_are_not_truncated_but_rejected_as_no_zip(tmp_path):
    path = write(tmp_path, "term.zip", random_bytes(5000))
    assert looks_truncated(path) is None
    problem = only(check_path(path).problems)
    assert problem.message.startswith("is not a readable zip (not a zip file: ")
    assert "neither starts nor ends as a zip does" in problem.message


def test_a_csv_named_zip_is_rejected_with_a_hint(tmp_path):
    path = write(tmp_path, "users.zip", USERS)
    assert looks_truncated(path) is None
    message = only(check_path(path).problems).message
    assert "not a zip file" in message and "a CSV named .zip?" in message


def test_a_pdf_named_zip_is_rejected_with_a_hint(tmp_path):
    path = write(tmp_path, "users.zip", b"%PDF-1.7\n" + random_bytes(300))
    assert looks_truncated(path) is None
    assert "looks like a PDF document" in only(check_path(path).problems).message


def test_a_zip_cut_in_half_looks_truncated_and_waits(tmp_path):
    whole = make_zip(tmp_path, "whole.zip", {"users.csv": USERS * 50, "e.csv": ENROLLMENTS})
    assert looks_truncated(whole) is None
    data = whole.read_bytes()
    half = write(tmp_path, "half.zip", data[: len(data) // 2])
    assert looks_truncated(half) == CUT_ZIP
    problem = only(check_path(half).problems)
    assert problem.message == (
        "is not a readable zip (no end-of-central-directory record: truncated upload?)"
    )


def test_a_zip_cut_inside_its_end_record_looks_truncated(tmp_path):
    data = make_zip(tmp_path, "whole.zip", {"users.csv": USERS}).read_bytes()
    assert looks_truncated(write(tmp_path, "cut.zip", data[:-5])) == CUT_ZIP


def test_a_file_shorter_than_the_signature_waits_whatever_it_holds(tmp_path):
    for data in (b"PK\x03", b"abc", b"P"):
        assert looks_truncated(write(tmp_path, "x.zip", data)) == (
            f"{len(data)} bytes, shorter than any zip"
        )


def test_a_zip_with_the_longest_comment_is_whole(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("users.csv", USERS)
        zf.comment = b"c" * 65_535  # the longest a comment can be
    path = write(tmp_path, "commented.zip", buffer.getvalue())
    assert looks_truncated(path) is None
    report = check_path(path)
    assert report.ok and report.counts == {"users": 2}
    # The same zip without its last byte: the comment no longer ends the file.
    assert looks_truncated(write(tmp_path, "cut.zip", buffer.getvalue()[:-1])) == CUT_ZIP


def test_an_empty_zip_is_not_truncated_and_is_rejected_as_empty(tmp_path):
    path = write(tmp_path, "empty.zip", b"")
    assert looks_truncated(path) is None
    assert only(check_path(path).problems).message == "is empty (0 bytes)"
    archive = tmp_path / "no-entries.zip"
    zipfile.ZipFile(archive, "w").close()  # 22 bytes: the end record alone
    assert looks_truncated(archive) is None


def test_a_csv_without_its_last_line_end_looks_truncated(tmp_path):
    cut = write(tmp_path, "users.csv", USERS + "3,car")
    assert looks_truncated(cut) == "the last row has 2 of the header's 3 fields and no line end"
    whole = write(tmp_path, "whole.csv", USERS)
    assert looks_truncated(whole) is None
    quoted = write(tmp_path, "quoted.csv", USERS + '3,"a, b"')
    assert looks_truncated(quoted) == "the last row does not end with a newline"
