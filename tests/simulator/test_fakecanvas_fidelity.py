"""The simulator is at least as hard as Canvas: the behaviours that a kinder simulator hid.

Each test fails if its behaviour goes missing (reference sections in brackets):
attachments only a while after ``importing`` begins [§0.7, §9]; ``failed`` before any
attachment [§0.7, §5]; another user's import holding the account's queue [§6, §9]; one
Canvas user per token [§1, §9]; the change_threshold abort in Canvas's words, rows applied
[§5, §10]; unknown terms refused as Canvas refuses them [§2.1, §2.4, §7]; account-wide
refusals on every SIS endpoint [§7].
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests

from sisdropd.simulator import FakeCanvas

from .simclient import (  # noqa: F401 - client_fixture, sim_fixture: the fixtures
    ISO_Z,
    TERMINAL,
    USERS,
    Client,
    client_fixture,
    enrollments_csv,
    sim_fixture,
    wait_for,
)

NOT_FOUND = {"errors": [{"message": "The specified resource does not exist."}]}
UNAUTHORIZED = {
    "status": "unauthorized",
    "errors": [{"message": "user not authorized to perform that action"}],
}


def stays(pred: Any, seconds: float, what: str) -> None:
    """Check ``pred()`` holds at every poll for ``seconds`` (a bounded negative)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert pred(), what
        time.sleep(0.02)


# -- csv_attachments only after unpacking [§0.7, §9] --------------------------------------------


