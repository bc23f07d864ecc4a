"""The pre-flight check of a zip, on real zips: members, unsafe paths, bombs, truncation.

Every rule has a test that fails if the rule breaks; files are written into tmp_path.
"""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from sisdropd.preflight import Limits, Member, Problem, check_open, check_path, zipcheck
from tests.unit.preflight_helpers import ENROLLMENTS, USERS, make_zip, messages, only, write


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
    view = zipcheck.Capped(io.BytesIO(b"x" * 1000), 10)
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


# ------------------------------------------------------------- entries and the directory


@pytest.fixture(scope="module")
def crowded(tmp_path_factory) -> bytes:
    """A zip of 20,000 one-byte entries: twice the entries allowed, a 1.1 MB directory."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("users.csv", USERS)
        for i in range(19_999):
            zf.writestr(f"{i}.txt", b"x")
    return buffer.getvalue()


def _declare_entries(data: bytes, count: int) -> bytes:
    """The same zip with its end record declaring ``count`` entries (the directory unchanged)."""
    out = bytearray(data)
    end = out.rindex(b"PK\x05\x06")
    struct.pack_into("<HH", out, end + 8, count, count)
    return bytes(out)


def test_zip_of_too_many_entries_is_refused_before_zipfile_reads_its_directory(
    tmp_path, crowded, monkeypatch
):
    """Issue 12: zipfile builds one ZipInfo (about 600 bytes) per entry before any check
    could look. Measured with bench/preflight_zip_entries.py on a 19 MB zip of 200,000
    one-byte entries: check_path peaked at 142.6 MB RSS and took 15 s (19.6 MB for the
    interpreter with the check imported); now 19.7 MB, refused in under a millisecond.
    Here, a generous bound on what the check allocates: 20,000 ZipInfo objects alone would
    be about 12 MB."""
    path = write(tmp_path, "crowded.zip", crowded)

    def never(*_args, **_kwargs):
        raise AssertionError("zipfile parsed the central directory of a refused zip")

    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", never)
    tracemalloc.start()
    try:
        report = check_path(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    problem = only(report.problems)
    assert problem.file == "crowded.zip"
    assert problem.message.startswith("declares 20000 entries, more than the 10000 allowed")
    assert report.members == [] and report.counts == {}
    assert peak < 512 * 1024, f"the check allocated {peak} bytes"


def test_entries_are_counted_in_the_directory_whatever_the_end_record_declares(
    tmp_path, crowded, monkeypatch
):
    path = write(tmp_path, "liar.zip", _declare_entries(crowded, 1))
    monkeypatch.setattr(
        zipfile.ZipFile, "_RealGetContents", lambda *_: pytest.fail("zipfile read the directory")
    )
    problem = only(check_path(path).problems)
    assert problem.message.startswith("has 20000 entries, more than the 10000 allowed")
    assert "zip bomb?" in problem.message


def test_entry_and_directory_limits_are_configurable(tmp_path, crowded):
    path = write(tmp_path, "crowded.zip", crowded)
    report = check_path(path, limits=Limits(max_zip_entries=20_000))
    assert report.ok and report.counts == {"users": 2}  # the .txt entries: warnings only
    small = make_zip(tmp_path, "small.zip", {f"{i}/users.csv": USERS for i in range(40)})
    message = only(check_path(small, limits=Limits(max_zip_directory=1000)).problems).message
    assert message.startswith("has a central directory of 2.") and "more than the 1000 bytes" in message


def test_a_zip64_end_record_is_read_for_the_entry_count(tmp_path):
    """A zip of more than 65,535 entries (or 4 GiB) keeps its counts in the zip64 end
    record, the 16-bit ones saying 0xFFFF: the limit reads the zip64 one."""
    data = bytearray(_one_member_zip(USERS))
    end = data.rindex(b"PK\x05\x06")
    size, offset = struct.unpack_from("<LL", data, end + 12)
    zip64 = struct.pack("<4sQHHLLQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, 70_000, 70_000, size, offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, end, 1)
    struct.pack_into("<HH", data, end + 8, 0xFFFF, 0xFFFF)
    data[end:end] = zip64 + locator
    path = write(tmp_path, "big.zip", bytes(data))
    assert only(check_path(path).problems).message.startswith("declares 70000 entries")
