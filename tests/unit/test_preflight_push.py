"""The push API (CsvCheck) gives check_path's Report, however the bytes are cut; check_fd.

An uploader feeds ``CsvCheck`` each block it reads and sends; what it gets at the end must
be exactly the Report ``check_path`` gives for the same file (problems, warnings, counts,
members, and the SHA-256 of the bytes). Hypothesis generates CSVs (quoted values across
lines, escaped quotes, stray quotes, BOM, CRLF or CR line ends, non-ASCII and broken
bytes, blank lines) and cuts them anywhere, with the deep part shrunk so that most rows
go through the fast pass too. ``check_fd`` checks a descriptor without moving it and
hashes a zip in a pass bracketed by fstat.
"""

from __future__ import annotations

import hashlib
import os
import threading
import tracemalloc
import zipfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sisdropd.preflight import CsvCheck, Limits, Report, check_fd, check_kind, check_path, csvrows
from tests.unit.preflight_helpers import USERS, messages, only, write

ROW = "{i},user{i},active"


def push(data: bytes | memoryview, cuts: list[int] | None = None, *, name: str = "users.csv", **kw) -> Report:
    """Feed ``data`` to a CsvCheck cut at ``cuts`` (default: 1 MiB blocks)."""
    if cuts is None:
        cuts = list(range(1 << 20, len(data), 1 << 20))
    check = CsvCheck(name, size=len(data), **kw)
    start = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
        check.feed(data[start:cut])
        start = max(start, cut)
    return check.finish()


@contextmanager
def deep_part(size: int, parsed_at_once: int = 64 * 1024):
    """Shrink the deep part (and the slice of it parsed at a time) to a few bytes."""
    saved = csvrows.DEEP_BYTES, csvrows._SLICE
    csvrows.DEEP_BYTES, csvrows._SLICE = size, parsed_at_once
    try:
        yield
    finally:
        csvrows.DEEP_BYTES, csvrows._SLICE = saved


def same_as_check_path(tmp_path: Path, data: bytes, cuts: list[int], name: str = "users.csv") -> Report:
    path = write(tmp_path, name, data)
    expected = check_path(path)
    got = push(data, cuts, name=name)
    assert got == expected, f"\npush:       {got}\ncheck_path: {expected}"
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    return got


# ------------------------------------------------------------------- generated CSV files