def _timed_history(client: Client, iid: int, timeout: float = 10) -> list[tuple[float, dict[str, Any]]]:
    seen: list[tuple[float, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    while not seen or seen[-1][1]["workflow_state"] not in TERMINAL:
        assert time.monotonic() < deadline, f"import {iid} never finished"
        seen.append((time.monotonic(), client.show(iid)))
        time.sleep(0.01)
    return seen


def test_csv_attachments_appear_only_a_while_after_importing_begins(tmp_path: Path) -> None:
    with FakeCanvas(import_seconds=1.2, attachments_delay=1.0, storage_dir=tmp_path / "s") as sim:
        client = Client(sim)
        iid = client.post_file("sisdrop-1-users.csv", USERS).json()["id"]
        seen = _timed_history(client, iid)
        bare = [(t, d) for t, d in seen if d["workflow_state"] == "importing" and "csv_attachments" not in d]
        assert bare, "never seen importing without csv_attachments"
        for _, d in bare:  # Canvas saved importing, then fetches and unpacks: data not grown yet
            assert d["data"] == {"import_type": "instructure_csv"}
            assert ISO_Z.match(d["started_at"]) and d["progress"] == 0
        first = next(i for i, (_, d) in enumerate(seen) if "csv_attachments" in d)
        assert all("csv_attachments" in d for _, d in seen[first:])  # never taken back
        assert seen[first][0] - bare[0][0] >= 0.9  # the window lasts the delay
        d = seen[first][1]
        assert d["workflow_state"] == "importing"
        assert [a["display_name"] for a in d["csv_attachments"]] == ["sisdrop-1-users.csv"]
        assert d["data"]["supplied_batches"] == ["user"]
        assert seen[-1][1]["workflow_state"] == "imported"
        client.close()


def test_the_attachment_delay_is_on_by_default(tmp_path: Path) -> None:
    with FakeCanvas(storage_dir=tmp_path / "s") as sim:  # every timing at its default
        client = Client(sim)
        iid = client.post_file("u.csv", USERS).json()["id"]
        seen = _timed_history(client, iid)
        client.close()
    bare = [t for t, d in seen if d["workflow_state"] == "importing" and "csv_attachments" not in d]
    listed = [t for t, d in seen if "csv_attachments" in d]
    assert bare and listed and listed[0] - bare[0] >= 0.25  # a fraction of a second, not 0


def test_an_import_shorter_than_the_delay_lists_its_files_as_it_ends(tmp_path: Path) -> None:
    """The unpacking is part of the import's run: with no run time at all (the benchmark's
    Canvas) each import still goes through importing and ends listing its files, without
    the delay adding up import after import."""
    with FakeCanvas(import_seconds=0, attachments_delay=5, storage_dir=tmp_path / "s") as sim:
        client = Client(sim)
        t0 = time.monotonic()
        ids = [client.post_file(f"u{n}.csv", USERS).json()["id"] for n in range(5)]
        finals = [client.final(iid) for iid in ids]
        took = time.monotonic() - t0
        client.close()
    assert [d["workflow_state"] for d in finals] == ["imported"] * 5
    assert [[a["display_name"] for a in d["csv_attachments"]] for d in finals] == [[f"u{n}.csv"] for n in range(5)]
    assert took < 5  # one 5 s delay alone would exceed it


def test_one_upload_can_unpack_for_a_long_time(sim: FakeCanvas, client: Client) -> None:
    sim.set_outcome("big", None, seconds=120, attachments_delay=60)
    big = client.post_file("big.zip", b"PK\x05\x06" + b"\0" * 18).json()["id"]
    small = client.post_file("small.csv", USERS).json()["id"]
    client.until(big, lambda d: d["workflow_state"] == "importing")
    stays(lambda: "csv_attachments" not in client.show(big), 1.0, "big listed its files")
    assert client.show(small)["workflow_state"] == "created"  # one import at a time
    r = client.s.put(client.url(f"/sis_imports/{big}/abort"))
    assert r.json()["workflow_state"] == "aborted" and "csv_attachments" not in r.json()
    assert client.final(small)["workflow_state"] == "imported"


def test_the_attachment_delay_can_change_while_running(sim: FakeCanvas, client: Client) -> None:
    r = requests.post(f"{sim.url}/_sim/timing", json={"attachments_delay": 60, "import_seconds": 120})
    assert r.status_code == 200
    iid = client.post_file("u.csv", USERS).json()["id"]
    client.until(iid, lambda d: d["workflow_state"] == "importing")
    stays(lambda: "csv_attachments" not in client.show(iid), 0.8, "listed its files early")
    sim.set_timing(attachments_delay=0, import_seconds=0.2)  # the import under way sees the new timings
    assert "csv_attachments" in client.final(iid)
    assert requests.post(f"{sim.url}/_sim/timing", json={"bogus": 1}).status_code == 400
    with pytest.raises(ValueError):
        sim.set_timing(attachments_delay=-1)


# -- failed before any attachment [§0.7, §5] ------------------------------------------------------


def test_an_import_can_fail_before_listing_any_file(sim: FakeCanvas, client: Client) -> None:
    message = "Zip::Error: Zip end of central directory signature not found"
    sim.set_outcome("^boom", "failed_early", error_message=message)
    iid = client.post_file("boom.csv", USERS).json()["id"]
    seen = client.history(iid)
    assert "importing" in {d["workflow_state"] for d in seen}
    assert not any("csv_attachments" in d for d in seen)
    d = seen[-1]
    assert d["workflow_state"] == "failed"
    assert d["data"]["error_message"] == message
    assert "counts" not in d["data"] and "supplied_batches" not in d["data"]
    assert "processing_errors" not in d and "processing_warnings" not in d
    assert sim.wait_all_final(5)  # nothing is due: no errors file will come
    assert "errors_attachment" not in client.show(iid)
    assert sim.imports()[0]["workflow_state"] == "failed"
    requests.post(f"{sim.url}/_sim/outcome", json={"pattern": "^http", "state": "failed_early"})
    other = client.final(client.post_file("http.csv", USERS).json()["id"])
    assert other["workflow_state"] == "failed" and "csv_attachments" not in other
    assert other["data"]["error_message"]
    after = client.final(client.post_file("fine.csv", USERS).json()["id"])
    assert after["workflow_state"] == "imported"


# -- another client's import holds the queue [§6, §9] -------------------------------------------


def test_another_users_import_holds_the_queue_until_released(sim: FakeCanvas, client: Client) -> None:
    fid = sim.hold_queue()  # runs until released
    ours = client.post_file("ours.csv", USERS).json()["id"]
    theirs = client.until(fid, lambda d: "csv_attachments" in d)
    assert theirs["workflow_state"] == "importing" and theirs["user"]["id"] == 99
    assert [a["display_name"] for a in theirs["csv_attachments"]] == ["other_integration.csv"]
    stays(lambda: client.show(ours)["workflow_state"] == "created", 1.0, "ours ran while held")
    listed = client.s.get(client.url("/sis_imports")).json()["sis_imports"]
    assert [(d["id"], d["user"]["id"]) for d in listed] == [(ours, sim.user_id), (fid, 99)]
    assert sim.release() == [fid]
    assert client.final(fid)["workflow_state"] == "imported"
    assert client.final(ours)["workflow_state"] == "imported"
    assert {r["id"]: r["user_id"] for r in sim.imports()} == {fid: 99, ours: sim.user_id}


def test_a_timed_foreign_import_runs_first_then_ours(sim: FakeCanvas, client: Client) -> None:
    r = requests.post(f"{sim.url}/_sim/foreign", json={"seconds": 0.6, "user_id": 55})
    fid = r.json()["id"]
    ours = client.post_file("ours.csv", USERS).json()["id"]
    deadline = time.monotonic() + 10
    while True:
        assert time.monotonic() < deadline
        states = {d["id"]: d for d in client.s.get(client.url("/sis_imports")).json()["sis_imports"]}
        if states[ours]["workflow_state"] != "created":
            assert states[fid]["workflow_state"] in TERMINAL  # FIFO, one at a time
            break
        time.sleep(0.01)
    assert states[fid]["user"]["id"] == 55
    assert client.final(ours)["workflow_state"] == "imported"


# -- one Canvas user per token [§1, §9] ----------------------------------------------------------


def test_each_token_is_a_canvas_user(sim: FakeCanvas, client: Client) -> None:
    def me(token: str) -> requests.Response:
        return requests.get(f"{sim.url}/api/v1/users/self", headers={"Authorization": f"Bearer {token}"})

    sim.add_token("tok-42", 42, name="New Integration")
    assert me(sim.token).json()["id"] == sim.user_id
    assert me("tok-42").json()["id"] == 42 and me("tok-42").json()["name"] == "New Integration"
    old = client.final(client.post_file("old.csv", USERS).json()["id"])
    rotated = Client(sim, "tok-42")
    new = rotated.post_file("new.csv", USERS).json()
    assert new["user"]["id"] == 42 and old["user"]["id"] == sim.user_id
    listed = rotated.s.get(rotated.url("/sis_imports")).json()["sis_imports"]
    assert [(d["id"], d["user"]["id"]) for d in listed] == [(new["id"], 42), (old["id"], sim.user_id)]
    assert {r["id"]: r["user_id"] for r in sim.imports()} == {old["id"]: sim.user_id, new["id"]: 42}
    assert sim.remove_token("tok-42")
    assert me("tok-42").status_code == 401
    assert me("tok-42").json() == {"errors": [{"message": "Invalid access token."}]}
    r = requests.post(f"{sim.url}/_sim/tokens", json={"token": "t5", "user_id": 5})
    assert r.status_code == 200 and me("t5").json()["id"] == 5
    assert requests.post(f"{sim.url}/_sim/tokens/remove", json={"token": "t5"}).json() == {"removed": True}
    sim.set_token("only", user_id=43)
    assert me("only").json()["id"] == 43 and me("sim-token").status_code == 401
    rotated.close()



# -- batch mode: clean-up of supplied types, Canvas's threshold abort [§5, §10] -------------------


def _students(ids: range | list[int]) -> bytes:
    return b"course_id,user_id,role,status\n" + b"".join(b"C1,u%d,student,active\n" % i for i in ids)


def test_batch_mode_change_threshold_aborts_in_canvas_words(tmp_path: Path) -> None:
    with FakeCanvas(
        import_seconds=0.2,
        known_terms={"T1"},
        storage_dir=tmp_path / "s",
        errors_attachment_delay=0.05,
    ) as sim:
        client = Client(sim)
        batch = {"batch_mode": "true", "batch_mode_term_id": "sis_term_id:T1"}
        first = client.post_file("e1.csv", enrollments_csv(10), **batch).json()
        assert first["batch_mode"] is True and first["batch_mode_term_id"] == "sis_term_id:T1"
        seen = client.history(first["id"])
        d = seen[-1]
        assert d["workflow_state"] == "imported"
        assert "cleanup_batch" in {x["workflow_state"] for x in seen}
        assert d["data"]["counts"]["batch_enrollments_deleted"] == 0

        second = client.post_file("e2.csv", enrollments_csv(7), change_threshold="50", **batch).json()
        d = client.final(second["id"])
        assert d["workflow_state"] == "imported"
        assert d["data"]["counts"]["batch_enrollments_deleted"] == 3
        assert d["data"]["statistics"]["Enrollment"]["deleted"] == 3

        # A batch-mode users.csv supplies no enrollments: it deletes none (§10).
        users = client.post_file("u.csv", USERS, change_threshold="1", **batch).json()
        d = client.final(users["id"])
        assert d["workflow_state"] == "imported"
        assert d["data"]["counts"]["batch_enrollments_deleted"] == 0

        # 2 students of which 2 are new: 7 would go, more than 20%: the clean-up stops.
        third = client.post_file("e3.csv", _students([100, 101]), change_threshold="20", **batch)
        seen = client.history(third.json()["id"])
        d = seen[-1]
        assert d["workflow_state"] == "aborted"
        assert "cleanup_batch" in {x["workflow_state"] for x in seen}
        assert d["processing_errors"] == [
            [None, "7 enrollments would be deleted and exceeds the set threshold of 20%"]
        ]
        assert d["data"]["counts"]["enrollments"] == 2  # the rows were applied
        assert d["data"]["counts"]["batch_enrollments_deleted"] == 0  # nothing was deleted

        # The applied rows stayed: the term now holds 9, so the old 7 again drop the 2 new.
        fourth = client.post_file("e4.csv", enrollments_csv(7), **batch).json()
        d = client.final(fourth["id"])
        assert d["workflow_state"] == "imported"
        assert d["data"]["counts"]["batch_enrollments_deleted"] == 2
        client.close()


# -- unknown batch_mode_term_id, refused as Canvas refuses it [§2.1, §2.4, §7] --------------------


def test_batch_mode_term_is_looked_up_like_canvas(sim: FakeCanvas, client: Client) -> None:
    sim.set_terms({"2026FA", "5"})

    def post(**params: str) -> requests.Response:
        return client.post_file("e.csv", enrollments_csv(1), **params)

    for term in ("sis_term_id:2026FA", "5"):
        assert post(batch_mode="true", batch_mode_term_id=term).status_code == 200, term
    for term in ("sis_term_id:2099XX", "2026FA", "6"):  # given but not an active term: 404
        r = post(batch_mode="true", batch_mode_term_id=term)
        assert (r.status_code, r.json()) == (404, NOT_FOUND), term
    r = post(batch_mode="true")  # omitted with batch mode: 400
    assert r.status_code == 400
    assert r.json() == {"message": "Batch mode specified, but the given batch_mode_term_id cannot be found."}
    # Without batch_mode Canvas does not look the term up.
    assert post(batch_mode_term_id="sis_term_id:2099XX").status_code == 200
    assert len(sim.imports()) == 3  # the refused posts made no batch
    r = requests.post(f"{sim.url}/_sim/terms", json={"terms": ["2099XX"]})
    assert r.status_code == 200 and sim.known_terms == {"2099XX"}
    assert post(batch_mode="true", batch_mode_term_id="sis_term_id:2099XX").status_code == 200
    assert post(batch_mode="true", batch_mode_term_id="sis_term_id:2026FA").status_code == 404
    sim.set_terms(None)
    assert post(batch_mode="true", batch_mode_term_id="sis_term_id:anything").status_code == 200


# -- account-wide refusals on every SIS endpoint [§7] --------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "body"),
    [
        ("sis_disabled", 403, {"errors": ["SIS imports are not enabled for this account"]}),
        ("unauthorized", 401, UNAUTHORIZED),
        ("sub_account", 400, {"errors": ["SIS imports can only be executed on root accounts"]}),
        ("unknown_account", 404, NOT_FOUND),
    ],
)
def test_account_wide_refusal_on_every_sis_endpoint(
    sim: FakeCanvas, client: Client, kind: str, status: int, body: Any
) -> None:
    iid = client.final(client.post_file("before.csv", USERS).json()["id"])["id"]

    def calls() -> list[requests.Response]:
        return [
            client.post_file("during.csv", USERS),
            client.s.get(client.url("/sis_imports"), params={"per_page": 1}),
            client.s.get(client.url(f"/sis_imports/{iid}")),
        ]

    sim.refuse(kind)
    assert sim.refusals() == [kind]
    for r in calls():
        assert (r.status_code, r.json()) == (status, body), r.request.method
    assert len(sim.imports()) == 1  # the refused create made no batch
    me = client.s.get(f"{sim.url}/api/v1/users/self")
    assert me.status_code == 200  # the token itself is fine
    r = requests.post(f"{sim.url}/_sim/refusal", json={"kind": kind, "on": False})
    assert r.status_code == 200 and sim.refusals() == []
    assert [r.status_code for r in calls()] == [200, 200, 200]


def test_expired_token_is_refused_everywhere_until_switched_off(
    sim: FakeCanvas, client: Client
) -> None:
    assert requests.post(f"{sim.url}/_sim/refusal", json={"kind": "expired_token"}).status_code == 200
    for r in (
        client.post_file("x.csv", USERS),
        client.s.get(client.url("/sis_imports"), params={"per_page": 1}),
        client.s.get(f"{sim.url}/api/v1/users/self"),
    ):
        assert r.status_code == 401
        assert r.json()["errors"] == [{"message": "Expired access token."}]
        assert ISO_Z.match(r.json()["expired_at"])
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="canvas-lms"'
    assert sim.imports() == []
    sim.refuse("expired_token", on=False)
    assert client.post_file("x.csv", USERS).status_code == 200
    with pytest.raises(ValueError):
        sim.refuse("teapot")
    assert requests.post(f"{sim.url}/_sim/refusal", json={"kind": "teapot"}).status_code == 400


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


