"""Files and assertions shared by the pre-flight tests (tests/unit/test_preflight_*.py)."""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

from sisdropd.preflight import Problem, Report

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
