"""The at-most-once core: recognising our import in Canvas's list after a lost answer.

``attachment_matches`` decides whether an import's ``csv_attachments`` are what our post
produces; ``find_posted`` looks through Canvas's list (the simulator, over HTTP) and says
"found", "waiting" (an import of the post's user that lists no files yet, in any non-final
state, cannot be told apart yet) or "absent" (no candidate: posting again is safe once
that holds for the grace period). The worker's side is in test_lost_answer.py.
"""

from __future__ import annotations

import io
import re
import time
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sisdropd import importer
from sisdropd.canvas import CanvasClient, Refused, client_for
from sisdropd.config import from_dict
from sisdropd.simulator import FakeCanvas
from tests.support import TOKEN, USERS, wait_for

UPLOAD = "sisdrop-0123456789abcdef-users.csv"


def att(display_name: str, size: int = 10, filename: str | None = None) -> dict[str, Any]:
    return {"display_name": display_name, "filename": filename or display_name, "size": size}


# -- attachment_matches ------------------------------------------------------------------


def test_a_csv_matches_by_its_unique_upload_name() -> None:
    assert importer.attachment_matches({"csv_attachments": [att(UPLOAD)]}, UPLOAD, None)
    # Canvas may keep only the CGI-escaped filename: it is unescaped before comparing.
    assert importer.attachment_matches({"csv_attachments": [att("x", filename="sisdrop-0123456789abcdef-users.csv")]}, UPLOAD, None)
    assert importer.attachment_matches({"csv_attachments": [att("?", filename="sisdrop-01-a+b.csv")]}, "sisdrop-01-a b.csv", None)


def test_a_users_csv_with_passwords_is_listed_filtered_and_still_matches() -> None:
    assert importer.attachment_matches({"csv_attachments": [att(UPLOAD.replace(".csv", "_filtered.csv"))]}, UPLOAD, None)


def test_another_post_or_no_attachments_do_not_match() -> None:
    assert not importer.attachment_matches({"csv_attachments": [att("sisdrop-ffffffffffffffff-users.csv")]}, UPLOAD, None)
    assert not importer.attachment_matches({"csv_attachments": []}, UPLOAD, None)
    assert not importer.attachment_matches({}, UPLOAD, None)
    assert not importer.attachment_matches({"csv_attachments": [att("users.csv")]}, UPLOAD, None)


def test_a_zip_matches_by_its_members_names_and_sizes() -> None:
    members = [["users.csv", 120], ["enrollments.csv", 80]]
    listed = {"csv_attachments": [att("enrollments.csv", 80), att("users.csv", 120)]}
    assert importer.attachment_matches(listed, "sisdrop-01-term.zip", members)
    other_sizes = {"csv_attachments": [att("enrollments.csv", 81), att("users.csv", 120)]}
    assert not importer.attachment_matches(other_sizes, "sisdrop-01-term.zip", members)
    fewer = {"csv_attachments": [att("users.csv", 120)]}
    assert not importer.attachment_matches(fewer, "sisdrop-01-term.zip", members)
    assert not importer.attachment_matches(listed, "sisdrop-01-term.zip", None)  # members unknown


def test_a_zip_whose_users_member_is_listed_filtered_matches_by_names_and_count() -> None:
    members = [["users.csv", 120], ["enrollments.csv", 80]]
    listed = {"csv_attachments": [att("users_filtered.csv", 97), att("enrollments.csv", 80)]}
    assert importer.attachment_matches(listed, "sisdrop-01-term.zip", members)
    another = {"csv_attachments": [att("courses_filtered.csv", 97), att("enrollments.csv", 80)]}
    assert not importer.attachment_matches(another, "sisdrop-01-term.zip", members)
    # Only the filtered member may differ in size: another zip of the same names is not ours.
    resized = {"csv_attachments": [att("users_filtered.csv", 97), att("enrollments.csv", 81)]}
    assert not importer.attachment_matches(resized, "sisdrop-01-term.zip", members)


# -- find_posted against the simulator ------------------------------------------------------


@pytest.fixture
def client(sim: FakeCanvas) -> Iterator[CanvasClient]:
    cfg = from_dict({"canvas": {"base_url": sim.url, "account_id": "1", "timeout": 5, "retry_initial": 0.05, "retry_max": 0.2},
                     "folders": {"root": "/unused"}})
    c = client_for(cfg, TOKEN)
    yield c
    c.close()


def post(client: CanvasClient, tmp_path: Path, name: str, data: bytes, upload: str) -> dict[str, Any]:
    path = tmp_path / name
    path.write_bytes(data)
    return client.create_import(path, upload_name=upload, params={"import_type": "instructure_csv"})


def find(client: CanvasClient, upload: str | re.Pattern[str], since: float, **kw: Any) -> tuple[str, dict[str, Any] | None]:
    args: dict[str, Any] = {"members": None, "post_user_id": 17, "exclude": set(), **kw}
    return importer.find_posted(client, upload=upload, post_started=since, **args)


def started(client: CanvasClient, import_id: int) -> bool:
    return bool(client.get_import(import_id).get("csv_attachments"))


def state_of(client: CanvasClient, import_id: int) -> str:
    return str(client.get_import(import_id)["workflow_state"])


def test_found_once_canvas_lists_its_attachments(client: CanvasClient, tmp_path: Path) -> None:
    t0 = time.time()
    imp = post(client, tmp_path, "users.csv", USERS.encode(), UPLOAD)
    wait_for(lambda: started(client, imp["id"]), 10, what="the import to start")
    verdict, found = find(client, UPLOAD, t0, size=len(USERS))
    assert verdict == "found" and found is not None and found["id"] == imp["id"]
    # The name alone is not enough when the size is known: another size is another file.
    assert find(client, UPLOAD, t0, size=len(USERS) + 1) == ("absent", None)


