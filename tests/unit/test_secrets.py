"""Secrets and private data at the edges (issue 12, points 3, 7 and 9): the token as it is
read, what an alert carries and its command's environment, the webhook's scheme, and
what a file name may bring into a log line."""

from __future__ import annotations

import io
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sisdropd import importer, logs
from sisdropd.config import ConfigError, LogConfig, NotifyConfig, TokenError, from_dict, read_token
from sisdropd.notify import WITHHELD, Notifier, without_rows
from tests.support import wait_for

GOOD = "7~Zq4TnVb8cXk2LmP0aRsD"
BASE = {"canvas": {"base_url": "https://canvas.example.edu"}, "folders": {"root": "/srv/sisdrop"}}


# ---------------------------------------------------------------- point 7: the token itself


@pytest.fixture
def token_file(tmp_path: Path) -> Iterator[Path]:
    p = tmp_path / "canvas-token"
    p.touch(mode=0o600)
    yield p


@pytest.mark.parametrize(
    "raw, why",
    [
        (f"{GOOD}\nsecond-line-SECRET", "more than one line"),
        (f"{GOOD}\r\nsecond-line-SECRET\n", "more than one line"),
        (f"{GOOD}\x1bsecond-line-SECRET", "control character"),
        (f"{GOOD}\x00second-line-SECRET", "control character"),
        (f"{GOOD} second-line-SECRET", "space or a character outside printable ASCII"),
        (f"{GOOD}\u2028second-line-SECRET", "space or a character outside printable ASCII"),
        (f"{GOOD}\x85second-line-SECRET", "control character"),
    ],
    ids=["newline", "crlf", "escape", "nul", "space", "line-separator", "c1-nel"],
)
@pytest.mark.parametrize("source", ["env", "credential", "token_file"])
def test_a_token_that_is_not_one_clean_line_is_refused_naming_its_source(
    tmp_path: Path, token_file: Path, raw: str, why: str, source: str
) -> None:
    cfg = from_dict({**BASE, "canvas": {**BASE["canvas"], "token_file": str(token_file)}})
    creds = tmp_path / "creds"
    creds.mkdir()
    env: dict[str, str] = {}
    if source == "env":
        env["SISDROPD_TOKEN"] = raw
        where = "$SISDROPD_TOKEN"
    elif source == "credential":
        (creds / "canvas-token").write_text(raw)
        (creds / "canvas-token").chmod(0o400)  # as systemd makes it
        env["CREDENTIALS_DIRECTORY"] = str(creds)
        where = str(creds / "canvas-token")
    else:
        token_file.write_text(raw)
        where = str(token_file)
    with pytest.raises(TokenError) as e:
        read_token(cfg, environ=env)
    text = str(e.value)
    assert text.startswith(f"{where}: ") and why in text, text
    assert GOOD not in text and "SECRET" not in text


SECRET = "7~Zq4TnVb8cXk2LmP0aRsDhooksT0B1secretpath"
HOOK = f"https://hooks.example.edu/services/{SECRET}"


