"""The Canvas SIS Import simulator, exercised over real HTTP on 127.0.0.1.

Each test starts its own FakeCanvas with short run times, talks to it with ``requests`` and
waits on conditions with a deadline (never a bare sleep). The multipart parser is also checked
directly against randomly split bodies.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sisdropd.fakecanvas import FAULTS, FakeCanvas
from sisdropd.fakecanvas_upload import BodyReader, receive_multipart
from sisdropd.preflight.sisformat import COUNT_KEYS, UNRECOGNISED_HEADER

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


def _sim_threads() -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("fakecanvas") or "process_request_thread" in t.name
    ]


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[FakeCanvas]:
    fc = FakeCanvas(
        import_seconds=0.2, errors_attachment_delay=0.3, storage_dir=tmp_path / "store"
    ).start()
    try:
        yield fc
    finally:
        fc.stop()
    assert not _sim_threads(), "the simulator leaked threads"


class Client:
    """A tiny Canvas client for the tests."""

    def __init__(self, sim: FakeCanvas) -> None:
        self.sim = sim
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Bearer {sim.token}"

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


@pytest.fixture
def client(sim: FakeCanvas) -> Iterator[Client]:
    c = Client(sim)
    yield c
    c.s.close()


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


# -- create, show, final states ---------------------------------------------------------------


def test_multipart_csv_create_show_and_import(
    sim: FakeCanvas, client: Client, tmp_path: Path
) -> None:
    src = tmp_path / "sisdrop-1234 (1).csv"
    src.write_bytes(USERS)
    with open(src, "rb") as fh:
        r = client.s.post(client.url("/sis_imports"), files={"attachment": (src.name, fh)})
    assert r.status_code == 200
    created = r.json()
    assert created["workflow_state"] == "created"
    assert created["progress"] == 0
    assert created["data"] == {"import_type": "instructure_csv"}
    assert "csv_attachments" not in created
    for key in TOP_KEYS:
        assert key in created, key
    assert created["skip_deletes"] is False and created["update_sis_id_if_login_claimed"] is False
    assert created["batch_mode"] is None and created["change_threshold"] is None
    assert created["started_at"] is None and created["ended_at"] is None
    assert ISO_Z.match(created["created_at"])
    assert created["user"]["id"] == sim.user_id
    assert float(r.headers["X-Rate-Limit-Remaining"]) > 0
    assert float(r.headers["X-Request-Cost"]) >= 0

    done = client.final(created["id"])
    assert done["workflow_state"] == "imported"
    assert done["progress"] == 100
    assert ISO_Z.match(done["ended_at"]) and ISO_Z.match(done["started_at"])
    (att,) = done["csv_attachments"]
    assert att["display_name"] == src.name
    assert att["filename"] == urllib.parse.quote_plus(src.name) == "sisdrop-1234+%281%29.csv"
    assert att["size"] == len(USERS)
    data = done["data"]
    assert data["supplied_batches"] == ["user"]
    assert data["downloadable_attachment_ids"] == [att["id"]]
    assert set(COUNT_KEYS) | {"error_count", "warning_count"} <= set(data["counts"])
    assert data["counts"]["users"] == 2 and data["counts"]["warning_count"] == 0
    assert data["statistics"]["Pseudonym"]["created"] == 2
    assert data["statistics"]["CommunicationChannel"]["created"] == 1
    assert "processing_warnings" not in done and "errors_attachment" not in done
    assert client.s.get(att["url"]).content == USERS

    (rec,) = sim.imports()
    assert rec["filename"] == src.name
    assert rec["sha256"] == hashlib.sha256(USERS).hexdigest()
    assert rec["size"] == len(USERS) and rec["user_id"] == sim.user_id
    assert rec["workflow_state"] == "imported"


def test_zip_lists_inner_csvs_by_base_name_and_size(client: Client) -> None:
    body = make_zip({"enrollments.csv": ENROLLMENTS, "nightly/users.csv": USERS})
    r = client.post_file("batch.zip", body)
    done = client.final(r.json()["id"])
    assert done["workflow_state"] == "imported"
    listed = {a["display_name"]: a["size"] for a in done["csv_attachments"]}
    assert listed == {"users.csv": len(USERS), "enrollments.csv": len(ENROLLMENTS)}
    assert done["data"]["supplied_batches"] == ["user", "enrollment"]  # importer order
    assert done["data"]["running_immediately"] is True
    assert done["data"]["counts"]["enrollments"] == 2


def test_zip_litter_and_unknown_members(client: Client) -> None:
    body = make_zip(
        {
            "users.csv": USERS,
            "__MACOSX/._users.csv": b"\x00\x05\x16\x07junk",
            "empty.csv": b"",
            "readme.txt": b"hello",
        }
    )
    done = client.final(client.post_file("litter.zip", body).json()["id"])
    assert [a["display_name"] for a in done["csv_attachments"]] == ["users.csv"]
    assert done["workflow_state"] == "imported_with_messages"
    assert done["processing_warnings"] == [["readme.txt", "Skipping unknown file type"]]


def test_bad_status_row_gives_warning_and_errors_attachment(
    sim: FakeCanvas, client: Client
) -> None:
    content = ENROLLMENTS + b"C1,u3,student,dropped\n"
    iid = client.post_file("enrollments.csv", content).json()["id"]
    done = client.final(iid)
    assert done["workflow_state"] == "imported_with_messages"
    assert done["processing_warnings"] == [
        ["enrollments.csv", 'Improper status "dropped" for enrollment']
    ]
    assert done["data"]["counts"]["enrollments"] == 2
    assert done["data"]["counts"]["warning_count"] == 1
    assert "errors_attachment" not in done  # written by a later job, 0.3 s after the end
    with_file = client.until(iid, lambda d: "errors_attachment" in d)
    ea = with_file["errors_attachment"]
    assert ea["display_name"] == f"sis_errors_attachment_{iid}.csv"
    assert ea["content-type"] == "text/csv"
    got = requests.get(ea["url"])  # no Authorization: the verifier is enough
    assert got.status_code == 200
    rows = list(csv.reader(io.StringIO(got.text)))
    assert rows == [
        ["sis_import_id", "file", "message", "row"],
        [str(iid), "enrollments.csv", 'Improper status "dropped" for enrollment', "4"],
    ]
    assert ea["size"] == len(got.content)
    bad = ea["url"].replace("verifier=", "verifier=x")
    assert requests.get(bad).status_code == 401
    errs = client.s.get(client.url(f"/sis_imports/{iid}/errors")).json()["sis_import_errors"]
    assert [(e["file"], e["row"]) for e in errs] == [("enrollments.csv", 4)]
    assert client.s.get(client.url(f"/sis_imports/{iid}/errors?failure=true")).json() == {
        "sis_import_errors": []
    }


def test_warning_list_is_cut_at_24_plus_summary(client: Client) -> None:
    rows = b"".join(b"C1,u%d,student,bogus\n" % i for i in range(30))
    iid = client.post_file("e.csv", b"course_id,user_id,role,status\n" + rows).json()["id"]
    done = client.final(iid)
    warnings = done["processing_warnings"]
    assert len(warnings) == 25
    assert warnings[24][0] == "and 6 more warnings that were not included"
    assert done["data"]["counts"]["warning_count"] == 30
    ea = client.until(iid, lambda d: "errors_attachment" in d)["errors_attachment"]
    assert len(requests.get(ea["url"]).text.strip().splitlines()) == 31


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"foo,bar\n1,2\n", UNRECOGNISED_HEADER),
        (b"user_id,login_id,status\nu1,l\xe9,active\n", "Invalid UTF-8"),
        (b'user_id,login_id,status\nu1,"l1,active\nu2,l2,active\n', "Malformed CSV"),
    ],
)
def test_unusable_csv_fails_with_messages(client: Client, content: bytes, message: str) -> None:
    done = client.final(client.post_file("x.csv", content).json()["id"])
    assert done["workflow_state"] == "failed_with_messages"
    assert done["processing_errors"][0] == ["x.csv", message]
    assert done["data"]["counts"]["error_count"] >= 1


def test_malformed_csv_imports_no_row_but_stays_listed(client: Client) -> None:
    content = b'user_id,login_id,status\nu0,l0,active\nu1,"l1,active\n'
    done = client.final(client.post_file("m.csv", content).json()["id"])
    assert done["workflow_state"] == "failed_with_messages"
    assert done["processing_errors"] == [["m.csv", "Malformed CSV"]]
    assert [a["display_name"] for a in done["csv_attachments"]] == ["m.csv"]
    assert done["data"]["counts"]["users"] == 0
    assert done["data"]["supplied_batches"] == []


@pytest.mark.parametrize(("rows", "named"), [(3, "sub/enr.csv"), (60, "enr.csv")])
def test_row_warnings_name_zip_members_like_canvas(client: Client, rows: int, named: str) -> None:
    body = _enrollments(rows) + b"C1,bad,student,dropped\n"
    done = client.final(client.post_file("z.zip", make_zip({"sub/enr.csv": body})).json()["id"])
    assert done["data"]["running_immediately"] is (rows < 49)
    assert done["processing_warnings"] == [[named, 'Improper status "dropped" for enrollment']]
    assert done["data"]["counts"]["enrollments"] == rows


def test_users_csv_with_passwords_is_listed_as_filtered_copy(client: Client) -> None:
    content = b"user_id,login_id,password,status\nu1,l1,secret,active\n"
    done = client.final(client.post_file("people.csv", content).json()["id"])
    (att,) = done["csv_attachments"]
    assert att["display_name"] == "people_filtered.csv"
    listed = client.s.get(att["url"]).content
    assert listed == b"user_id,login_id,status\nu1,l1,active\n"
    assert att["size"] == len(listed)


def test_bom_and_header_case_are_tolerated(client: Client) -> None:
    content = b"\xef\xbb\xbf User_ID , LOGIN_ID ,Status\nu1,l1,ACTIVE\n"
    done = client.final(client.post_file("u.csv", content).json()["id"])
    assert done["workflow_state"] == "imported"
    assert done["data"]["counts"]["users"] == 1


def test_other_extension_imports_nothing(client: Client) -> None:
    done = client.final(client.post_file("users.txt", USERS).json()["id"])
    assert done["workflow_state"] == "imported"
    assert "csv_attachments" not in done
    assert done["data"]["supplied_batches"] == []


# -- raw bodies -------------------------------------------------------------------------------


def test_raw_body_naming_and_charset(sim: FakeCanvas, client: Client) -> None:
    url = client.url("/sis_imports")
    r = client.s.post(url, data=USERS, headers={"Content-Type": "text/csv"})
    assert r.status_code == 200
    done = client.final(r.json()["id"])
    assert [a["display_name"] for a in done["csv_attachments"]] == ["sis_import.csv"]

    r = client.s.post(
        url,
        data=make_zip({"users.csv": USERS}),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200
    client.final(r.json()["id"])
    r = client.s.post(
        url + "?extension=csv",
        data=USERS,
        headers={"Content-Type": "application/zip; charset=latin1"},
    )
    assert r.status_code == 200  # with extension there is no charset check

    r = client.s.post(url, data=USERS, headers={"Content-Type": "text/csv; charset=ISO-8859-1"})
    assert r.status_code == 400
    assert r.json() == {"error": "Invalid content type, UTF-8 required"}
    names = [rec["filename"] for rec in sim.imports()]
    assert names == ["sis_import.csv", "sis_import.zip", "sis_import.csv"]


def test_missing_attachment_and_bad_import_type(sim: FakeCanvas, client: Client) -> None:
    r = client.s.post(client.url("/sis_imports"), files={"other": ("a.csv", USERS)})
    assert r.status_code == 400
    assert r.json() == {"error": True, "error_message": "Missing attachment"}
    r = client.post_file("a.csv", USERS, import_type="ims_xml")
    assert r.status_code == 500
    assert r.json()["errors"][0]["error_code"] == "internal_server_error"
    assert sim.imports() == []


# -- auth, accounts, routes --------------------------------------------------------------------


def test_401_bodies_for_missing_wrong_and_rotated_token(sim: FakeCanvas, client: Client) -> None:
    url = client.url("/sis_imports")
    r = requests.get(url)
    assert r.status_code == 401
    assert r.json() == {
        "status": "unauthenticated",
        "errors": [{"message": "user authorization required"}],
    }
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="canvas-lms"'
    r = requests.get(url, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert r.json() == {"errors": [{"message": "Invalid access token."}]}
    assert "X-Rate-Limit-Remaining" not in r.headers
    assert client.s.get(url).status_code == 200
    sim.set_token("new-token")
    r = client.s.get(url)
    assert r.status_code == 401 and r.json() == {"errors": [{"message": "Invalid access token."}]}
    r = requests.get(url, headers={"Authorization": "Bearer new-token"})
    assert r.status_code == 200


def test_accounts_users_self_and_unknown_paths(sim: FakeCanvas, client: Client) -> None:
    me = client.s.get(f"{sim.url}/api/v1/users/self.json")
    assert me.status_code == 200
    assert me.json()["id"] == sim.user_id and me.json()["name"] == "SIS Integration"
    for acct in ("1", "self", "sis_account_id:main"):
        r = client.s.get(f"{sim.url}/api/v1/accounts/{acct}/sis_imports.json")
        assert r.status_code == 200 and r.json() == {"sis_imports": []}, acct
    r = client.s.get(f"{sim.url}/api/v1/accounts/2/sis_imports")
    assert r.status_code == 400
    assert r.json() == {"errors": ["SIS imports can only be executed on root accounts"]}
    r = client.s.get(f"{sim.url}/api/v1/accounts/99/sis_imports")
    assert r.status_code == 404
    assert r.json() == {"errors": [{"message": "The specified resource does not exist."}]}
    assert client.s.get(client.url("/sis_imports/12345")).status_code == 404
    assert client.s.get(f"{sim.url}/api/v1/nothing/here").status_code == 404


# -- queueing, listing, aborting ----------------------------------------------------------------


def test_imports_run_one_at_a_time_oldest_first(tmp_path: Path) -> None:
    with FakeCanvas(import_seconds=0.5, storage_dir=tmp_path / "s") as sim:
        client = Client(sim)
        ids = [client.post_file(f"{n}.csv", USERS).json()["id"] for n in "abc"]
        client.until(ids[0], lambda d: d["workflow_state"] == "importing")
        seen: list[tuple[str, ...]] = []
        progress: dict[int, list[int]] = {i: [] for i in ids}
        deadline = time.monotonic() + 8
        while True:  # each list answer is one consistent snapshot of all three
            assert time.monotonic() < deadline, "imports never finished"
            listed = client.s.get(client.url("/sis_imports")).json()["sis_imports"][::-1]
            assert [d["id"] for d in listed] == ids
            states = tuple(d["workflow_state"] for d in listed)
            if "importing" in states:  # one at a time, the older ones done, the newer waiting
                k = states.index("importing")
                assert all(s in TERMINAL for s in states[:k]), states
                assert all(s == "created" for s in states[k + 1 :]), states
            if not seen or seen[-1] != states:
                seen.append(states)
            for d in listed:
                if d["workflow_state"] == "importing":
                    progress[d["id"]].append(d["progress"])
                else:
                    assert d["workflow_state"] in TERMINAL or "csv_attachments" not in d
            if all(s in TERMINAL for s in states):
                break
            importing = client.s.get(client.url("/sis_imports/importing")).json()["sis_imports"]
            assert len(importing) <= 1
            time.sleep(0.02)
        order = [s.index("importing") for s in seen if "importing" in s]
        assert order == sorted(order) and set(order) == {0, 1, 2}, seen
        for i in ids:
            assert progress[i] == sorted(progress[i]) and max(progress[i]) > min(progress[i])
            done = client.show(i)
            assert done["workflow_state"] == "imported" and done["progress"] == 100
        client.s.close()


def test_list_newest_first_paginated_and_filtered(sim: FakeCanvas, client: Client) -> None:
    sim.set_outcome(".", "stuck")
    ids = [client.post_file(f"f{i}.csv", USERS).json()["id"] for i in range(6)]
    cut = datetime.now(UTC).isoformat()
    wait_for(lambda: datetime.now(UTC).isoformat() > cut, what="clock to move")
    ids += [client.post_file(f"g{i}.csv", USERS).json()["id"] for i in range(6)]

    got: list[int] = []
    url: str | None = client.url("/sis_imports?per_page=5")
    pages = 0
    while url:
        r = client.s.get(url)
        assert r.status_code == 200
        assert 'rel="last"' not in r.headers["Link"]
        assert 'rel="first"' in r.headers["Link"] and 'rel="current"' in r.headers["Link"]
        got += [d["id"] for d in r.json()["sis_imports"]]
        url = r.links.get("next", {}).get("url")
        pages += 1
    assert pages == 3
    assert got == sorted(ids, reverse=True)
    assert len(client.s.get(client.url("/sis_imports")).json()["sis_imports"]) == 10

    since = client.s.get(client.url("/sis_imports"), params={"created_since": cut, "per_page": 100})
    assert [d["id"] for d in since.json()["sis_imports"]] == sorted(ids[6:], reverse=True)
    before = client.s.get(
        client.url("/sis_imports"), params={"created_before": cut, "per_page": 100}
    )
    assert [d["id"] for d in before.json()["sis_imports"]] == sorted(ids[:6], reverse=True)
    junk = client.s.get(
        client.url("/sis_imports"), params={"created_since": "yesterday", "per_page": 100}
    )
    assert len(junk.json()["sis_imports"]) == 12
    none = client.s.get(client.url("/sis_imports"), params={"workflow_state[]": "imported"})
    assert none.json() == {"sis_imports": []}
    created = client.s.get(
        client.url("/sis_imports"),
        params={"workflow_state[]": ["created", "bogus"], "per_page": 100},
    )
    assert len(created.json()["sis_imports"]) == 12


def test_abort_and_abort_all_pending(sim: FakeCanvas, client: Client) -> None:
    sim.set_outcome("stuck", "stuck")
    done = client.final(client.post_file("ok.csv", USERS).json()["id"])
    assert client.s.put(client.url(f"/sis_imports/{done['id']}/abort")).status_code == 404
    iid = client.post_file("stuck-1.csv", USERS).json()["id"]
    r = client.s.put(client.url(f"/sis_imports/{iid}/abort"))
    assert r.status_code == 200 and r.json()["workflow_state"] == "aborted"
    assert client.show(iid)["workflow_state"] == "aborted"
    assert client.s.put(client.url(f"/sis_imports/{iid}/abort")).status_code == 404
    pending = [client.post_file(f"stuck-{i}.csv", USERS).json()["id"] for i in (2, 3)]
    r = client.s.put(client.url("/sis_imports/abort_all_pending"))
    assert r.json() == {"aborted": True}
    assert {client.show(i)["workflow_state"] for i in pending} == {"aborted"}


def test_abort_while_importing_lets_the_next_one_run(tmp_path: Path) -> None:
    with FakeCanvas(import_seconds=5.0, storage_dir=tmp_path / "s") as sim:
        sim.set_outcome("quick", "imported", seconds=0.1)
        client = Client(sim)
        slow = client.post_file("slow.csv", USERS).json()["id"]
        quick = client.post_file("quick.csv", USERS).json()["id"]
        client.until(slow, lambda d: d["workflow_state"] == "importing")
        assert client.s.put(client.url(f"/sis_imports/{slow}/abort")).status_code == 200
        assert client.final(quick)["workflow_state"] == "imported"
        assert client.show(slow)["workflow_state"] == "aborted"
        client.s.close()


# -- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["500", "502", "503"])
def test_server_error_faults(sim: FakeCanvas, client: Client, fault: str) -> None:
    sim.inject(fault, method="GET", path=r"/sis_imports$")
    r = client.s.get(client.url("/sis_imports"))
    assert r.status_code == int(fault)
    assert r.json()["errors"]
    assert client.s.get(client.url("/sis_imports")).status_code == 200
    assert sim.faults_served() == {fault: 1}


def test_rate_limit_and_auth_faults(sim: FakeCanvas, client: Client) -> None:
    sim.inject("429", path="sis_imports")
    sim.inject("403_rate_limit", path="sis_imports")
    sim.inject("401", path="sis_imports")
    url = client.url("/sis_imports")
    r = client.s.get(url)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    r = client.s.get(url)
    assert r.status_code == 403
    assert r.text == "403 Forbidden (Rate Limit Exceeded)"
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.headers["X-Rate-Limit-Remaining"] == "0.0" and "X-Request-Cost" not in r.headers
    r = client.s.get(url)
    assert r.status_code == 401 and r.json() == {"errors": [{"message": "Invalid access token."}]}
    assert client.s.get(url).status_code == 200
    assert sim.faults_served() == {"429": 1, "403_rate_limit": 1, "401": 1}


def test_drop_gives_connection_error_and_creates_nothing(sim: FakeCanvas, client: Client) -> None:
    sim.inject("drop", method="POST", path="sis_imports")
    with pytest.raises(requests.ConnectionError):
        client.post_file("a.csv", USERS)
    assert sim.imports() == []
    assert client.post_file("a.csv", USERS).status_code == 200
    assert ("POST", "/api/v1/accounts/1/sis_imports", 0) in sim.request_log()


def test_drop_after_creates_the_import_but_loses_the_answer(
    sim: FakeCanvas, client: Client
) -> None:
    sim.inject("drop_after", method="POST", count=1)
    with pytest.raises(requests.ConnectionError):
        client.post_file("lost.csv", USERS)
    (rec,) = sim.imports()
    assert rec["filename"] == "lost.csv"
    listed = client.s.get(client.url("/sis_imports")).json()["sis_imports"]
    assert [d["id"] for d in listed] == [rec["id"]]
    assert sim.faults_served() == {"drop_after": 1}


def test_delay_fault_and_matching(sim: FakeCanvas, client: Client) -> None:
    sim.inject("delay", method="GET", path=r"/users/self", delay=0.4)
    t0 = time.monotonic()
    assert client.s.get(client.url("/sis_imports")).status_code == 200
    assert time.monotonic() - t0 < 0.4  # another path: not delayed
    t0 = time.monotonic()
    assert client.s.get(f"{sim.url}/api/v1/users/self").status_code == 200
    assert time.monotonic() - t0 >= 0.4
    with pytest.raises(ValueError):
        sim.inject("teapot")
    assert set(FAULTS) >= {"drop", "drop_after", "delay", "403_rate_limit"}


def test_control_endpoints_over_http(sim: FakeCanvas, client: Client) -> None:
    r = requests.post(f"{sim.url}/_sim/faults", json={"fault": "503", "method": "GET", "count": 2})
    assert r.status_code == 200
    assert client.s.get(client.url("/sis_imports")).status_code == 503
    assert client.s.get(client.url("/sis_imports")).status_code == 503
    assert client.s.get(client.url("/sis_imports")).status_code == 200
    requests.post(f"{sim.url}/_sim/outcome", json={"pattern": r"^x", "state": "failed"})
    done = client.final(client.post_file("x.csv", USERS).json()["id"])
    assert done["workflow_state"] == "failed"
    assert requests.get(f"{sim.url}/_sim/imports").json()[0]["filename"] == "x.csv"
    requests.post(f"{sim.url}/_sim/token", json={"token": "t2"})
    assert client.s.get(client.url("/sis_imports")).status_code == 401
    assert requests.post(f"{sim.url}/_sim/faults", json={"fault": "nope"}).status_code == 400


# -- batch mode and create-time validation -------------------------------------------------------


def _enrollments(n: int) -> bytes:
    return b"course_id,user_id,role,status\n" + b"".join(
        b"C1,u%d,student,active\n" % i for i in range(n)
    )


def test_batch_mode_change_threshold_aborts(tmp_path: Path) -> None:
    with FakeCanvas(
        import_seconds=0.2,
        known_terms={"T1"},
        storage_dir=tmp_path / "s",
        errors_attachment_delay=0.05,
    ) as sim:
        client = Client(sim)
        batch = {"batch_mode": "true", "batch_mode_term_id": "sis_term_id:T1"}
        first = client.post_file("e1.csv", _enrollments(10), **batch).json()
        assert first["batch_mode"] is True and first["batch_mode_term_id"] == "sis_term_id:T1"
        states = []
        deadline = time.monotonic() + 5
        while (d := client.show(first["id"]))["workflow_state"] not in TERMINAL:
            assert time.monotonic() < deadline, "batch import never finished"
            states.append(d["workflow_state"])
            time.sleep(0.01)
        assert d["workflow_state"] == "imported"
        assert "cleanup_batch" in states
        assert d["data"]["counts"]["batch_enrollments_deleted"] == 0

        second = client.post_file("e2.csv", _enrollments(7), change_threshold="50", **batch).json()
        d = client.final(second["id"])
        assert d["workflow_state"] == "imported"
        assert d["data"]["counts"]["batch_enrollments_deleted"] == 3
        assert d["data"]["statistics"]["Enrollment"]["deleted"] == 3

        third = client.post_file("e3.csv", _enrollments(2), change_threshold="20", **batch).json()
        d = client.final(third["id"])
        assert d["workflow_state"] == "aborted"
        assert d["processing_errors"] == [
            [
                None,
                "Batch mode for term sis_term_id:T1 would delete 5 of 7 enrollments, "
                "exceeding the change_threshold of 20%",
            ]
        ]
        r = client.post_file("e4.csv", _enrollments(1), batch_mode="true", batch_mode_term_id="T9")
        assert r.status_code == 404
        r = client.post_file("e4.csv", _enrollments(1), batch_mode="true")
        assert r.status_code == 400
        assert r.json() == {
            "message": "Batch mode specified, but the given batch_mode_term_id cannot be found."
        }
        client.s.close()


@pytest.mark.parametrize(
    ("params", "status", "body"),
    [
        ({"diffing_drop_status": "bogus"}, 400, {"message": "Invalid diffing_drop_status"}),
        (
            {"diffing_user_remove_status": "gone"},
            400,
            {"message": "Invalid diffing_user_remove_status"},
        ),
        ({"multi_term_batch_mode": "true"}, 400, None),
        ({"diffing_data_set_identifier": "x" * 129}, 422, None),
    ],
)
def test_late_validation_leaves_batch_initializing(
    sim: FakeCanvas, client: Client, params: dict[str, str], status: int, body: Any
) -> None:
    r = client.post_file("users.csv", USERS, **params)
    assert r.status_code == status
    if body is not None:
        assert r.json() == body
    (rec,) = sim.imports()
    assert rec["workflow_state"] == "initializing"
    listed = client.s.get(client.url("/sis_imports")).json()["sis_imports"]
    assert [d["workflow_state"] for d in listed] == ["initializing"]
    ok = client.post_file("users2.csv", USERS).json()["id"]
    assert client.final(ok)["workflow_state"] == "imported"
    assert sim.wait_all_final(5)
    assert client.show(rec["id"])["workflow_state"] == "initializing"


# -- big uploads -----------------------------------------------------------------------------------


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_50mb_chunked_multipart_upload_is_streamed(sim: FakeCanvas, client: Client) -> None:
    sim.set_outcome(".", "stuck")
    block = os.urandom(1 << 20)
    boundary = "----sisdropdtestboundary7e3f"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="attachment"; '
        f'filename="big.zip"\r\nContent-Type: application/zip\r\n\r\n'
    ).encode()
    tail = f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="skip_deletes"\r\n\r\ntrue\r\n--{boundary}--\r\n'.encode()
    expected = hashlib.sha256()

    def body() -> Iterator[bytes]:
        yield head
        for i in range(50):
            piece = block[i:] + block[:i]
            expected.update(piece)
            yield piece
        yield tail

    peak = baseline = _rss_kib()
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _rss_kib())
            stop.wait(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        r = client.s.post(
            client.url("/sis_imports"),
            data=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
    finally:
        stop.set()
        sampler.join()
    assert r.status_code == 200, r.text
    assert r.json()["skip_deletes"] is True
    (rec,) = sim.imports()
    assert rec["size"] == 50 << 20
    assert rec["sha256"] == expected.hexdigest()
    assert (peak - baseline) < 30 * 1024, f"RSS grew by {(peak - baseline) // 1024} MiB"


class _Pieces:
    """A request body handed over in the given pieces (what BodyReader.read returns)."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._data = data
        self._sizes = sizes or [7]
        self._pos = 0
        self._n = 0

    def read(self) -> bytes:
        size = self._sizes[self._n % len(self._sizes)]
        self._n += 1
        piece = self._data[self._pos : self._pos + size]
        self._pos += len(piece)
        return piece