def test_found_for_a_zip_by_its_members(client: CanvasClient, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("users.csv", USERS)
    t0 = time.time()
    imp = post(client, tmp_path, "term.zip", buf.getvalue(), "sisdrop-0123456789abcdef-term.zip")
    wait_for(lambda: started(client, imp["id"]), 10, what="the import to start")
    verdict, found = find(client, "sisdrop-0123456789abcdef-term.zip", t0, members=[["users.csv", len(USERS)]])
    assert verdict == "found" and found is not None and found["id"] == imp["id"]


def test_waiting_while_one_of_our_imports_is_pending_without_attachments(client: CanvasClient, sim: FakeCanvas, tmp_path: Path) -> None:
    sim.set_outcome("users", "stuck")  # stays `created`: Canvas has not unpacked the upload yet
    t0 = time.time()
    imp = post(client, tmp_path, "users.csv", USERS.encode(), UPLOAD)
    assert state_of(client, imp["id"]) == "created"
    verdict, cand = find(client, "sisdrop-ffffffffffffffff-users.csv", t0)
    assert verdict == "waiting" and cand is not None and cand["id"] == imp["id"]  # may be ours: wait
    # ... unless it is known to be another file's, or another user's.
    assert find(client, "sisdrop-ffffffffffffffff-users.csv", t0, exclude={imp["id"]}) == ("absent", None)
    assert find(client, "sisdrop-ffffffffffffffff-users.csv", t0, post_user_id=999) == ("absent", None)


def test_waiting_while_our_import_is_importing_but_not_yet_unpacked(client: CanvasClient, sim: FakeCanvas, tmp_path: Path) -> None:
    """Canvas saves `importing` before it has fetched and unpacked the upload (§9): no files
    listed then proves nothing."""
    sim.set_outcome("users", None, seconds=60, attachments_delay=30)
    t0 = time.time()
    imp = post(client, tmp_path, "users.csv", USERS.encode(), UPLOAD)
    wait_for(lambda: state_of(client, imp["id"]) == "importing", 10, what="importing")
    verdict, cand = find(client, "sisdrop-ffffffffffffffff-users.csv", t0)
    assert verdict == "waiting" and cand is not None and cand["id"] == imp["id"]


def test_an_import_that_ended_without_listing_files_is_no_candidate(client: CanvasClient, sim: FakeCanvas, tmp_path: Path) -> None:
    sim.set_outcome("users", "failed_early", error_message="Could not fetch the upload")
    t0 = time.time()
    imp = post(client, tmp_path, "users.csv", USERS.encode(), UPLOAD)
    wait_for(lambda: state_of(client, imp["id"]) == "failed", 10, what="the early failure")
    assert not client.get_import(imp["id"]).get("csv_attachments")
    assert find(client, UPLOAD, t0) == ("absent", None)  # it changed nothing in Canvas


def test_a_batch_stuck_initializing_stops_being_a_candidate_after_a_time_growing_with_size(client: CanvasClient, tmp_path: Path) -> None:
    """A parameter Canvas rejects after saving the batch leaves it `initializing` for ever
    (§2.4); Canvas stores the upload in that state, so a big file's batch gets longer."""
    t0 = time.time()
    path = tmp_path / "users.csv"
    path.write_bytes(USERS.encode())
    with pytest.raises(Refused):
        client.create_import(path, upload_name=UPLOAD, params={"import_type": "instructure_csv", "diffing_drop_status": "bogus"})
    [stuck] = [i for i in client.list_imports(created_since=importer.iso(t0 - 60)) if i["workflow_state"] == "initializing"]
    created = datetime.fromisoformat(stuck["created_at"].replace("Z", "+00:00")).timestamp()
    small, big = 1_000, 100_000_000
    assert importer.initializing_limit(big) > importer.initializing_limit(small) + 60
    just_past_small = created + importer.initializing_limit(small) + 1
    assert find(client, "sisdrop-ffffffffffffffff-users.csv", t0, size=small, now=created + 60)[0] == "waiting"
    assert find(client, "sisdrop-ffffffffffffffff-users.csv", t0, size=small, now=just_past_small) == ("absent", None)
    assert find(client, "sisdrop-ffffffffffffffff-users.csv", t0, size=big, now=just_past_small)[0] == "waiting"


def test_absent_when_canvas_has_no_import_of_the_post(client: CanvasClient, tmp_path: Path) -> None:
    t0 = time.time()
    assert find(client, UPLOAD, t0) == ("absent", None)
    imp = post(client, tmp_path, "users.csv", USERS.encode(), "sisdrop-ffffffffffffffff-users.csv")
    wait_for(lambda: started(client, imp["id"]), 10, what="the other import to start")
    assert find(client, UPLOAD, t0) == ("absent", None)  # another post, with its files listed: not ours


def test_a_lost_journal_finds_a_post_by_the_ending_of_its_upload_name_and_size(client: CanvasClient, tmp_path: Path) -> None:
    t0 = time.time()
    imp = post(client, tmp_path, "users.csv", USERS.encode(), importer.upload_name("users.csv"))
    wait_for(lambda: started(client, imp["id"]), 10, what="the import to start")
    verdict, found = find(client, importer.upload_pattern("users.csv"), t0, size=len(USERS))
    assert verdict == "found" and found is not None and found["id"] == imp["id"]
    assert find(client, importer.upload_pattern("courses.csv"), t0, size=len(USERS)) == ("absent", None)
    assert find(client, importer.upload_pattern("users.csv"), t0, size=len(USERS) - 1) == ("absent", None)
