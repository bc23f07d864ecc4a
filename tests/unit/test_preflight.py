"""The local pre-flight check, on real files: what passes, what is refused and why.

Every rule of sisdropd.preflight has a test here that fails if the rule breaks. Files are
written into tmp_path (zips with zipfile, FIFOs with mkfifo, links with symlink); the
property-based tests at the end throw random and mutated bytes at it.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import struct
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sisdropd import preflight
from sisdropd.preflight import (
    XML_IMPORT_TYPES,
    Limits,
    Member,
    Problem,
    Report,
    check_import_params,
    check_open,
    check_path,
)

USERS = "user_id,login_id,status\n1,alice,active\n2,bob,active\n"
ENROLLMENTS = "course_id,user_id,role,status\nBIO-101,1,student,active\nBIO-101,2,teacher,active\n"


def write(folder: Path, name: str, data: bytes | str) -> Path:
    path = folder / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def make_zip(folder: Path, name: str, entries: dict[str, bytes | str]) -> Path:
    path = folder / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for entry, data in entries.items():
            zf.writestr(entry, data)
    return path


def messages(problems: list[Problem]) -> str:
    return "\n".join(str(p) for p in problems)


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, messages(problems)
    return problems[0]


def returns_within(seconds: float, fn, *args, **kwargs) -> Report:
    """Run fn in a daemon thread; fail (instead of hanging the suite) if it blocks."""
    box: list[Report] = []
    thread = threading.Thread(target=lambda: box.append(fn(*args, **kwargs)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn.__name__} blocked for more than {seconds} s"
    return box[0]


# ------------------------------------------------------------------------------ CSV types

SAMPLES = [
    ("users", "user_id,login_id,first_name,status\n1,alice,Alice,active\n"),
    ("enrollments", "course_id,user_id,role,status\nC1,1,student,active\n"),
    ("enrollments", "section_id,user_integration_id,role_id,status\nS1,X1,3,deleted\n"),
    ("sections", "section_id,course_id,name,status\nS1,C1,Section 1,active\n"),
    ("courses", "course_id,short_name,long_name,status,term_id\nC1,BIO,Biology,active,T1\n"),
    ("terms", "term_id,name,status\nT1,Fall 2026,active\n"),
    ("accounts", "account_id,parent_account_id,name,status\nA1,,Science,active\n"),
    ("admins", "user_id,account_id,role,status\n1,A1,AccountAdmin,active\n"),
    ("logins", "user_id,login_id,existing_user_id\n1,alice2,1\n"),
    ("xlists", "xlist_course_id,section_id,status\nC1,S1,active\n"),
    ("abstract_courses", "abstract_course_id,short_name,long_name,status\nAC1,BIO,Bio,active\n"),
    ("change_sis_ids", "old_id,new_id,type\nU1,U2,user\n"),
    ("group_memberships", "group_id,user_id,status\nG1,1,accepted\n"),
    ("user_observers", "observer_id,student_id,status\nP1,1,active\n"),
    # Known to Canvas but not validated by us: recognised, never refused for its rows.
    ("differentiation_tag_sets", "tag_set_id,set_name,course_id,status\nTS1,Set,C1,whatever\n"),
]


@pytest.mark.parametrize(("csv_type", "text"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_each_csv_type_is_recognised_from_its_header(tmp_path, csv_type, text):
    report = check_path(write(tmp_path, "in.csv", text))
    assert report.ok, messages(report.problems)
    assert report.warnings == []
    assert report.kind == "csv"
    assert report.counts == {csv_type: 1}
    assert report.members == [Member("in.csv", "in.csv", len(text), csv_type, 1)]


def test_logins_are_not_users_and_admins_with_course_id_are_enrollments(tmp_path):
    logins = "user_id,login_id,existing_user_id,status\n1,a,1,active\n"
    admins_with_course = "user_id,account_id,course_id,role,status\n1,A1,C1,student,active\n"
    assert check_path(write(tmp_path, "l.csv", logins)).counts == {"logins": 1}
    assert check_path(write(tmp_path, "a.csv", admins_with_course)).counts == {"enrollments": 1}


def test_header_cells_are_trimmed_and_case_insensitive(tmp_path):
    report = check_path(write(tmp_path, "u.csv", " User_ID , LOGIN_ID,Status\n1,a,ACTIVE\n"))
    assert report.ok and report.warnings == [] and report.counts == {"users": 1}


def test_utf8_bom_is_accepted(tmp_path):
    report = check_path(write(tmp_path, "u.csv", b"\xef\xbb\xbf" + USERS.encode()))
    assert report.ok, messages(report.problems)
    assert report.counts == {"users": 2}


def test_unrecognised_header_quotes_canvas_and_the_header_seen(tmp_path):
    report = check_path(write(tmp_path, "x.csv", "id,email,name\n1,a@b,A\n"))
    problem = only(report.problems)
    assert problem.line == 1
    assert "Couldn't find Canvas CSV import headers" in problem.message
    assert '"id,email,name"' in problem.message
    assert report.members == [] and report.counts == {}


def test_unrecognised_header_is_shown_truncated(tmp_path):
    header = ",".join(f"column_{i}" for i in range(100))
    problem = only(check_path(write(tmp_path, "x.csv", header + "\n")).problems)
    assert "column_0,column_1" in problem.message and "column_99" not in problem.message
    assert "…" in problem.message


@pytest.mark.parametrize(
    ("header", "hint"),
    [
        (
            "User ID,login,status",
            'with "user id" as user_id, "login" as login_id it would read as users',
        ),
        ("section_id,course_id,title,status", "closest to sections, which also needs name"),
        ("user_id;login_id;status", "separated by semicolons"),
        ("user_id\tlogin_id\tstatus", "separated by tabs"),
    ],
)
def test_unrecognised_header_hints_at_what_it_looks_closest_to(tmp_path, header, hint):
    problem = only(check_path(write(tmp_path, "x.csv", header + "\n1,2,3\n")).problems)
    assert hint in problem.message


def test_undecodable_header_is_invalid_utf8_on_line_1_and_unrecognised(tmp_path):
    report = check_path(write(tmp_path, "u.csv", USERS.encode("utf-16")))
    text = messages(report.problems)
    assert "u.csv:1: Invalid UTF-8" in text
    assert "Couldn't find Canvas CSV import headers" in text
    assert "UTF-16" in text
    assert not report.ok


def test_latin1_header_is_invalid_utf8(tmp_path):
    report = check_path(
        write(tmp_path, "u.csv", "user_id,login_id,status,prénom\n".encode("latin-1"))
    )
    problem = only([p for p in report.problems if "Invalid UTF-8" in p.message])
    assert problem.line == 1 and "0xE9" in problem.message
    assert report.counts == {"users": 0}  # the header itself was still readable


def test_invalid_utf8_on_line_5_is_reported_as_line_5(tmp_path):
    data = (
        b"user_id,login_id,status\n"
        b"1,a,active\n"
        b"2,j\xc3\xbcrgen,active\n"  # valid two-byte UTF-8 on line 3
        b"3,c,active\n"
        b"4,ren\xe9,active\n"  # Latin-1 on line 5
        b"5,e,active\n"
    )
    report = check_path(write(tmp_path, "u.csv", data))
    problem = only(report.problems)
    assert (problem.file, problem.line) == ("u.csv", 5)
    assert problem.message.startswith("Invalid UTF-8")
    assert str(problem).startswith("u.csv:5: Invalid UTF-8")
    assert report.counts == {"users": 5}


def test_invalid_utf8_far_into_a_big_file_keeps_its_line(tmp_path):
    rows = [f"{i},user{i},active\n".encode() for i in range(1, 20000)]
    rows[11999] = b"12000,caf\xe9,active\n"  # physical line 12001, well past the first chunk
    report = check_path(write(tmp_path, "u.csv", b"user_id,login_id,status\n" + b"".join(rows)))
    assert only(report.problems).line == 12001


def test_several_invalid_lines_are_one_problem_naming_the_first(tmp_path):
    data = b"user_id,login_id,status\n1,\xe9,active\n2,\xe9,active\n3,\xe9,active\n"
    problem = only(check_path(write(tmp_path, "u.csv", data)).problems)
    assert problem.line == 2 and "2 more lines" in problem.message


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        ("user_id,login_id\n1,a\n", "status"),
        ("course_id,user_id,status\nC1,1,active\n", "role or role_id"),
        ("account_id,parent_account_id\nA1,\n", "name, status"),
    ],
)
def test_missing_required_column_is_a_problem_naming_it(tmp_path, text, missing):
    report = check_path(write(tmp_path, "in.csv", text))
    problem = only(report.problems)
    assert problem.line == 1
    assert f"required column{'s' if ',' in missing else ''} {missing}:" in problem.message
    assert report.warnings == []  # not one identical warning per row on top


def test_bad_status_is_a_warning_with_its_line_and_the_file_stays_ok(tmp_path):
    text = (
        "user_id,login_id,status\n"  # 1
        "1,a,active\n"  # 2
        "\n"  # 3: blank, skipped
        "2,b,dropped\n"  # 4
        "3,,active\n"  # 5
        "4,d,ACTIVE\n"  # 6: statuses are case-insensitive
    )
    report = check_path(write(tmp_path, "u.csv", text))
    assert report.ok
    assert [(w.line, w.message) for w in report.warnings] == [
        (4, 'Improper status "dropped" for user'),
        (5, "No login_id given for user"),
    ]
    assert report.counts == {"users": 4}


def test_rows_with_more_fields_than_the_header_are_warnings(tmp_path):
    report = check_path(write(tmp_path, "u.csv", "user_id,login_id,status\n1,a,active,extra\n"))
    assert report.ok
    warning = only(report.warnings)
    assert warning.line == 2 and "has 4 fields but the header has 3" in warning.message


def test_blank_and_valueless_rows_are_skipped_and_not_counted(tmp_path):
    text = "\n\nuser_id,login_id,status\n\n1,a,active\n,,\n   \n\r\n2,b,active\n\n"
    report = check_path(write(tmp_path, "u.csv", text))
    assert report.ok and report.warnings == []
    assert report.counts == {"users": 2}


def test_header_only_is_fine_with_zero_rows(tmp_path):
    report = check_path(write(tmp_path, "u.csv", "user_id,login_id,status\n"))
    assert report.ok and report.counts == {"users": 0}


def test_only_blank_lines_has_no_header(tmp_path):
    problem = only(check_path(write(tmp_path, "u.csv", "\n\r\n\n")).problems)
    assert "no header row" in problem.message


def test_warnings_are_capped_with_and_n_more(tmp_path):
    text = "user_id,login_id,status\n" + "".join(f"{i},u{i},gone\n" for i in range(30))
    report = check_path(write(tmp_path, "u.csv", text), limits=Limits(max_warnings=5))
    assert report.ok
    assert [w.line for w in report.warnings[:5]] == [2, 3, 4, 5, 6]
    assert len(report.warnings) == 6
    assert report.warnings[5].message == "and 25 more warnings not listed"
    assert report.counts == {"users": 30}


def test_multiline_quoted_values_keep_physical_line_numbers(tmp_path):
    text = 'user_id,login_id,status,note\n1,a,active,"two\nlines"\n2,b,nope,x\n'
    report = check_path(write(tmp_path, "u.csv", text))
    assert report.ok
    assert only(report.warnings).line == 4
    assert report.counts == {"users": 2}


def test_escaped_quotes_and_quoted_commas_are_fine(tmp_path):
    text = 'user_id,login_id,status,full_name\n1,a,active,"O""Brien, Pat"\n2,b,active,""\n'
    report = check_path(write(tmp_path, "u.csv", text))
    assert report.ok and report.warnings == [], messages(report.problems)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        # unterminated quote at the end of the file: csv's non-strict mode would swallow it
        ('user_id,login_id,status\n1,a,active\n2,"b,active\n3,c,active\n', 4),
        # text after a closing quote
        ('user_id,login_id,status\n1,"a"x,active\n', 2),
        # a quote inside an unquoted value: Python keeps it, Canvas's Ruby parser refuses it
        ('user_id,login_id,status\n1,a,active\n2,b"c,active\n', 3),
        # the same, after spaces
        ('user_id,login_id,status\n1, "a",active\n', 2),
    ],
)
def test_broken_quoting_is_malformed_csv_with_its_line(tmp_path, text, line):
    problem = only(check_path(write(tmp_path, "u.csv", text)).problems)
    assert problem.message.startswith("Malformed CSV"), problem
    assert problem.line == line


def test_unterminated_quote_names_the_line_its_record_began_on(tmp_path):
    text = 'user_id,login_id,status\n1,a,active\n2,"b,active\n3,c,active\n'
    problem = only(check_path(write(tmp_path, "u.csv", text)).problems)
    assert "begins on line 3" in problem.message


def test_a_record_longer_than_the_bound_is_refused_without_reading_on(tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "MAX_RECORD_CHARS", 1000)
    path = write(tmp_path, "u.csv", "user_id,login_id,status\n1,a,active\n" + "x" * 5000)
    problem = only(check_path(path).problems)
    assert problem.line == 3 and "record longer than" in problem.message


def test_csv_is_streamed_in_bounded_memory(tmp_path):
    row = "12345678,someone.with.a.long.login@example.edu,active\n"
    path = write(tmp_path, "big.csv", "user_id,login_id,status\n" + row * 25_000)
    bound = 512 * 1024  # measured peak is about 190 KiB, whatever the file's size
    assert path.stat().st_size > 2 * bound
    tracemalloc.start()
    try:
        report = check_path(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok and report.counts == {"users": 25_000}
    assert peak < bound, f"peak {peak} bytes while reading {path.stat().st_size}"


def test_binary_garbage_without_newlines_is_refused_in_bounded_memory(tmp_path):
    path = write(
        tmp_path, "u.csv", os.urandom(1024) * 12 * 1024
    )  # 12 MiB, no line ends to speak of
    tracemalloc.start()
    try:
        report = check_path(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not report.ok
    assert peak < 64 * 1024**2


# ------------------------------------------------------------ size, name, kind of file


def test_empty_file_is_refused(tmp_path):
    for name in ("u.csv", "u.zip", "u.xml"):
        problem = only(check_path(write(tmp_path, name, b"")).problems)
        assert problem == Problem(name, None, "is empty (0 bytes)")
        assert str(problem) == f"{name}: is empty (0 bytes)"


def test_too_big_is_refused_without_reading(tmp_path):
    report = check_path(write(tmp_path, "u.csv", USERS), limits=Limits(max_bytes=10))
    assert "too big to post" in only(report.problems).message
    assert report.counts == {}


def test_extension_must_be_configured_and_is_case_insensitive(tmp_path):
    assert check_path(write(tmp_path, "USERS.CSV", USERS)).ok
    assert (
        "has the extension .txt"
        in only(check_path(write(tmp_path, "u.txt", USERS)).problems).message
    )
    assert "no extension" in only(check_path(write(tmp_path, "users", USERS)).problems).message
    report = check_path(write(tmp_path, "u.csv", USERS), extensions=("zip",))
    assert "only files named .zip are taken" in only(report.problems).message


def test_other_extension_when_configured_is_refused_as_canvas_would_import_nothing(tmp_path):
    report = check_path(write(tmp_path, "u.txt", USERS), extensions=("txt",))
    assert report.kind == "other"
    assert "would import nothing" in only(report.problems).message


def test_display_name_is_used_in_problems(tmp_path):
    path = write(tmp_path, "sisdrop-1234.csv", "nope\n")
    report = check_path(path, name="users.csv")
    assert report.name == "users.csv" and only(report.problems).file == "users.csv"


def test_validate_content_false_checks_only_kind_extension_empty_and_size(tmp_path):
    assert check_path(write(tmp_path, "x.csv", "not,a,sis,file\n"), validate_content=False).ok
    assert check_path(write(tmp_path, "x.xml", "<broken"), validate_content=False).ok
    assert not check_path(write(tmp_path, "e.csv", b""), validate_content=False).ok
    assert not check_path(write(tmp_path, "x.txt", "a"), validate_content=False).ok
    big = check_path(
        write(tmp_path, "b.csv", USERS), validate_content=False, limits=Limits(max_bytes=5)
    )
    assert not big.ok


def test_missing_file_no_longer_exists(tmp_path):
    report = check_path(tmp_path / "gone.csv")
    assert only(report.problems).message == "no longer exists"


def test_nul_in_the_path_is_a_problem_not_an_exception(tmp_path):
    assert not check_path(tmp_path / "a\x00b.csv").ok


def test_symlink_is_never_followed(tmp_path):
    target = write(tmp_path, "real.csv", USERS)
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    problem = only(check_path(link).problems)
    assert problem.message == "is a symbolic link; links are never followed"


def test_dangling_symlink_is_a_symlink(tmp_path):
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "nowhere.csv")
    assert "symbolic link" in only(check_path(link).problems).message


def test_symlink_to_a_fifo_returns_at_once_without_opening_it(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "link.csv"
    link.symlink_to(fifo)
    report = returns_within(5, check_path, link)
    assert "symbolic link" in only(report.problems).message


def test_symlink_to_an_unreadable_file_is_refused_as_a_link(tmp_path):
    target = write(tmp_path, "secret.csv", USERS)
    target.chmod(0)
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    assert "symbolic link" in only(check_path(link).problems).message


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "users.csv"
    os.mkfifo(fifo)  # nobody ever writes to it: a blocking open or read would hang
    report = returns_within(5, check_path, fifo)
    assert only(report.problems).message == "is a FIFO (named pipe), not a regular file"


def test_directory_named_like_a_csv_is_refused(tmp_path):
    folder = tmp_path / "x.csv"
    folder.mkdir()
    assert "is a directory" in only(check_path(folder).problems).message


def test_device_is_refused(tmp_path):
    report = returns_within(5, check_path, Path("/dev/null"), name="null.csv")
    assert only(report.problems).message == "is a device, not a regular file"


def test_socket_is_refused(tmp_path):
    path = tmp_path / "s.csv"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(str(path))
        except OSError as e:  # e.g. a tmp_path longer than a socket path may be
            pytest.skip(f"cannot bind a unix socket here: {e}")
        report = returns_within(5, check_path, path)
    finally:
        sock.close()
    assert "is a socket" in only(report.problems).message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_refused_naming_permission(tmp_path):
    path = write(tmp_path, "u.csv", USERS)
    path.chmod(0)
    assert "permission denied" in only(check_path(path).problems).message


def test_permission_denied_wording_when_open_is_refused(tmp_path, monkeypatch):
    # Runs as root too (where chmod 000 proves nothing): the kernel's EACCES, simulated.
    path = write(tmp_path, "u.csv", USERS)

    def refuse(*_args, **_kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(preflight.os, "open", refuse)
    assert "permission denied" in only(check_path(path).problems).message


# ----------------------------------------------------------------------------------- zip


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
    view = preflight._Capped(io.BytesIO(b"x" * 1000), 10)
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


# ----------------------------------------------------------------------------------- XML

IMS = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<!DOCTYPE enterprise SYSTEM "ims_epv1p1.dtd">\n'
    "<enterprise>\n  <person><sourcedid><id>1</id></sourcedid></person>\n</enterprise>\n"
)


def test_xml_with_instructure_csv_is_refused(tmp_path):
    report = check_path(write(tmp_path, "people.xml", IMS))
    assert report.kind == "xml"
    message = only(report.problems).message
    assert "instructure_csv" in message and "nothing imported" in message and "ims_xml" in message


def test_xml_with_ims_xml_well_formed_is_ok(tmp_path):
    assert XML_IMPORT_TYPES == frozenset({"ims_xml"})
    report = check_path(write(tmp_path, "people.xml", IMS), import_type="ims_xml")
    assert report.ok, messages(report.problems)


def test_big_xml_is_parsed_in_chunks(tmp_path):
    body = "".join(
        f"<person><id>{i}</id><name>Person number {i}</name></person>\n" for i in range(20000)
    )
    path = write(tmp_path, "big.xml", f"<enterprise>\n{body}</enterprise>\n")
    assert check_path(path, import_type="ims_xml").ok
    broken = write(tmp_path, "broken.xml", f"<enterprise>\n{body}</enterprise")
    assert only(check_path(broken, import_type="ims_xml").problems).line == 20002


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<lolz>&lol9;</lolz>
"""


