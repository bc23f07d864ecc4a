"""The Canvas SIS Import simulator, exercised over real HTTP on 127.0.0.1.

Each test starts its own FakeCanvas with short run times, talks to it with ``requests`` and
waits on conditions with a deadline (never a bare sleep). The multipart parser is also checked
directly against randomly split bodies.
"""

from __future__ import annotations

import csv
import hashlib
import io
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from sisdropd.preflight.sisformat import COUNT_KEYS, UNRECOGNISED_HEADER
from sisdropd.simulator import FAULTS, FakeCanvas

from .simclient import (  # noqa: F401 - client_fixture, sim_fixture: the fixtures
    ENROLLMENTS,
    ISO_Z,
    TERMINAL,
    TOP_KEYS,
    USERS,
    Client,
    client_fixture,
    enrollments_csv,
    make_zip,
    sim_fixture,
    wait_for,
)

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
    body = enrollments_csv(rows) + b"C1,bad,student,dropped\n"
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


def test_drop_read_creates_nothing_and_answers_nothing(
    sim: FakeCanvas, client: Client
) -> None:
    body = USERS * 2000  # more than the socket buffers hold
    sim.inject("drop_read", method="POST", path="sis_imports")
    with pytest.raises(requests.ConnectionError):
        client.post_file("a.csv", body)
    assert sim.imports() == [] and sim.faults_served() == {"drop_read": 1}
    assert client.post_file("a.csv", USERS).status_code == 200


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
    sim.inject("delay", method="GET", path=r"/users/self", delay=1.5)
    t0 = time.monotonic()
    assert client.s.get(client.url("/sis_imports")).status_code == 200
    assert time.monotonic() - t0 < 1.5  # another path: not delayed
    t0 = time.monotonic()
    assert client.s.get(f"{sim.url}/api/v1/users/self").status_code == 200
    assert time.monotonic() - t0 >= 1.5
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
