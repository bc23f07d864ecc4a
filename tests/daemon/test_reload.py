"""``systemctl reload`` (issue 14): a real SIGHUP to a real daemon re-reads the config, applies
what can change live with one log line per changed key, names what needs a restart and keeps
it, and on an invalid file keeps the running config with one error line."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.support import USERS, Drop, wait_for


def reload_lines(log: str) -> list[str]:
    return [line.split("reload: ", 1)[1] for line in log.splitlines() if "reload: " in line]


def test_sighup_applies_live_keys_and_names_restart_ones(drop: Drop, daemon, tmp_path: Path) -> None:
    drop.write(log={"level": "INFO"})
    d = daemon()
    drop.write(
        watch={"settle_seconds": 0.2},
        log={"level": "DEBUG"},
        canvas={"timeout": 5},
        folders={"root": str(tmp_path / "elsewhere")},
        notify={"events": ["failed", "done"]},
        guard={"all_imports": True},
        **{"import": {"import_type": "instructure_csv", "override_sis_stickiness": True}},
    )
    drop.config.write_text(
        drop.config.read_text() + '[[rules]]\nmatch = \'special_(?P<n>\\w+)\\.csv\'\n[rules.import]\ndiffing_data_set_identifier = "sp-{n}"\n'
    )
    d.proc.send_signal(signal.SIGHUP)
    lines = wait_for(lambda: len(reload_lines(d.log())) >= 8 and reload_lines(d.log()), what="the reload's lines")
    assert "canvas.timeout: 2 -> 5 needs a restart (systemctl restart sisdropd); still 2 until then" in lines
    assert any(line.startswith("folders.root: ") and "needs a restart" in line for line in lines), lines
    assert "watch.settle_seconds: 0.5 -> 0.2" in lines
    assert "log.level: 'INFO' -> 'DEBUG'" in lines
    assert "notify.events: ['failed', 'held', 'stale', 'blocked'] -> ['failed', 'done']" in lines
    assert "import.override_sis_stickiness: unset -> true" in lines
    assert "guard.all_imports: false -> true" in lines
    assert "rules[0]: unset -> match 'special_(?P<n>\\w+)\\.csv' import {\"diffing_data_set_identifier\": \"sp-{n}\"}" in lines, lines
    assert len(lines) == 8, lines  # one line per changed key, nothing else
    # The live ones apply; the folders stay (files dropped where the daemon watches are taken).
    (drop.inbox / "special_fall.csv").write_text(USERS)
    (drop.inbox / "plain.csv").write_text(USERS)
    wait_for(lambda: len(drop.outcomes("done")) == 2, what="both imported")
    params = {i["filename"].rsplit("-", 1)[-1]: i["params"] for i in drop.sim.imports()}
    assert params["special_fall.csv"]["diffing_data_set_identifier"] == "sp-fall"
    assert params["plain.csv"]["override_sis_stickiness"] == "true"
    assert "diffing_data_set_identifier" not in params["plain.csv"]
    assert " DEBUG " in d.log().split("reload: rules[0]", 1)[1]  # the new level
    assert not (tmp_path / "elsewhere").exists()
    # [guard] applies live too: plain.csv again with one user of two (a 50 % fall) is held,
    # which it would not be without all_imports (a plain import is not guarded by default).
    (drop.inbox / "plain.csv").write_text(USERS.rsplit("u2,", 1)[0])
    wait_for(lambda: drop.outcomes("held"), what="the shrunken plain file held")


def test_an_invalid_file_keeps_the_running_config(drop: Drop, daemon) -> None:
    d = daemon()
    good = drop.config.read_text()
    drop.config.write_text(good.replace("settle_seconds = 0.5", 'settle_seconds = "soon"'))
    d.proc.send_signal(signal.SIGHUP)
    line = wait_for(lambda: reload_lines(d.log()), what="the reload's line")
    assert line == [
        f"{drop.config} is invalid; keeping the running config: watch.settle_seconds: expected a number, got 'soon'"
    ]
    assert " ERROR " in next(x for x in d.log().splitlines() if "reload: " in x)
    (drop.inbox / "users.csv").write_text(USERS)
    wait_for(lambda: drop.outcomes("done"), what="still importing")
    drop.config.write_text(good)
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(reload_lines(d.log())) == 2, what="the second reload")
    assert reload_lines(d.log())[1] == f"{drop.config}: no change"


def test_a_reload_never_changes_what_a_posted_file_was_posted_with(drop: Drop, daemon) -> None:
    drop.sim.set_outcome("users", "imported", seconds=2)
    d = daemon()
    (drop.inbox / "users.csv").write_text(USERS)
    wait_for(lambda: (s := drop.status()["in_flight"]) and s["import_id"], what="posted and running")
    drop.write(**{"import": {"import_type": "instructure_csv", "override_sis_stickiness": True}})
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: reload_lines(d.log()), what="reloaded")
    wait_for(lambda: drop.outcomes("done"), what="done")
    side = drop.sidecar(drop.outcomes("done")[0])
    assert side["import_params"] == {"import_type": "instructure_csv"}
    assert json.dumps(drop.sim.imports()[0]["params"]).count("override") == 0