def test_billion_laughs_is_refused(tmp_path):
    path = write(tmp_path, "lol.xml", BILLION_LAUGHS)
    report = returns_within(5, check_path, path, import_type="ims_xml")
    problem = only(report.problems)
    assert problem.line == 3 and "entity declarations are refused" in problem.message


@pytest.mark.parametrize(
    "doc",
    [
        '<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
        '<!DOCTYPE r [<!ENTITY % p SYSTEM "http://example.invalid/p.dtd"> %p;]><r/>',
        '<!DOCTYPE r [<!ENTITY u SYSTEM "x" NDATA png>]><r/>',
    ],
    ids=["external-general", "external-parameter", "unparsed"],
)
def test_external_entities_are_refused(tmp_path, doc):
    report = check_path(write(tmp_path, "x.xml", doc), import_type="ims_xml")
    assert "entity declarations are refused" in only(report.problems).message


def test_entities_of_an_external_dtd_are_never_read(tmp_path):
    write(tmp_path, "ext.dtd", '<!ENTITY secret "SECRET">')
    doc = '<!DOCTYPE r SYSTEM "ext.dtd"><r>&secret;</r>'
    problem = only(check_path(write(tmp_path, "x.xml", doc), import_type="ims_xml").problems)
    assert "never read" in problem.message and "SECRET" not in problem.message