HEADERS = ["user_id,login_id,status", "course_id,user_id,role,status", "user_id,login_id,status,note", "id,email"]
CELLS = st.one_of(
    st.sampled_from(["1", "u2", "active", "deleted", "gone", "", " ", "Jürgen", "Zoë", "€"]),
    st.sampled_from(['"quoted"', '"a, b"', '"two\nlines"', '"say ""hi"""', '""', '"x\r\ny"']),
    st.sampled_from(['a"b', '"open', '"a"x', ' "lead']),  # faults, now and then
)
LINE_ENDS = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def csv_files(draw) -> bytes:
    end = draw(LINE_ENDS)
    rows = [draw(st.sampled_from(HEADERS))]
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.integers(0, 9)) == 0:
            rows.append("")  # a blank line
        else:
            rows.append(",".join(draw(st.lists(CELLS, min_size=1, max_size=5))))
    text = end.join(rows) + (end if draw(st.booleans()) else "")
    data = text.encode()
    if draw(st.integers(0, 5)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xe9", b"\xc3"])) + data[at:]
    if draw(st.integers(0, 4)) == 0:
        data = b"\xef\xbb\xbf" + data
    return data


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(
    data=csv_files(),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
    deep=st.sampled_from([1 << 20, 90, 40, 1]),
    parsed_at_once=st.sampled_from([64 * 1024, 30, 1]),
)
def test_push_gives_check_paths_report_however_the_bytes_are_cut(
    tmp_path, data, cuts, deep, parsed_at_once
):
    with deep_part(deep, parsed_at_once):
        same_as_check_path(tmp_path, data, cuts)


@FUZZ
@given(data=csv_files())
def test_one_byte_blocks_and_the_background_hash_give_the_same_report(tmp_path, data):
    expected = check_path(write(tmp_path, "users.csv", data))
    assert push(data, list(range(len(data)))) == expected
    assert push(data, [7, 100], background=True) == expected
    # Without the hash (an uploader that keeps no record): the same verdict, no sha256.
    unhashed = push(data, [7, 100], background=True, sha256=False)
    assert unhashed.sha256 is None and unhashed == Report(**{**vars(expected), "sha256": None})


@FUZZ
@given(
    rows=st.lists(st.sampled_from(["{i},u{i},active", '{i},"u,{i}",active', '{i},"u\n{i}",deleted']), min_size=1, max_size=40),
    end=LINE_ENDS,
    deep=st.integers(1, 400),
)
def test_rows_past_the_deep_part_are_counted_exactly_when_none_is_blank(rows, end, deep):
    text = end.join(["user_id,login_id,status", *(r.format(i=i) for i, r in enumerate(rows))]) + end
    with deep_part(deep):
        report = push(text.encode(), [deep, deep + 3])
    assert report.ok, messages(report.problems)
    assert report.counts == {"users": len(rows)}


def uncounted(data: bytes, cuts: list[int] | None = None, *, reread: bytes | None = None, step: int = 7) -> Report:
    """``push`` without counting rows: what ``sisdropd submit`` runs while it sends a CSV.
    ``reread`` (default ``data``) is what a second read of the file finds, in ``step``-byte
    blocks."""
    again = data if reread is None else reread
    return push(
        data, cuts, sha256=False, count_rows=False, background=True,
        reread=lambda: (again[i : i + step] for i in range(0, len(again), step)),
    )


@FUZZ
@given(data=csv_files(), cuts=st.lists(st.integers(0, 2000), max_size=10), deep=st.sampled_from([1 << 20, 90, 40, 1]))
def test_an_uncounted_check_says_what_the_counted_one_says_and_no_wrong_count(tmp_path, data, cuts, deep):
    """The same problems (at the same places), warnings and members; a member's rows are
    the counted ones, or None (not counted) where the deep part did not read them all."""
    with deep_part(deep):
        expected = check_path(write(tmp_path, "users.csv", data))
        got = uncounted(data, cuts)
    assert got.sha256 is None
    if not expected.ok or deep == 1 << 20:  # a refused file is checked again, counting
        assert got == Report(**{**vars(expected), "sha256": None})
        return
    assert (got.problems, got.warnings) == (expected.problems, expected.warnings)
    assert [replace(m, rows=None) for m in got.members] == [replace(m, rows=None) for m in expected.members]
    assert all(m.rows in (e.rows, None) for m, e in zip(got.members, expected.members, strict=True))
    assert got.counts == {m.csv_type: m.rows for m in got.members if m.rows is not None}


def big_csv(rows: int, end: bytes, fault: bytes) -> tuple[bytes, int, int]:
    """A users CSV of ``rows`` rows with ``end`` line ends, non-ASCII names and a quoted
    value over two lines every 50th row, and ``fault`` put in as the third value of the
    row three quarters of the way down; its bytes, the line that row begins on and the
    column (in characters) its third value begins at."""
    out, line, fault_line = [b"user_id,login_id,status,note" + end], 1, 0
    at = rows * 3 // 4
    for i in range(rows):
        note = b'"two' + end + b'lines, ""quoted"""' if i % 50 == 0 else "Zoë".encode()
        status = fault if i == at else b"active"
        line += 1
        if status == fault:
            fault_line = line
        out.append(b"u%d,login%d,%s,%s%s" % (i, i, status, note, end))
        line += i % 50 == 0  # the quoted value's line end
    data = b"".join(out)
    assert len(data) > 4 * csvrows.DEEP_BYTES
    return data, fault_line, len(b"u%d,login%d," % (at, at)) + 1


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
@pytest.mark.parametrize(
    "fault, at, says",
    [
        (b'act"ive', 3, "Malformed CSV: a quote inside an unquoted value (column {})"),
        (b'"active"x', 8, "Malformed CSV: text after the closing quote of a quoted value (column {})"),
        (b"activ\xe9", 5, "Invalid UTF-8 (byte 0xE9 at column {})"),
    ],
    ids=["stray quote", "text after a quote", "Latin-1"],
)
def test_an_uncounted_check_places_a_fault_deep_in_a_big_file_exactly(tmp_path, end, fault, at, says):
    data, line, column = big_csv(60_000, end, fault)  # about 2 MiB, the fault some 46,000 lines down
    expected = check_path(write(tmp_path, "users.csv", data))
    problem = only(expected.problems)
    assert problem.line == line and problem.message.startswith(says.format(column + at))
    for cuts in (None, list(range(1000, len(data), 65_537))):
        assert uncounted(data, cuts, step=65_543) == Report(**{**vars(expected), "sha256": None})


def test_an_uncounted_check_that_finds_no_fault_the_second_time_refuses_the_file_as_changed():
    data, _, _ = big_csv(60_000, b"\n", b'act"ive')
    clean = data.replace(b'act"ive', b"active!")
    report = uncounted(data, reread=clean, step=65_543)
    assert only(report.problems).message.startswith("changed while it was read: a fault found in its bytes")
    assert only(report.problems).line is None
    shorter = uncounted(data, reread=clean[:-10], step=65_543)  # and one that shrank: the counted check says so
    assert "changed while it was read: " + str(len(data) - 10) in messages(shorter.problems)


def test_an_uncounted_check_that_cannot_read_the_file_again_says_so():
    data, _, _ = big_csv(60_000, b"\n", b'act"ive')

    def gone():
        yield data[:100]
        raise OSError(5, "Input/output error")

    report = push(data, sha256=False, count_rows=False, reread=gone)
    assert only(report.problems).message == (
        "could not be read again to say where its problem is ([Errno 5] Input/output error)"
    )


def test_an_uncounted_check_needs_a_way_to_read_the_file_again():
    with pytest.raises(ValueError, match="count_rows=False needs reread"):
        CsvCheck("users.csv", size=10, count_rows=False)


# ------------------------------------------------------------------------ tricky cases


def test_quotes_spanning_block_boundaries(tmp_path):
    data = b'user_id,login_id,status,note\n1,a,active,"say ""hi""\nthere"\n2,b,active,"x"\n'
    for cut in range(1, len(data)):
        report = same_as_check_path(tmp_path, data, [cut])
        assert report.ok and report.counts == {"users": 2}
    broken = b'user_id,login_id,status\n1,"a"x,active\n'
    at = broken.index(b"x,")  # the closing quote ends one block, the text starts the next
    problem = only(same_as_check_path(tmp_path, broken, [at]).problems)
    assert (problem.line, problem.message[:60]) == (
        2,
        "Malformed CSV: text after the closing quote of a quoted value"[:60],
    )
    assert "(column 6)" in problem.message


def test_a_multibyte_character_split_across_blocks(tmp_path):
    data = "user_id,login_id,status\n1,jürgen,active\n2,zoë,active\n".encode()
    for cut in range(len(data)):
        report = same_as_check_path(tmp_path, data, [cut, cut + 1])
        assert report.ok and report.counts == {"users": 2}
    latin1 = "user_id,login_id,status\n1,jürgen,active\n".encode("latin-1")
    at = latin1.index(b"\xfc")
    problem = only(same_as_check_path(tmp_path, latin1, [at, at + 1]).problems)
    assert problem.line == 2 and "byte 0xFC at column 4" in problem.message


def test_a_stray_quote_past_the_deep_part(tmp_path):
    rows = "".join(f"{ROW.format(i=i)}\n" for i in range(csvrows.DEEP_BYTES // 15))
    data = ("user_id,login_id,status\n" + rows + 'x,a"b,active\n' + rows).encode()
    assert len(data) > 2 * csvrows.DEEP_BYTES
    problem = only(same_as_check_path(tmp_path, data, list(range(0, len(data), 1 << 20))).problems)
    assert problem.line == rows.count("\n") + 2
    assert "quote inside an unquoted value (column 4)" in problem.message


def test_cr_line_ends_and_a_crlf_cut_in_two(tmp_path):
    for end in (b"\r", b"\r\n"):
        data = end.join([b"user_id,login_id,status", b"1,a,active", b"2,b,gone", b"3,c,active", b""])
        for cut in range(len(data)):
            report = same_as_check_path(tmp_path, data, [cut])
            assert [(w.line, w.message) for w in report.warnings] == [(3, 'Improper status "gone" for user')]
            assert report.counts == {"users": 3}


# --------------------------------------------------------------------- the API itself


def test_fatal_turns_true_as_soon_as_a_problem_is_fed():
    check = CsvCheck("users.csv", size=1000)
    check.feed(b"user_id,login_id,status\n1,a,active\n")
    assert not check.fatal
    check.feed(b'2,b"c,active\n')  # a stray quote: Canvas would refuse the whole file
    assert check.fatal
    report = check.finish()
    assert "changed while it was read: 48 bytes, not the 1000" in messages(report.problems)


def test_size_is_checked_before_anything_is_fed():
    assert CsvCheck("e.csv", size=0).fatal
    big = CsvCheck("b.csv", size=50, limits=Limits(max_bytes=10))
    assert big.fatal
    big.feed(b"x" * 50)
    report = big.finish()
    assert "too big to post" in only(report.problems).message
    assert report.sha256 == hashlib.sha256(b"x" * 50).hexdigest()


def test_validate_content_false_only_hashes():
    data = b"not,a,sis,file\n"
    report = push(data, validate_content=False)
    assert report.ok and report.counts == {} and report.sha256 == hashlib.sha256(data).hexdigest()


def test_close_ends_the_background_hash_without_a_report():
    def hashers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "sha256 drop.csv"]

    with CsvCheck("drop.csv", size=10**6, background=True) as check:
        check.feed(b"user_id,login_id,status\n")
        [thread] = hashers()
    assert not thread.is_alive() and hashers() == []


def test_push_holds_a_bounded_amount_whatever_the_file(tmp_path):
    """Fed 1 MiB views of a 20 MiB CSV (never copied whole), the check allocates about
    0.4 MiB at its peak (measured); the bound is five times that."""
    data = ("user_id,login_id,status\n" + "".join(f"{i},user{i}@example.edu,active\n" for i in range(600_000))).encode()
    view = memoryview(data)
    tracemalloc.start()
    try:
        report = push(view, list(range(0, len(data), 1 << 20)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok and report.counts == {"users": 600_000}
    assert peak < 2 * 1024 * 1024, f"the check allocated {peak} bytes"


# ----------------------------------------------------------------------------- check_fd


def test_check_kind_reads_no_content(tmp_path):
    """What check_fd refuses before reading a byte, and nothing more: the streamed
    check (posting) needs this verdict before the first block is sent."""
    fifo = tmp_path / "users.csv"
    os.mkfifo(fifo)
    cases = {
        "fifo": (os.open(fifo, os.O_RDONLY | os.O_NONBLOCK), "users.csv", "not a regular file"),
        "extension": (os.open(write(tmp_path, "users.txt", USERS), os.O_RDONLY), "users.txt", "only files named"),
        "empty": (os.open(write(tmp_path, "empty.csv", b""), os.O_RDONLY), "empty.csv", "is empty"),
        "bad content": (os.open(write(tmp_path, "bad.csv", b"\xff\xfe"), os.O_RDONLY), "bad.csv", None),
    }
    try:
        for case, (fd, name, problem) in cases.items():
            report = check_kind(fd, name=name, limits=Limits(max_bytes=10))
            if problem is None:  # the content is never looked at
                assert report.ok and report.size == 2 and report.kind == "csv", case
            else:
                assert not report.ok and problem in report.problems[0].message, case
            if case != "fifo":  # a FIFO has no offset
                assert os.lseek(fd, 0, os.SEEK_CUR) == 0
        big = os.open(write(tmp_path, "big.csv", USERS), os.O_RDONLY)
        cases["big"] = (big, "", "")
        assert "too big to post" in check_kind(big, name="big.csv", limits=Limits(max_bytes=10)).problems[0].message
    finally:
        for fd, _, _ in cases.values():
            os.close(fd)



def test_check_fd_reads_with_pread_and_leaves_the_offset_alone(tmp_path):
    path = write(tmp_path, "users.csv", USERS)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 5, os.SEEK_SET)
        report = check_fd(fd, name="users.csv")
        assert os.lseek(fd, 0, os.SEEK_CUR) == 5
    finally:
        os.close(fd)
    assert report == check_path(path) and report.sha256 == hashlib.sha256(USERS.encode()).hexdigest()


def _zip(tmp_path: Path) -> Path:
    path = tmp_path / "term.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("users.csv", USERS + "".join(f"{ROW.format(i=i)}\n" for i in range(38)))
    return path


def test_check_fd_hashes_a_zip_in_a_pass_bracketed_by_fstat(tmp_path):
    path = _zip(tmp_path)
    fd = os.open(path, os.O_RDONLY)
    try:
        report = check_fd(fd, name="term.zip", sha256=True)
    finally:
        os.close(fd)
    assert report.ok and report.counts == {"users": 40}
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert check_path(path).sha256 is None  # check_path does not hash a zip


@pytest.mark.parametrize("restore_mtime", [False, True])
def test_a_zip_rewritten_while_checked_is_refused(tmp_path, monkeypatch, restore_mtime):
    """A writer with a handle on the file (or a hard link) rewrites it while the zip is
    checked, even with the same bytes and its old mtime put back: ctime moves, and the
    check refuses to vouch for what it read."""
    from sisdropd.preflight import check as check_module

    path = _zip(tmp_path)
    real = check_module.check_zip

    def check_then_rewrite(f, build):
        real(f, build)
        st = path.stat()
        with open(path, "r+b") as writer:  # the uploader's handle, opened before the take
            writer.write(path.read_bytes())
        if restore_mtime:
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    monkeypatch.setattr(check_module, "check_zip", check_then_rewrite)
    fd = os.open(path, os.O_RDONLY)
    try:
        report = check_fd(fd, name="term.zip", sha256=True)
    finally:
        os.close(fd)
    assert "changed while it was checked" in only(report.problems).message
    assert report.sha256 is None


def test_an_xml_file_is_hashed_in_the_pass_that_checks_it(tmp_path):
    data = b"<enterprise>" + b"<person><id>1</id></person>\n" * 5000 + b"</enterprise>\n"
    path = write(tmp_path, "people.xml", data)
    report = check_path(path, import_type="ims_xml")
    assert report.ok and report.sha256 == hashlib.sha256(data).hexdigest()
    refused = check_path(path)  # instructure_csv reads no XML: refused unread, not hashed
    assert not refused.ok and refused.sha256 is None