MULTIPART_HEAD = (
    b'preamble\r\n--Bnd\r\nContent-Disposition: form-data; name="extension"\r\n\r\ncsv'
    b'\r\n--Bnd\r\nContent-Disposition: form-data; name="attachment"; filename="d/a%20b.csv"'
    b"\r\n\r\n"
)


@settings(max_examples=150, deadline=None)
@given(
    payload=st.binary(max_size=2000),
    noise=st.sampled_from([b"", b"\r", b"\r\n", b"\r\n-", b"\r\n--", b"\r\n--Bn", b"--Bnd"]),
    sizes=st.lists(st.integers(min_value=1, max_value=40), max_size=6),
)
def test_multipart_parser_survives_any_split(
    tmp_path_factory: pytest.TempPathFactory, payload: bytes, noise: bytes, sizes: list[int]
) -> None:
    content = noise + payload + noise
    assume(b"\r\n--Bnd" not in content)  # a client picks a boundary its data does not hold
    body = MULTIPART_HEAD + content + b"\r\n--Bnd--\r\nepilogue"
    dest = tmp_path_factory.mktemp("mp") / "out"
    result = receive_multipart(_Pieces(body, sizes), "Bnd", dest)  # type: ignore[arg-type]
    assert result.file_name == "a b.csv"
    assert result.params == {"extension": "csv"}
    assert dest.read_bytes() == content
    assert result.size == len(content)