def test_malformed_xml_names_its_line(tmp_path):
    path = write(tmp_path, "x.xml", "<enterprise>\n<person>\n</persn>\n</enterprise>\n")
    problem = only(check_path(path, import_type="ims_xml").problems)
    assert problem.line == 3 and "not well-formed XML: mismatched tag" in problem.message


# ------------------------------------------------------------------------ [import] table

GOOD_PARAMS: dict[str, object] = {
    "import_type": "instructure_csv",
    "extension": "zip",
    "batch_mode": True,
    "batch_mode_term_id": "sis_term_id:2026FA",
    "skip_deletes": False,
    "override_sis_stickiness": True,
    "add_sis_stickiness": True,
    "clear_sis_stickiness": False,
    "update_sis_id_if_login_claimed": False,
    "diffing_data_set_identifier": "nightly",
    "diffing_remaster_data_set": False,
    "diffing_drop_status": "completed",
    "diffing_user_remove_status": "suspended",
    "batch_mode_enrollment_drop_status": "inactive",
    "change_threshold": 10,
    "diff_row_count_threshold": 5000,
}


def test_good_import_params_pass():
    assert check_import_params({}) == []
    assert check_import_params(GOOD_PARAMS) == []
    assert check_import_params({"import_type": "ims_xml"}) == []
    assert check_import_params({"batch_mode_term_id": 42, "batch_mode": True}) == []
    assert check_import_params({"multi_term_batch_mode": True, "change_threshold": 100}) == []
    assert (
        check_import_params(
            {"batch_mode": True, "multi_term_batch_mode": True, "change_threshold": 1}
        )
        == []
    )


