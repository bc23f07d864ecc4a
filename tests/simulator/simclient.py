"""Helpers for the simulator's own tests: a tiny Canvas client, fixtures, sample files.

Each test starts its own FakeCanvas with short run times (the ``sim`` fixture here, or a
``with FakeCanvas(...)`` of its own), talks to it over real HTTP with ``requests`` and waits
on conditions with a deadline (never a bare sleep). Import the fixtures into a test module
with ``from .simclient import client_fixture, sim_fixture  # noqa: F401``.
"""

from __future__ import annotations

import io
import re
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests

from sisdropd.simulator import FakeCanvas

T = TypeVar("T")

TOP_KEYS = (
    "id created_at started_at ended_at updated_at progress workflow_state data batch_mode "
    "batch_mode_term_id multi_term_batch_mode override_sis_stickiness add_sis_stickiness "
    "update_sis_id_if_login_claimed clear_sis_stickiness diffing_data_set_identifier "
    "diffing_remaster diffed_against_import_id diffing_drop_status diffing_user_remove_status "
    "skip_deletes change_threshold diff_row_count_threshold"
).split()
TERMINAL = {"imported", "imported_with_messages", "failed", "failed_with_messages", "aborted"}
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

USERS = b"user_id,login_id,first_name,last_name,email,status\nu1,l1,Ann,A,a@x.org,active\nu2,l2,Bob,B,,active\n"
ENROLLMENTS = b"course_id,user_id,role,status\nC1,u1,student,active\nC1,u2,teacher,active\n"


def wait_for(pred: Callable[[], T], timeout: float = 5.0, what: str = "condition") -> T:
    """Poll ``pred`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def sim_threads() -> list[threading.Thread]:
    """The simulator's threads still alive (its worker, analysers, server, handlers)."""
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("fakecanvas") or "process_request_thread" in t.name
    ]


@pytest.fixture(name="sim")
def sim_fixture(tmp_path: Path) -> Iterator[FakeCanvas]:
    fc = FakeCanvas(
        import_seconds=0.2, errors_attachment_delay=0.3, storage_dir=tmp_path / "store"
    ).start()
    try:
        yield fc
    finally:
        fc.stop()
    assert not sim_threads(), "the simulator leaked threads"


class Client:
    """A tiny Canvas client for the tests (``token`` defaults to the simulator's)."""

    def __init__(self, sim: FakeCanvas, token: str | None = None) -> None:
        self.sim = sim
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Bearer {token or sim.token}"

    def url(self, path: str) -> str:
        return f"{self.sim.url}/api/v1/accounts/1{path}"

    def post_file(self, name: str, content: bytes, **params: Any) -> requests.Response:
        return self.s.post(
            self.url("/sis_imports"), data=params, files={"attachment": (name, content)}
        )

    def show(self, iid: int) -> dict[str, Any]:
        r = self.s.get(self.url(f"/sis_imports/{iid}"))
        assert r.status_code == 200, r.text
        return r.json()

    def until(
        self, iid: int, pred: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            d = self.show(iid)
            return d if pred(d) else None

        return wait_for(check, timeout, f"import {iid}")

    def final(self, iid: int, timeout: float = 5.0) -> dict[str, Any]:
        return self.until(iid, lambda d: d["workflow_state"] in TERMINAL, timeout)

    def history(self, iid: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Every answer of show() until the import is final, polled every 10 ms."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while not seen or seen[-1]["workflow_state"] not in TERMINAL:
            if time.monotonic() > deadline:
                pytest.fail(f"import {iid} not final after {timeout}s: {seen[-1:]}")
            seen.append(self.show(iid))
            time.sleep(0.01)
        return seen

    def close(self) -> None:
        self.s.close()


@pytest.fixture(name="client")
def client_fixture(sim: FakeCanvas) -> Iterator[Client]:
    c = Client(sim)
    yield c
    c.close()


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def enrollments_csv(n: int, course: str = "C1") -> bytes:
    """An enrollments CSV of ``n`` active students u0..u{n-1} in ``course``."""
    return b"course_id,user_id,role,status\n" + b"".join(
        b"%s,u%d,student,active\n" % (course.encode(), i) for i in range(n)
    )
