"""The change guard in the worker: which imports it guards, and what a held file's record says."""

from __future__ import annotations

from sisdropd.lifecycle import State


def users(n: int) -> str:
    return "user_id,login_id,status\n" + "".join(f"u{i},login{i},active\n" for i in range(n))


def test_plain_imports_are_not_guarded_unless_all_imports_is_set(make_rig) -> None:
    plain = make_rig()
    first = plain.drop("users_1.csv", users(10))
    second = plain.drop("users_2.csv", users(2))  # -80%, but a plain import replaces nothing
    plain.drain()
    assert [plain.record(f).state for f in (first, second)] == [State.DONE, State.DONE]
    # The same folders and journal, restarted with [guard] all_imports = true.
    guarded = make_rig(guard={"all_imports": True})
    third = guarded.drop("users_3.csv", users(1))
    guarded.drain()
    rec = guarded.record(third)
    assert rec.state == State.HELD
    assert rec.outcome_reason == "held by the change guard: users fell from 2 to 1 rows (-50.0%, limit 10%)"
    assert len(guarded.sim.imports()) == 2


def test_a_held_file_keeps_its_counts_and_the_comparison(make_rig) -> None:
    rig = make_rig(**{"import": {"import_type": "instructure_csv", "diffing_data_set_identifier": "nightly"}})
    rig.drop("sis_1.csv", users(5))
    rig.drain()
    fid = rig.drop("sis_2.csv", users(3))
    rig.drain()
    rec = rig.record(fid)
    assert rec.state == State.HELD and rec.counts == {"users": 3}
    assert rec.guard == {
        "dataset": "diffing:nightly",
        "why": "users fell from 5 to 3 rows (-40.0%, limit 10%)",
        "counts": [{"type": "users", "last_import": 5, "this_file": 3, "change_percent": -40.0}],
    }