def only_message(params: dict[str, object]) -> str:
    found = check_import_params(params)
    assert len(found) == 1, found
    return found[0]


def test_unknown_parameter_lists_the_known_ones():
    message = only_message({"batchmode": True})
    assert message.startswith("import.batchmode: unknown parameter")
    for known in ("batch_mode", "diff_row_count_threshold", "update_sis_id_if_login_claimed"):
        assert known in message
    assert only_message({"attachment": "x"}).startswith("import.attachment: unknown")


@pytest.mark.parametrize("value", ["", "  ", 3, None, True])
def test_import_type_must_be_a_non_empty_string(value):
    message = only_message({"import_type": value})
    assert message.startswith("import.import_type:") and "instructure_csv" in message


@pytest.mark.parametrize("value", ["txt", "CSV", ".zip", 1])
def test_extension_must_be_csv_zip_or_xml(value):
    assert only_message({"extension": value}).startswith("import.extension:")


@pytest.mark.parametrize(
    "key",
    [
        "batch_mode",
        "multi_term_batch_mode",
        "skip_deletes",
        "override_sis_stickiness",
        "add_sis_stickiness",
        "clear_sis_stickiness",
        "update_sis_id_if_login_claimed",
        "diffing_remaster_data_set",
    ],
)
def test_booleans_must_be_booleans(key):
    params: dict[str, object] = {key: "true", "change_threshold": 10, "batch_mode_term_id": "T"}
    assert [m for m in check_import_params(params) if "must be true or false" in m] == [
        f"import.{key}: must be true or false, not 'true'"
    ]


