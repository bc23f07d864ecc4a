"""The Canvas client against the simulator: the one retry loop, pacing, pagination, cut uploads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sisdropd.canvas import (
    DOWNLOAD_ATTEMPTS,
    CanvasClient,
    NotFound,
    Retryable,
    Stopped,
    client_for,
)
from sisdropd.config import from_dict
from sisdropd.simulator import FakeCanvas
from tests.support import TOKEN, USERS, wait_for


@pytest.fixture
def client(sim: FakeCanvas) -> Iterator[CanvasClient]:
    c = CanvasClient(sim.url, "1", TOKEN, timeout=5, retry_initial=0.05, retry_max=0.1)
    yield c
    c.close()


def test_client_for_sets_the_patience_of_each_caller() -> None:
    cfg = from_dict({"canvas": {"base_url": "https://x.instructure.com", "retry_initial": 2, "retry_max": 600},
                     "folders": {"root": "/srv/s"}})
    clients = {p: client_for(cfg, "t0ken", patience=p) for p in ("daemon", "submit", "command")}
    assert {p: (c.retry_initial, c.retry_max) for p, c in clients.items()} == {
        "daemon": (2, 600), "submit": (2, 60), "command": (1, 5)}
    for c in clients.values():
        c.close()


def test_a_read_is_retried_through_transient_failures(client: CanvasClient, sim: FakeCanvas) -> None:
    sim.inject("503", method="GET", path="users/self", count=2)
    assert client.whoami()["id"] == 17
    assert sim.faults_served() == {"503": 2} and client.retries["network"] == 2


def test_a_read_gives_up_at_its_deadline(client: CanvasClient, sim: FakeCanvas) -> None:
    sim.inject("500", method="GET", path="users/self", count=1000)
    with pytest.raises(Retryable):
        client.whoami(deadline=time.time() + 0.5)
    assert 1 <= sim.faults_served()["500"] < 1000


def test_a_refusal_is_not_retried(client: CanvasClient, sim: FakeCanvas) -> None:
    with pytest.raises(NotFound):
        client.get_import(999999)
    # The simulator logs a request once it has answered it: a later request, once logged,
    # comes after every try of this one.
    client.whoami()
    wait_for(lambda: any("users/self" in r[1] for r in sim.request_log()), 5, what="the later request logged")
    assert [r for r in sim.request_log() if "999999" in r[1]] == [("GET", "/api/v1/accounts/1/sis_imports/999999", 404)]


def test_the_list_follows_every_page(client: CanvasClient, tmp_path: Path) -> None:
    f = tmp_path / "users.csv"
    f.write_text(USERS)
    ids = [client.create_import(f, upload_name=f"sisdrop-{i}-users.csv", params={"import_type": "instructure_csv"})["id"] for i in range(3)]
    assert sorted(imp["id"] for imp in client.list_imports(per_page=1)) == sorted(ids)


def test_a_download_is_tried_a_few_times_then_given_up(client: CanvasClient, sim: FakeCanvas, tmp_path: Path) -> None:
    sim.set_outcome("enrollments", "imported_with_messages")
    f = tmp_path / "enrollments.csv"
    f.write_text("course_id,user_id,role,status\nC1,u1,student,active\nC1,u2,student,dropped\n")
    imp = client.create_import(f, upload_name="sisdrop-0-enrollments.csv", params={"import_type": "instructure_csv"})
    url = wait_for(lambda: (client.get_import(imp["id"]).get("errors_attachment") or {}).get("url"), 10, what="the errors file")
    sim.inject("500", method="GET", path="/files/", count=100)
    with pytest.raises(Retryable):
        client.download(url, tmp_path / "errors.csv")
    assert sim.faults_served()["500"] == DOWNLOAD_ATTEMPTS and not (tmp_path / "errors.csv").exists()
    assert list(tmp_path.glob(".sisdropd-*")) == []


def test_an_upload_cut_off_by_stop_creates_nothing(sim: FakeCanvas, tmp_path: Path) -> None:
    stop = threading.Event()
    c = CanvasClient(sim.url, "1", TOKEN, timeout=5, stop=stop)
    f = tmp_path / "users.csv"
    f.write_text(USERS)
    stop.set()  # the daemon is stopping: the body's file part is never sent
    with pytest.raises(Stopped):
        c.create_import(f, upload_name="sisdrop-0-users.csv", params={"import_type": "instructure_csv"})
    c.close()
    assert sim.imports() == []


def test_client_slows_down_when_the_quota_runs_low(sim: FakeCanvas) -> None:
    """Canvas refills about 10 units a second: below 100 left, the client waits for the refill."""
    c = CanvasClient(sim.url, "1", TOKEN, timeout=5)
    try:
        c.whoami()
        assert c.remaining is not None and c.remaining > 100  # what Canvas said: plenty left
        t0 = time.monotonic()
        c.whoami()
        assert time.monotonic() - t0 < 0.7  # the slowed call below takes 0.8 s
        c.remaining, c._remaining_at = 92.0, time.monotonic()  # as if Canvas had just said 92
        t0 = time.monotonic()
        c.whoami()
        assert 0.7 <= time.monotonic() - t0 < 3, "8 units short at 10 a second: about 0.8 s"
    finally:
        c.close()
