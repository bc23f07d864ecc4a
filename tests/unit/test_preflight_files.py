"""The pre-flight check of a dropped file as a file: size, name, links, FIFOs, devices.

Every rule has a test that fails if the rule breaks; files are written into tmp_path.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import pytest

from sisdropd.preflight import Limits, Problem, check_path
from tests.unit.preflight_helpers import USERS, only, returns_within, write


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


def test_a_missing_file_does_not_exist(tmp_path):
    report = check_path(tmp_path / "gone.csv")
    assert only(report.problems).message == "does not exist"


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

    monkeypatch.setattr(os, "open", refuse)
    assert "permission denied" in only(check_path(path).problems).message
