"""The pre-flight check against random and mutated bytes and names: it never raises.

Every rule has a test that fails if the rule breaks; files are written into tmp_path.
"""

from __future__ import annotations

import io
import zipfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sisdropd.preflight import Limits, Report, check_path
from tests.unit.preflight_helpers import ENROLLMENTS, USERS, write

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