@pytest.mark.parametrize(
    ("key", "good", "bad"),
    [
        (
            "diffing_drop_status",
            ["deleted", "completed", "inactive", "deleted_last_completed"],
            "suspended",
        ),
        (
            "batch_mode_enrollment_drop_status",
            ["deleted", "completed", "inactive", "deleted_last_completed"],
            "dropped",
        ),
        ("diffing_user_remove_status", ["deleted", "suspended"], "inactive"),
    ],
)
def test_enumerations(key, good, bad):
    for value in good:
        assert check_import_params({key: value}) == []
    assert only_message({key: bad}).startswith(f"import.{key}: '{bad}' is not one of")
    assert only_message({key: "Deleted"}).startswith(f"import.{key}:")


@pytest.mark.parametrize("value", [0, 101, -5, "10", 10.0, True])
def test_change_threshold_is_a_whole_number_1_to_100(value):
    assert only_message({"change_threshold": value}).startswith("import.change_threshold:")


@pytest.mark.parametrize("value", [0, -1, "5", 2.5, True])
def test_diff_row_count_threshold_is_a_whole_number_above_0(value):
    assert only_message({"diff_row_count_threshold": value}).startswith(
        "import.diff_row_count_threshold:"
    )


def test_diffing_identifier_is_at_most_128_characters():
    assert check_import_params({"diffing_data_set_identifier": "x" * 128}) == []
    assert "129 characters" in only_message({"diffing_data_set_identifier": "x" * 129})
    assert only_message({"diffing_data_set_identifier": ""}).startswith(
        "import.diffing_data_set_identifier:"
    )
    assert only_message({"diffing_data_set_identifier": 7}).startswith(
        "import.diffing_data_set_identifier:"
    )


