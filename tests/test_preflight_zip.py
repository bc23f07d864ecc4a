"""The pre-flight check of a zip, on real zips: members, unsafe paths, bombs, truncation.

Every rule has a test that fails if the rule breaks; files are written into tmp_path.
"""

from __future__ import annotations

import io
import struct
import time
import zipfile
from pathlib import Path

import pytest

from sisdropd.preflight import Limits, Member, Problem, check_open, check_path, csvcheck

from .preflight_helpers import ENROLLMENTS, USERS, make_zip, messages, only, write


def test_zip_with_users_and_enrollments(tmp_path):
    path = make_zip(
        tmp_path,
        "nightly.zip",
        {"2026/fall/users.csv": USERS, "2026/fall/": b"", "enrollments.csv": ENROLLMENTS},
    )
    report = check_path(path)
    assert report.ok, messages(report.problems)
    assert report.kind == "zip" and report.size == path.stat().st_size
    assert report.counts == {"users": 2, "enrollments": 2}
    assert report.members == [
        Member("2026/fall/users.csv", "users.csv", len(USERS), "users", 2),
        Member("enrollments.csv", "enrollments.csv", len(ENROLLMENTS), "enrollments", 2),
    ]


def test_zip_sums_counts_over_members_of_one_type(tmp_path):
    path = make_zip(tmp_path, "z.zip", {"a/users.csv": USERS, "b/users.csv": USERS})
    report = check_path(path)
    assert report.counts == {"users": 4}
    assert [m.basename for m in report.members] == ["users.csv", "users.csv"]


def test_zip_member_problems_are_named_zip_slash_member_with_lines(tmp_path):
    path = make_zip(
        tmp_path,
        "z.zip",
        {
            "in/users.csv": b"user_id,login_id,status\n1,a,active\n2,\xe9,active\n3,c,zzz\n",
            "x/bad.csv": "hello,world\n",
        },
    )
    report = check_path(path)
    assert [(p.file, p.line) for p in report.problems] == [
        ("z.zip/in/users.csv", 3),
        ("z.zip/x/bad.csv", 1),
    ]
    assert [(w.file, w.line) for w in report.warnings] == [("z.zip/in/users.csv", 4)]
    assert [m.name for m in report.members] == ["in/users.csv"]  # unrecognised ones not listed


def test_zip_ignores_mac_litter_silently_and_warns_on_unknown_files(tmp_path):
    path = make_zip(
        tmp_path,
        "z.zip",
        {
            "users.csv": USERS,
            "__MACOSX/._users.csv": b"\x00\x05\x16\x07junk",
            "Desktop.db": b"x",
            "readme.txt": "hello",
        },
    )
    report = check_path(path)
    assert report.ok
    warning = only(report.warnings)
    assert warning.file == "z.zip/readme.txt" and "Skipping unknown file type" in warning.message
    assert [m.name for m in report.members] == ["users.csv"]


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("../evil.csv", "'..' path component"),
        ("ok/../../evil.csv", "'..' path component"),
        ("a\\..\\..\\evil.csv", "'..' path component"),
        ("/etc/evil.csv", "absolute path"),
        ("C:/evil.csv", "drive-letter path"),
        ("c:evil.csv", "drive-letter path"),
    ],
)
def test_zip_entries_that_could_escape_are_refused(tmp_path, entry, words):
    path = make_zip(tmp_path, "z.zip", {"users.csv": USERS, entry: USERS})
    problem = only(check_path(path).problems)
    assert problem.file == f"z.zip/{entry}" and words in problem.message