class _Trickle(io.RawIOBase):
    """A socket-like raw reader that returns at most ``n`` bytes per read."""

    def __init__(self, data: bytes, n: int) -> None:
        self._buf = io.BytesIO(data)
        self._n = n

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._buf.read(min(len(b), self._n))
        b[: len(data)] = data
        return len(data)


@settings(max_examples=50, deadline=None)
@given(
    payload=st.binary(max_size=5000),
    chunk=st.integers(min_value=1, max_value=900),
    trickle=st.integers(min_value=1, max_value=100),
)
def test_chunked_body_is_decoded_exactly(payload: bytes, chunk: int, trickle: int) -> None:
    encoded = b"".join(
        b"%x;ext=1\r\n" % len(payload[i : i + chunk]) + payload[i : i + chunk] + b"\r\n"
        for i in range(0, len(payload), chunk)
    )
    rfile = io.BufferedReader(_Trickle(encoded + b"0\r\nX-Trailer: 1\r\n\r\nNEXT", trickle))
    reader = BodyReader(rfile, length=None, chunked=True)
    got = b"".join(iter(reader.read, b""))
    assert got == payload
    assert reader.done and rfile.read() == b"NEXT"  # the next request is left untouched


# -- the command -------------------------------------------------------------------------------


def test_main_serves_until_sigterm(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sisdropd.fakecanvas", "--port", "0", "--token", "cmd-token"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+) ", line)
        assert url, line
        assert "cmd-token" in line and "account_id=1" in line
        r = requests.get(
            f"{url.group(1)}/api/v1/users/self", headers={"Authorization": "Bearer cmd-token"}
        )
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