def test_batch_mode_term_id_must_be_an_id():
    for value in ("", True, 1.5):
        assert only_message({"batch_mode_term_id": value}).startswith("import.batch_mode_term_id:")


def test_batch_mode_needs_a_term():
    assert only_message({"batch_mode": True}).startswith(
        "import.batch_mode: true needs batch_mode_term_id"
    )
    assert check_import_params({"batch_mode": False}) == []


def test_multi_term_batch_mode_needs_change_threshold_and_is_never_false():
    assert "needs change_threshold" in only_message({"multi_term_batch_mode": True})
    message = only_message({"multi_term_batch_mode": False, "change_threshold": 5})
    assert message.startswith("import.multi_term_batch_mode:") and "even as false" in message


@pytest.mark.parametrize("key", ["add_sis_stickiness", "clear_sis_stickiness"])
def test_stickiness_flags_need_override(key):
    assert (
        only_message({key: True}) == f"import.{key}: only works with override_sis_stickiness = true"
    )
    assert "override" in only_message({key: True, "override_sis_stickiness": False})
    assert check_import_params({key: True, "override_sis_stickiness": True}) == []
    assert check_import_params({key: False}) == []


# --------------------------------------------------------------------- property-based

FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def assert_sound(report: Report) -> None:
    """What must hold of any report, whatever the input."""
    assert isinstance(report, Report)
    assert report.ok is (not report.problems)
    assert len(report.problems) <= Limits().max_problems + 1
    assert len(report.warnings) <= Limits().max_warnings + 1
    for item in report.problems + report.warnings:
        text = str(item)
        text.encode("utf-8")  # printable whatever the name or content held
        assert "\n" not in text and "\r" not in text
        assert "internal error" not in item.message, text
    if report.members:
        assert sum(m.rows for m in report.members) == sum(report.counts.values())


