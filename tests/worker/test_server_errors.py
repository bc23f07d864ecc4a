"""A post Canvas keeps answering with HTTP 500 while the account answers fails its file after
``SERVER_ERROR_TRIES`` posts, each one looked for in Canvas's list first; the queue goes on,
in order. A single 500 costs only time.

Canvas answers 500 to a create with an ``import_type`` it does not have (reference section
7; the simulator does too). Before this, such a file was posted again for ever and blocked
every file behind it (one import at a time, order kept): an operator's config typo.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from sisdropd.lifecycle import State
from sisdropd.trouble import SERVER_ERROR_TRIES
from tests.support import USERS, Rig, alerts, recorder, wait_for

TYPO = {"match": r"typo.*\.csv", "import": {"import_type": "instructure_csvv"}}


def posts_and_lookups(rig: Rig) -> list[str]:
    """The create requests ("POST <status>") and the looks in the list ("list") in order."""
    out = []
    for method, path, status in rig.sim.request_log():
        if method == "POST" and path.endswith("/sis_imports"):
            out.append(f"POST {status}")
        elif method == "GET" and path.endswith("/sis_imports"):
            out.append("list")
    return out


def test_a_post_canvas_keeps_answering_500_fails_the_file_and_the_queue_moves_on(
    make_rig: Callable[..., Rig], log
) -> None:
    # timeout 0.5: the lost-post lookup's grace (2 x timeout) is what spaces the tries.
    rig = make_rig(rules=[TYPO], canvas={"timeout": 0.5})
    bad = rig.drop("typo.csv", USERS, mtime=1000)
    good = rig.drop("users.csv", USERS.replace("u1", "u2"), mtime=2000)
    rig.drain(30)
    path, side = rig.finished(bad)
    rec = rig.record(bad)
    assert rec.state == State.FAILED and path.read_text() == USERS and side["import_id"] is None
    reason = side["reason"]
    assert reason.startswith(
        f"Canvas answered HTTP 500 to this file's post {SERVER_ERROR_TRIES} times while the account answers, "
        "and its list shows no import of it: the import type (instructure_csvv) or parameters may be unknown to this Canvas"
    ), reason
    assert "'instructure_csvv' is not stock Canvas's type (instructure_csv)" in reason
    assert reason.endswith("`sisdropd retry typo.csv` posts the file again")
    assert rig.record(good).state == State.DONE and len(rig.sim.imports()) == 1
    calls = posts_and_lookups(rig)
    posts = [c for c in calls if c.startswith("POST")]
    assert posts == ["POST 500"] * SERVER_ERROR_TRIES + ["POST 200"]  # in order: the newer file waited its turn
    # Never posted blind: every 500 was looked for in Canvas's list before the next post (or the verdict).
    after_500s = "".join("P" if c.startswith("POST") else "l" for c in calls[: calls.index("POST 200")])
    assert after_500s.count("Pl") == SERVER_ERROR_TRIES and "PP" not in after_500s and after_500s.endswith("l")
    text = log.getvalue()
    assert f"not posted: Canvas answered HTTP 500 to this file's post {SERVER_ERROR_TRIES} times" in text
    # From the first 500 on, the log says where it leads, and doubts the import type.
    assert f"(a 500 to this file's post, 1 of {SERVER_ERROR_TRIES}: with no import of it in the list, the last fails the file; " \
        "`sisdropd discard typo.csv` gives up on it now; import.import_type: 'instructure_csvv' is not stock Canvas's type" in text


def test_a_single_500_to_a_post_costs_only_time(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(canvas={"timeout": 0.5})
    rig.sim.inject("500", method="POST", count=1)
    fid = rig.drop("users.csv", USERS)
    rig.drain(30)
    rec = rig.record(fid)
    assert rec.state == State.DONE and len(rig.sim.imports()) == 1 and rec.refusals == 0
    assert [c for c in posts_and_lookups(rig) if c.startswith("POST")] == ["POST 500", "POST 200"]



def test_repeated_500s_to_the_stock_type_block_the_queue_in_order_and_say_so_once(
    make_rig: Callable[..., Rig], tmp_path, log
) -> None:
    """The stock import type answered 500 past SERVER_ERROR_TRIES while the list answers is
    Canvas's fault (its storage, a deploy), not the file's: failing it would let the newer
    file past, and a retry of the older one later would roll Canvas back. Every file waits,
    in order; "blocked" is said once (log and alert), "unblocked" once a post gets through."""
    argv, out = recorder(tmp_path)
    rig = make_rig(canvas={"timeout": 0.5}, notify={"command": argv, "events": ["blocked", "failed"]})
    rig.sim.inject("500", method="POST", count=SERVER_ERROR_TRIES + 2)
    older = rig.drop("users.csv", USERS, mtime=1000)
    newer = rig.drop("users2.csv", USERS.replace("u1", "u2"), mtime=2000)
    rig.drain(60)
    assert [rig.record(f).state for f in (older, newer)] == [State.DONE, State.DONE]
    by_import = sorted((older, newer), key=lambda f: rig.record(f).import_id or 0)
    assert by_import == [older, newer]  # the older snapshot first, as dropped
    posts = [c for c in posts_and_lookups(rig) if c.startswith("POST")]
    assert posts == ["POST 500"] * (SERVER_ERROR_TRIES + 2) + ["POST 200", "POST 200"]
    text = log.getvalue()
    assert text.count("blocked: Canvas answers HTTP 500 to every post of users.csv") == 1, text
    assert text.count("unblocked: Canvas takes posts again") == 1
    [alert] = wait_for(lambda: alerts(out, "blocked"), 10, what="one blocked alert")
    assert "a fault on Canvas's side" in alert["reason"] and alerts(out, "failed") == []


def test_the_worker_says_at_its_start_that_a_rule_s_import_type_is_not_stock_canvas_s(
    make_rig: Callable[..., Rig], log
) -> None:
    rig = make_rig(rules=[TYPO])
    thread = threading.Thread(target=rig.worker.run)
    thread.start()
    try:
        wait_for(lambda: "config: rules[0]: import.import_type: 'instructure_csvv' is not stock" in log.getvalue(), 10, what="the warning")
    finally:
        rig.stop.set()
        rig.worker.wake.set()
        thread.join(10)
    assert "config: import.import_type" not in log.getvalue()  # [import]'s own is the stock type