def test_nested_zip_is_refused(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("users.csv", USERS)
    path = make_zip(tmp_path, "z.zip", {"users.csv": USERS, "more/Inner.ZIP": inner.getvalue()})
    problem = only(check_path(path).problems)
    assert problem.file == "z.zip/more/Inner.ZIP" and "zip inside the zip" in problem.message


@pytest.mark.parametrize(
    "entries",
    [
        {"readme.txt": "hello"},
        {"__MACOSX/._users.csv": "junk", "__MACOSX/": b""},
        {"folder/": b""},
    ],
    ids=["text-only", "macosx-only", "folder-only"],
)
def test_zip_without_csv_files_is_refused(tmp_path, entries):
    problem = only(check_path(make_zip(tmp_path, "z.zip", entries)).problems)
    assert problem.file == "z.zip" and "contains no CSV files" in problem.message


def test_zip_of_only_empty_csvs_is_refused_but_an_empty_one_beside_data_is_fine(tmp_path):
    problem = only(check_path(make_zip(tmp_path, "e.zip", {"users.csv": b""})).problems)
    assert "contains no CSV files (only empty ones" in problem.message
    report = check_path(make_zip(tmp_path, "m.zip", {"empty.csv": b"", "users.csv": USERS}))
    assert report.ok and [m.name for m in report.members] == ["users.csv"]


def test_empty_zip_archive_is_refused(tmp_path):
    path = tmp_path / "z.zip"
    zipfile.ZipFile(path, "w").close()  # 22 bytes: just the end record
    assert "contains no CSV files" in only(check_path(path).problems).message


def test_truncated_zip_is_not_readable(tmp_path):
    whole = make_zip(
        tmp_path, "whole.zip", {"users.csv": USERS * 50, "enrollments.csv": ENROLLMENTS}
    )
    data = whole.read_bytes()
    half = write(tmp_path, "half.zip", data[: len(data) // 2])
    problem = only(check_path(half).problems)
    assert problem.message == (
        "is not a readable zip (no end-of-central-directory record: truncated upload?)"
    )


def test_text_named_zip_is_not_readable(tmp_path):
    problem = only(check_path(write(tmp_path, "u.zip", USERS)).problems)
    assert problem.message.startswith("is not a readable zip")


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A zip holding 200 MiB of zeros that compresses to well under 1% of that."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("users.csv", USERS)
        with zf.open("zeros.csv", "w") as member:
            chunk = bytes(1024**2)
            for _ in range(200):
                member.write(chunk)
    return path


def test_zip_bomb_is_refused_before_decompressing_anything(bomb, monkeypatch):
    def never(*_args, **_kwargs):
        raise AssertionError("a member of a zip refused for its size was opened")

    monkeypatch.setattr(zipfile.ZipFile, "open", never)
    start = time.monotonic()
    report = check_path(bomb)
    elapsed = time.monotonic() - start
    assert elapsed < 5
    problem = only(report.problems)
    assert problem.file == "bomb.zip" and "more than 100 times its" in problem.message
    assert report.counts == {} and report.members == []


def test_zip_ratio_limit_is_configurable(bomb):
    report = check_path(bomb, limits=Limits(max_ratio=10_000))
    assert report.ok is False  # 200 MiB of zeros is no CSV header...
    assert "more than 10000 times" not in messages(report.problems)
    assert report.members[0].name == "users.csv"


def test_member_declaring_more_than_max_member_bytes_is_refused_unread(tmp_path, monkeypatch):
    path = make_zip(tmp_path, "z.zip", {"users.csv": USERS + "3,c,active\n" * 200})
    monkeypatch.setattr(
        zipfile.ZipFile, "open", lambda *a, **k: pytest.fail("a refused member was opened")
    )
    problem = only(check_path(path, limits=Limits(max_member_bytes=1000)).problems)
    assert problem.file == "z.zip/users.csv" and "allowed for one member" in problem.message


def _set_declared_size(data: bytes, size: int) -> bytes:
    """Rewrite the uncompressed size in a one-member zip's local and central headers."""
    out = bytearray(data)
    assert out[:4] == b"PK\x03\x04"
    struct.pack_into("<I", out, 22, size)
    central = out.index(b"PK\x01\x02")
    struct.pack_into("<I", out, central + 24, size)
    return bytes(out)


def _set_flag(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<H", out, 6, struct.unpack_from("<H", out, 6)[0] | bit)
    central = out.index(b"PK\x01\x02")
    struct.pack_into("<H", out, central + 8, struct.unpack_from("<H", out, central + 8)[0] | bit)
    return bytes(out)


def _one_member_zip(text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("users.csv", text)
    return buffer.getvalue()


def test_member_holding_more_than_it_declares_is_refused(tmp_path):
    text = USERS + "".join(f"{i},u{i},active\n" for i in range(3, 400))
    path = write(tmp_path, "z.zip", _set_declared_size(_one_member_zip(text), 100))
    problem = only(check_path(path).problems)
    assert problem.file == "z.zip/users.csv" and "cannot be read from the zip" in problem.message


def test_member_holding_less_than_it_declares_is_refused(tmp_path):
    text = USERS + "".join(f"{i},u{i},active\n" for i in range(3, 400))
    path = write(tmp_path, "z.zip", _set_declared_size(_one_member_zip(text), len(text) + 500))
    problem = only(check_path(path).problems)
    assert problem.file == "z.zip/users.csv"
    assert (
        f"holds {len(text)} bytes but its zip entry declares {len(text) + 500}" in problem.message
    )


def test_member_with_an_impossible_offset_is_unreadable_not_an_error(tmp_path):
    # A huge central-directory offset in the end record: zipfile opens the archive but then
    # raises ValueError (negative seek) for the member. Found by fuzzing.
    data = bytearray(_one_member_zip(USERS))
    data[data.rindex(b"PK\x05\x06") + 19] = 0xCB
    on_disk = only(check_path(write(tmp_path, "z.zip", bytes(data))).problems)  # OSError EINVAL
    assert on_disk.file == "z.zip/users.csv"
    assert on_disk.message.startswith("cannot be read from the zip (")
    in_memory = only(check_open(io.BytesIO(bytes(data)), name="z.zip", size=len(data)).problems)
    assert in_memory.message.startswith("cannot be read from the zip (negative seek value")


def test_reading_is_capped_one_byte_past_the_declared_size():
    view = csvcheck.Capped(io.BytesIO(b"x" * 1000), 10)
    assert len(io.BufferedReader(view).read()) == 11
    assert view.overflow and view.count == 11


def test_encrypted_member_is_refused(tmp_path):
    path = write(tmp_path, "z.zip", _set_flag(_one_member_zip(USERS), 0x1))
    problem = only(check_path(path).problems)
    assert problem.file == "z.zip/users.csv" and "encrypted" in problem.message


def test_problems_are_capped_with_and_n_more(tmp_path):
    entries: dict[str, bytes | str] = {f"../evil{i}.csv": USERS for i in range(30)}
    entries["users.csv"] = USERS
    report = check_path(make_zip(tmp_path, "z.zip", entries), limits=Limits(max_problems=3))
    assert len(report.problems) == 4
    assert report.problems[3] == Problem("z.zip", None, "and 27 more problems not listed")


def test_check_open_reads_a_zip_from_memory_and_leaves_it_open():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("users.csv", USERS)
    report = check_open(buffer, name="drop.zip", size=len(buffer.getvalue()))
    assert report.ok and report.counts == {"users": 2}
    assert not buffer.closed


def test_check_open_reads_a_csv_and_leaves_it_open():
    buffer = io.BytesIO(USERS.encode())
    report = check_open(buffer, name="users.csv", size=len(USERS))
    assert report.ok and report.members == [
        Member("users.csv", "users.csv", len(USERS), "users", 2)
    ]
    assert not buffer.closed