@FUZZ
@given(
    data=st.binary(max_size=2048),
    extension=st.sampled_from(["csv", "zip", "xml"]),
    import_type=st.sampled_from(["instructure_csv", "ims_xml"]),
)
def test_random_bytes_never_raise(tmp_path, data, extension, import_type):
    path = write(tmp_path, f"drop.{extension}", data)
    assert_sound(check_path(path, import_type=import_type))


def mutate(draw, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        if not out:
            break
        position = draw(st.integers(0, len(out) - 1))
        out[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]
    return bytes(out)


VALID_CSV = (
    b'\xef\xbb\xbfuser_id,login_id,status,full_name\n1,a,active,"Pat, O""Brien"\n'
    b'2,b,deleted,"two\nlines"\n3,c,active,J\xc3\xbcrgen\n'
)


@FUZZ
@given(st.data())
def test_mutated_csv_never_raises(tmp_path, data):
    path = write(tmp_path, "users.csv", mutate(data.draw, VALID_CSV))
    assert_sound(check_path(path))


def _valid_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("feed/users.csv", VALID_CSV)
        zf.writestr("feed/enrollments.csv", ENROLLMENTS)
        zf.writestr("__MACOSX/._users.csv", b"junk")
    return buffer.getvalue()


VALID_ZIP = _valid_zip()


@FUZZ
@given(st.data())
def test_mutated_zip_never_raises(tmp_path, data):
    path = write(tmp_path, "drop.zip", mutate(data.draw, VALID_ZIP))
    assert_sound(check_path(path))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    display=st.text(max_size=60),
    real=st.text(min_size=1, max_size=40).filter(
        lambda s: (
            "/" not in s and "\x00" not in s and s not in (".", "..") and len(s.encode()) < 200
        )
    ),
    body=st.sampled_from([USERS.encode(), VALID_ZIP, b"<r/>", b""]),
)
def test_random_unicode_names_never_raise(tmp_path, display, real, body):
    path = write(tmp_path, real, body)
    try:
        assert_sound(check_path(path))
        assert_sound(check_path(path, name=display))
    finally:
        path.unlink()


