"""Unit tests where the logic is dense: config loading, naming, eligibility, routing, journal."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sisdropd import config, files, folders, importer, intake, lifecycle
from sisdropd.journal import Journal
from sisdropd.lifecycle import State, TransitionError
from tests.support import write_config

GOOD = {
    "canvas": {"base_url": "https://school.instructure.com", "account_id": "1"},
    "folders": {"root": "/srv/sisdrop"},
}


def load(tmp_path: Path, sections: dict) -> config.Config:
    return config.load(write_config(tmp_path / "c.toml", sections))


def problems(tmp_path: Path, sections: dict) -> list[str]:
    with pytest.raises(config.ConfigError) as e:
        load(tmp_path, sections)
    return e.value.problems


def test_config_defaults_and_floats(tmp_path: Path) -> None:
    cfg = load(tmp_path, {**GOOD, "watch": {"settle_seconds": 2.5, "poll_interval": 1}})
    assert cfg.watch.settle_seconds == 2.5 and cfg.watch.poll_interval == 1.0
    assert cfg.watch.max_wait == 21600 and cfg.watch.extensions == ("csv", "xml", "zip")
    assert cfg.import_type == "instructure_csv"
    assert cfg.folders.path("inbox") == Path("/srv/sisdrop/inbox")
    assert cfg.folders.path("state_dir") == Path("/srv/sisdrop/.sisdropd")


def test_config_unknown_key_and_section_are_named(tmp_path: Path) -> None:
    p = problems(tmp_path, {**GOOD, "watch": {"settle_secs": 3}, "extra": {"a": 1}})
    assert any(x.startswith("watch.settle_secs: unknown key") for x in p), p
    assert any(x.startswith("extra: unknown section") for x in p), p


def test_config_wrong_types_are_named(tmp_path: Path) -> None:
    p = problems(tmp_path, {**GOOD, "watch": {"settle_seconds": "ten", "abort_on_timeout": 1}})
    assert any("watch.settle_seconds: expected a number" in x for x in p), p
    assert any("watch.abort_on_timeout: expected true or false" in x for x in p), p


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://school.instructure.com", True),
        ("http://127.0.0.1:8900", True),
        ("http://localhost:8900", True),
        ("http://[::1]:8900", True),
        ("http://school.instructure.com", False),
        ("ftp://school", False),
    ],
)
def test_config_https_only_except_loopback(tmp_path: Path, url: str, ok: bool) -> None:
    sections = {**GOOD, "canvas": {"base_url": url, "account_id": "1"}}
    if ok:
        load(tmp_path, sections)
    else:
        assert any(x.startswith("canvas.base_url") for x in problems(tmp_path, sections))


def test_config_bad_import_params_fail_at_start(tmp_path: Path) -> None:
    p = problems(tmp_path, {**GOOD, "import": {"batch_mode": True, "diffing_drop_status": "gone"}})
    assert any("import.diffing_drop_status" in x for x in p), p
    assert any("batch_mode" in x for x in p), p


def test_config_toml_syntax_error(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[canvas\nbase_url = 1\n")
    with pytest.raises(config.ConfigError) as e:
        config.load(f)
    assert "TOML syntax error" in e.value.problems[0]


def test_token_order_and_world_readable_refused(tmp_path: Path) -> None:
    tf = tmp_path / "token"
    tf.write_text("from-file\n")
    os.chmod(tf, 0o600)
    cfg = load(tmp_path, {**GOOD, "canvas": {**GOOD["canvas"], "token_file": str(tf)}})
    assert config.read_token(cfg, {}) == ("from-file", str(tf))
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "canvas-token").write_text("from-credentials")
    os.chmod(creds / "canvas-token", 0o400)
    assert config.read_token(cfg, {"CREDENTIALS_DIRECTORY": str(creds)})[0] == "from-credentials"
    assert config.read_token(cfg, {"SISDROPD_TOKEN": "from-env", "CREDENTIALS_DIRECTORY": str(creds)})[0] == "from-env"
    os.chmod(tf, 0o644)
    with pytest.raises(config.TokenError) as e:
        config.read_token(cfg, {})
    assert "readable by all users" in str(e.value) and "from-file" not in str(e.value)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("users.csv", True),
        ("USERS.CSV", True),
        ("term.zip", True),
        ("feed.xml", True),
        (".users.csv", False),
        ("users.csv.part", False),
        ("users.csv.filepart", False),
        ("users.tmp", False),
        ("users.csv.partial", False),
        ("users.csv~", False),
        ("users.xlsx", False),
        ("users", False),
    ],
)
def test_eligible_names(name: str, ok: bool) -> None:
    assert intake.eligible(name, ("csv", "xml", "zip")) is ok


def test_stored_name_ends_with_original_and_fits() -> None:
    when = datetime(2026, 11, 27, 8, 0, 0, tzinfo=UTC)
    s = folders.stored_name("users.csv", when)
    assert s.startswith("20261127T080000Z-") and s.endswith("-users.csv")
    assert folders.original_name(s) == "users.csv"
    assert folders.stored_name("users.csv", when) != s  # two drops of one name never collide
    long = "é" * 115 + ".csv"  # 234 bytes: the timestamp no longer fits, the tag does
    s = folders.stored_name(long, when)
    assert s.endswith("-" + long) and len(os.fsencode(s + ".errors.csv")) <= 255
    assert folders.original_name("plain.csv") == "plain.csv"
    huge = "ü" * 126 + ".csv"  # 256 bytes: longer than any name the filesystem allows beside a suffix
    s = folders.stored_name(huge, when)
    assert len(os.fsencode(s + ".errors.csv")) <= 255 and s.endswith("üü.csv")
    s.encode("utf-8")  # still valid UTF-8: not cut inside a character


def test_move_never_overwrites_and_finishes_a_half_move(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("one")
    b.write_text("two")
    with pytest.raises(FileExistsError):
        files.move(a, b)
    assert a.read_text() == "one" and b.read_text() == "two"
    c = tmp_path / "c"
    os.link(a, c)  # as if killed between link and unlink
    files.move(a, c)
    assert not a.exists() and c.read_text() == "one"


@pytest.mark.parametrize(
    ("state", "dest"),
    [
        ("imported", State.DONE),
        ("imported_with_messages", State.DONE),
        ("failed", State.FAILED),
        ("failed_with_messages", State.FAILED),
        ("aborted", State.FAILED),
        ("restored", State.DONE),
        ("partially_restored", State.DONE),
    ],
)
def test_every_final_state_is_routed(state: str, dest: State) -> None:
    assert importer.is_final(state)
    assert importer.route(state)[0] == dest


@pytest.mark.parametrize("state", ["initializing", "created", "importing", "cleanup_batch", "restoring", "weird"])
def test_non_final_states_are_not_routed(state: str) -> None:
    assert not importer.is_final(state)
    with pytest.raises(ValueError):
        importer.route(state)


def test_journal_transitions_are_checked_and_recorded(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    fid = j.add(original_name="users.csv", stored_name="x-users.csv", size=10, mtime=1.0)
    with pytest.raises(TransitionError):
        j.transition(fid, State.DONE, expect=State.QUEUED)
    j.transition(fid, State.POSTING, expect=State.QUEUED, upload_name="u.csv")
    j.transition(fid, State.RUNNING, expect=State.POSTING, import_id=7)
    j.transition(fid, State.FINISHING, expect=State.RUNNING, outcome="done", sis_import={"id": 7})
    j.transition(fid, State.DONE, expect=State.FINISHING)
    assert [e[1] for e in j.events(fid)] == ["queued", "posting", "running", "finishing", "done"]
    rec = j.get(fid)
    assert rec.import_id == 7 and rec.sis_import == {"id": 7} and rec.state == State.DONE
    j.close()
    # durable: a new connection sees it
    assert Journal(tmp_path).get(fid).state == State.DONE


def test_journal_next_prefers_active_then_oldest_mtime(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    b = j.add(original_name="b.csv", stored_name="b", size=1, mtime=2.0)
    a = j.add(original_name="a.csv", stored_name="a", size=1, mtime=2.0)
    old = j.add(original_name="z.csv", stored_name="z", size=1, mtime=1.0)
    assert j.next_queued().id == old
    j.transition(b, State.POSTING, expect=State.QUEUED)
    assert j.next_queued().id == b
    j.transition(b, State.QUEUED, expect=State.POSTING)
    assert j.next_queued().id == old
    j.transition(old, State.LOST, expect=State.QUEUED)
    assert j.next_queued().id == a  # same mtime: by name


def test_rules_regex_and_glob_fill_named_groups(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(
        '[canvas]\nbase_url = "https://x.instructure.com"\n[folders]\nroot = "/srv/s"\n'
        '[import]\nimport_type = "instructure_csv"\noverride_sis_stickiness = true\n'
        "[[rules]]\nmatch = 'batch_(?P<term>\\w+)\\.zip'\n[rules.import]\nbatch_mode = true\n"
        'batch_mode_term_id = "sis_term_id:{term}"\n'
        '[[rules]]\nglob = "nightly_*.csv"\n[rules.import]\ndiffing_data_set_identifier = "nightly"\n'
    )
    cfg = config.load(path)
    assert cfg.params_for("batch_2026FA.zip") == {
        "import_type": "instructure_csv", "override_sis_stickiness": True,
        "batch_mode": True, "batch_mode_term_id": "sis_term_id:2026FA",
    }
    assert cfg.params_for("nightly_20261127.csv")["diffing_data_set_identifier"] == "nightly"
    assert cfg.params_for("users.csv") == {"import_type": "instructure_csv", "override_sis_stickiness": True}
    assert cfg.params_for("xbatch_2026FA.zip") == cfg.params_for("users.csv")  # the whole name must match


def test_rule_with_unknown_group_or_bad_params_is_refused(tmp_path: Path) -> None:
    base = '[canvas]\nbase_url = "https://x.instructure.com"\n[folders]\nroot = "/srv/s"\n'
    path = tmp_path / "r.toml"
    path.write_text(base + "[[rules]]\nmatch = 'b_(?P<t>\\w+)'\n[rules.import]\nbatch_mode_term_id = \"{term}\"\nbatch_mode = true\n")
    with pytest.raises(config.ConfigError) as e:
        config.load(path)
    assert any("{term} is not a named group" in p for p in e.value.problems)
    path.write_text(base + "[[rules]]\nglob = '*.zip'\n[rules.import]\nchange_threshold = 500\n")
    with pytest.raises(config.ConfigError) as e:
        config.load(path)
    assert any(p.startswith("rules[0]: import.change_threshold") for p in e.value.problems), e.value.problems


def test_canvas_states_are_each_final_pending_or_running() -> None:
    groups = (importer.FINAL_STATES, importer.PENDING_STATES, importer.RUNNING_STATES)
    assert sum(len(g) for g in groups) == len(set().union(*groups))  # no state in two groups
    assert set().union(*groups) == {  # reference section 5
        "initializing", "created", "importing", "cleanup_batch", "imported", "imported_with_messages",
        "aborted", "failed", "failed_with_messages", "restoring", "partially_restored", "restored",
    }


def test_active_is_every_open_state_past_the_queue(tmp_path: Path) -> None:
    assert lifecycle.ACTIVE == lifecycle.OPEN - {State.QUEUED}
    j = Journal(tmp_path)
    late = j.add(original_name="late.csv", stored_name="l", size=1, mtime=5.0)
    early = j.add(original_name="early.csv", stored_name="e", size=1, mtime=1.0)
    assert [r.id for r in j.queued()] == [early, late] and j.active() == []
    j.transition(late, State.POSTING, expect=State.QUEUED)
    assert [r.id for r in j.active()] == [late] and [r.id for r in j.queued()] == [early]
    j.close()


def test_the_folders_are_named_once_and_overridable(tmp_path: Path) -> None:
    cfg = load(tmp_path, {**GOOD, "folders": {"root": "/srv/sisdrop", "held": "/var/held"}})
    f = folders.Folders.of(cfg)
    assert [n for n, _ in f.items()] == list(config.FOLDER_NAMES) == ["inbox", "processing", "done", "failed", "held", "state_dir"]
    assert (f.inbox, f.held, f.state_dir) == (Path("/srv/sisdrop/inbox"), Path("/var/held"), Path("/srv/sisdrop/.sisdropd"))
    assert folders.journal_file(f.state_dir) == Path("/srv/sisdrop/.sisdropd/journal.sqlite3")
