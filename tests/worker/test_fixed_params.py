"""A file's import parameters are fixed in the journal when it is posted (issue 14): a reload of
``[import]`` or ``[[rules]]`` afterwards changes neither a re-post nor the sidecar's
``import_params``; and a journal from before the column gets it (and the events' Canvas state,
for the metrics' totals) on opening."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sisdropd import config
from sisdropd.journal import Journal
from sisdropd.lifecycle import State
from sisdropd.simulator import FakeCanvas
from tests.support import USERS, Rig


def test_a_repost_after_a_reload_sends_what_was_fixed_at_the_first_post(tmp_path: Path, sim: FakeCanvas) -> None:
    rig = Rig(tmp_path, sim, canvas={"timeout": 0.5})
    try:
        fid = rig.drop("users.csv", USERS)
        sim.inject("drop_read", method="POST", path="sis_imports")  # the answer is lost: nothing created
        rig.worker.step(rig.record(fid))
        rec = rig.record(fid)
        assert rec.state == State.POSTING and rec.import_params == {"import_type": "instructure_csv"}
        # A reload (what Daemon.apply does to the worker) adds a parameter and a rule for this name.
        raw = {
            "canvas": {"base_url": sim.url, "account_id": "1", "timeout": 0.5, "retry_initial": 0.05, "retry_max": 0.2},
            "folders": {"root": str(tmp_path / "sisdrop")},
            "import": {"import_type": "instructure_csv", "override_sis_stickiness": True},
            "rules": [{"match": r"users\.csv", "import": {"add_sis_stickiness": True}}],
        }
        rig.worker.cfg = rig.worker.finisher.cfg = config.from_dict(raw)
        rig.drain()
        events = [to for _, to, _ in rig.events(fid)]
        assert events.count("posting") == 2  # posted again, once Canvas provably had nothing
        (posted,) = sim.imports()
        assert "override_sis_stickiness" not in posted["params"] and "add_sis_stickiness" not in posted["params"]
        _, side = rig.finished(fid)
        assert side["import_params"] == {"import_type": "instructure_csv"}
        # A new file takes the reloaded parameters.
        fid2 = rig.drop("users.csv", USERS)
        rig.drain()
        assert sim.imports()[-1]["params"].get("add_sis_stickiness") == "true"
        assert rig.finished(fid2)[1]["import_params"]["override_sis_stickiness"] is True
    finally:
        rig.close()


def test_an_old_journal_gets_the_new_columns_and_keeps_its_totals(tmp_path: Path) -> None:
    state = tmp_path / "state"
    j = Journal(state)
    fid = j.add(original_name="a.csv", stored_name="x-a.csv", size=1, mtime=0)
    steps = ((State.QUEUED, State.POSTING, "posting"), (State.POSTING, State.RUNNING, "posted"),
             (State.RUNNING, State.FINISHING, "imported"), (State.FINISHING, State.DONE, "moved"))
    for was, to, note in steps:
        j.transition(fid, to, note, expect=was, workflow_state="imported" if to == State.FINISHING else None, outcome="done")
    j.close()
    db = sqlite3.connect(state / "journal.sqlite3")  # as the previous version left it
    db.execute("ALTER TABLE files DROP COLUMN import_params")
    db.execute("DROP INDEX events_to_state")
    db.execute("ALTER TABLE events DROP COLUMN workflow_state")
    db.commit()
    db.close()
    j = Journal(state)
    try:
        assert j.get(fid).import_params is None
        assert j.outcome_totals() == ({"done": 1}, {"imported": 1})
    finally:
        j.close()