def test_big_csv_rest_is_still_read_whole_by_the_fast_pass(tmp_path: Path) -> None:
    """Past DEEP_CHARS rows are not checked one by one, but every byte is still read."""
    from sisdropd.preflight import DEEP_CHARS

    rows = DEEP_CHARS // 20 + 5000
    body = "".join(f"u{i},l{i},active\n" for i in range(rows))
    good = tmp_path / "users.csv"
    good.write_text("user_id,login_id,status\n" + body)
    r = check_path(good)
    assert r.ok and r.counts == {"users": rows}
    bad = tmp_path / "bad.csv"
    bad.write_bytes(("user_id,login_id,status\n" + body).encode() + b"u\xff,x,active\n")
    r = check_path(bad)
    assert not r.ok and r.problems[0].line == rows + 2 and "Invalid UTF-8" in r.problems[0].message
    quote = tmp_path / "quote.csv"
    quote.write_text("user_id,login_id,status\n" + body + 'v,"open,active\n')
    r = check_path(quote)
    assert not r.ok and "never ends" in r.problems[0].message
    stray = tmp_path / "stray.csv"  # two stray quotes: an even count, still refused by Canvas
    stray.write_text("user_id,login_id,status\n" + body + 'v,a"b,active\nw,c"d,active\n')
    r = check_path(stray)
    assert not r.ok and r.problems[0].line == rows + 2 and "quote inside an unquoted value (column 4)" in r.problems[0].message
    fine = tmp_path / "fine.csv"  # quoted values with commas and line breaks are fine
    fine.write_text("user_id,login_id,status\n" + body + 'v,"a, ""b""\nc",active\nw,x,active\n')
    r = check_path(fine)
    assert r.ok, r.problems


def test_csv_report_carries_the_sha256_of_every_byte(tmp_path: Path) -> None:
    import hashlib

    p = tmp_path / "users.csv"
    p.write_text("user_id,login_id,status\n" + "".join(f"u{i},l{i},active\n" for i in range(300000)))
    assert check_path(p).sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    z = tmp_path / "x.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("users.csv", "user_id,login_id,status\nu1,l1,active\n")
    assert check_path(z).sha256 is None  # a zip is not read whole: the daemon hashes it itself