@pytest.mark.parametrize(
    "raw, key",
    [
        ({**BASE, "canvas": SECRET}, "canvas:"),  # a token pasted a line too high
        ({**BASE, "notify": [{"webhook": HOOK}]}, "notify:"),  # [[notify]] for a second webhook
        ({**BASE, "notify": {"webhook": [HOOK]}}, "notify.webhook:"),
        ({**BASE, "watch": {"settle_seconds": SECRET}}, "watch.settle_seconds:"),
        ({**BASE, "guard": {"max_drop_percent": HOOK}}, "guard.max_drop_percent:"),
        ({**BASE, "import": HOOK}, "import:"),
        ({**BASE, "rules": [{"glob": "*.csv", "import": SECRET}]}, "rules[0].import:"),
    ],
    ids=["section", "array-of-tables", "webhook-list", "number", "percentage", "import", "rule-import"],
)
def test_a_value_of_the_wrong_kind_is_named_by_kind_never_echoed(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_dict(raw)
    text = "; ".join(caught.value.problems)
    assert key in text and "got " in text, text
    assert SECRET not in text and SECRET[:12] not in text and "hooks.example.edu" not in text, text


def test_a_short_plain_word_of_the_wrong_kind_is_shown() -> None:
    with pytest.raises(ConfigError, match=r"watch.settle_seconds: expected a number, got 'soon'"):
        from_dict({**BASE, "watch": {"settle_seconds": "soon"}})


def test_a_token_file_that_is_a_folder_is_named_as_one(tmp_path: Path) -> None:
    folder = tmp_path / "canvas-token"
    folder.mkdir(mode=0o755)  # world-readable, as folders are: that is not what is wrong
    cfg = from_dict({**BASE, "canvas": {**BASE["canvas"], "token_file": str(folder)}})
    with pytest.raises(TokenError, match=rf"no Canvas token found \({re.escape(str(folder))}: a folder, not a file holding the token\)"):
        read_token(cfg, {})


def test_a_token_with_its_line_end_is_taken(token_file: Path) -> None:
    cfg = from_dict({**BASE, "canvas": {**BASE["canvas"], "token_file": str(token_file)}})
    token_file.write_text(f"  {GOOD}\r\n")
    assert read_token(cfg, environ={}) == (GOOD, str(token_file))
    assert read_token(cfg, environ={"SISDROPD_TOKEN": f"{GOOD}\n"}) == (GOOD, "$SISDROPD_TOKEN")


def test_a_secret_is_redacted_in_its_escaped_forms_too() -> None:
    """What let the token through before: InvalidHeader's text shows it as a repr."""
    logs.add_secret("abc\ndef-SECRET")
    assert logs.redact(repr("Bearer abc\ndef-SECRET")) == "'Bearer [REDACTED]'"
    assert "SECRET" not in logs.clean("header: abc\ndef-SECRET")


# ---------------------------------------------------------------- point 9: log escaping


@pytest.mark.parametrize(
    "char",
    ["\n", "\r", "\x1b", "\x7f", "\x85", "\x9b", "\x80", "\x9f", "\u2028", "\u2029",
     "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069",
     "\u200e", "\u200f", "\u061c"],
)
def test_controls_and_bidi_marks_are_shown_escaped(char: str) -> None:
    name = f"users{char}vsc.exe.csv"
    shown = logs.escape(name)
    assert char not in shown and shown == "users" + char.encode("unicode_escape").decode() + "vsc.exe.csv"
    out = io.StringIO()
    logs.setup(LogConfig(), stream=out)
    try:
        logs.event(file=name).info("taken")
    finally:
        logs.setup(None)
    [line] = out.getvalue().splitlines()
    assert char not in line and shown in line


def test_ordinary_unicode_is_left_alone() -> None:
    assert logs.escape("ユーザー é ü — 2026.csv") == "ユーザー é ü — 2026.csv"


# ---------------------------------------------------------------- point 9: the webhook


@pytest.mark.parametrize(
    "url, ok",
    [
        ("https://hooks.example.edu/T0/B0/pathSECRET", True),
        ("http://127.0.0.1:8080/hook", True),
        ("http://localhost/hook", True),
        ("http://[::1]:9/hook", True),
        ("http://hooks.example.edu/T0/B0/pathSECRET", False),
        ("http://10.0.0.5/pathSECRET", False),
        ("ftp://hooks.example.edu/pathSECRET", False),
    ],
)
def test_the_webhook_must_be_https_loopback_aside(url: str, ok: bool) -> None:
    raw = {**BASE, "notify": {"webhook": url}}
    if ok:
        assert from_dict(raw).notify.webhook == url
        return
    with pytest.raises(ConfigError) as e:
        from_dict(raw)
    [problem] = e.value.problems
    assert problem.startswith("notify.webhook: ") and "https" in problem
    assert "pathSECRET" not in problem, "a webhook's path is often a secret itself"


# ------------------------------------------------ point 9: no row texts in alerts by default

# Canvas's shapes (reference section 4): row messages name students.
STUDENT = "Ada Lovelace"
FAILED = {
    "id": 4821,
    "workflow_state": "failed_with_messages",
    "data": {"counts": {"users": 0, "error_count": 1, "warning_count": 1}},
    "processing_errors": [["users.csv", f"Invalid login_id for user u1 ({STUDENT}): ada@@example"]],
    "processing_warnings": [["users.csv", f"Improper status \"bogus\" for user u2 ({STUDENT} II), skipping"]],
}


def rows_of(imp: dict) -> dict:
    return {"errors": imp.get("processing_errors") or [], "warnings": imp.get("processing_warnings") or []}


def test_without_rows_cuts_canvas_row_texts_out_of_the_reason() -> None:
    _, reason = importer.verdict(FAILED)
    assert STUDENT in reason  # what the sidecar keeps, and what an alert must not carry
    clean = without_rows(reason, rows_of(FAILED))
    assert STUDENT not in clean and "u1" not in clean and WITHHELD in clean
    assert clean.startswith(reason.split(":")[0])


def test_the_change_threshold_message_names_no_one_and_stays() -> None:
    imp = {"workflow_state": "aborted", "processing_errors": [[None, "1200 enrollments would be deleted and exceeds the set threshold of 10%"]]}
    _, reason = importer.verdict(imp)
    assert without_rows(reason, rows_of(imp)) == reason


RECORD = "import json, os, sys\nopen(sys.argv[1], 'a').write(json.dumps({'doc': json.load(sys.stdin), 'env': dict(os.environ)}) + '\\n')\n"


@pytest.mark.parametrize("include_rows", [False, True])
def test_failed_and_warnings_events_carry_rows_only_on_request(tmp_path: Path, include_rows: bool) -> None:
    script, out = tmp_path / "alert.py", tmp_path / "out.jsonl"
    script.write_text(RECORD)
    n = Notifier(NotifyConfig(command=(sys.executable, str(script), str(out)), events=("failed", "warnings"), include_rows=include_rows))
    _, reason = importer.verdict(FAILED)
    payload = {"file": "users.csv", "import_id": 4821, "state": "failed_with_messages", "reason": reason,
               "sidecar": "/srv/sisdrop/failed/x-users.csv.json", "counts": FAILED["data"]["counts"]}
    n.send("failed", payload, rows=rows_of(FAILED))
    n.send("warnings", payload, rows=rows_of(FAILED))
    wait_for(lambda: n.delivered == 2, 10, what="two events")
    n.close()
    docs = [json.loads(line)["doc"] for line in out.read_text().splitlines()]
    for doc in docs:
        assert doc["counts"] == {"users": 0, "error_count": 1, "warning_count": 1}
        assert doc["sidecar"].endswith(".json") and doc["reason"].startswith("Canvas")
        if include_rows:
            assert doc["errors"] == FAILED["processing_errors"] and doc["warnings"] == FAILED["processing_warnings"]
        else:
            assert STUDENT not in json.dumps(doc) and "errors" not in doc and "warnings" not in doc


# ------------------------------------------- point 3: the alert command's environment


def test_the_alert_command_gets_no_credential_in_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "credentials" / "sisdropd.service"
    creds.mkdir(parents=True)
    (creds / "canvas-token").write_text(GOOD)
    logs.add_secret(GOOD)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("SISDROPD_TOKEN", GOOD)
    monkeypatch.setenv("MY_TOKEN_PATH", f"{creds}/canvas-token")
    monkeypatch.setenv("AUTH_HEADER", f"Bearer {GOOD}")
    monkeypatch.setenv("KEEP_ME", "ordinary")
    script, out = tmp_path / "alert.py", tmp_path / "out.jsonl"
    script.write_text(RECORD)
    n = Notifier(NotifyConfig(command=(sys.executable, str(script), str(out)), events=("failed",)))
    n.send("failed", {"file": "users.csv", "reason": "x"})
    wait_for(lambda: n.delivered == 1, 10, what="the event")
    n.close()
    env = json.loads(out.read_text())["env"]
    for gone in ("CREDENTIALS_DIRECTORY", "SISDROPD_TOKEN", "MY_TOKEN_PATH", "AUTH_HEADER"):
        assert gone not in env, gone
    assert GOOD not in json.dumps(env) and str(creds) not in json.dumps(env)
    assert env["KEEP_ME"] == "ordinary" and env["SISDROPD_EVENT"] == "failed"
    assert os.environ["CREDENTIALS_DIRECTORY"] == str(creds), "the daemon's own environment is untouched"
