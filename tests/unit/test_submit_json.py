"""``sisdropd submit --json``: stdout is one JSON object and nothing else, whatever the outcome
(a script reads it with ``json.loads``); the lines that say the outcome in words go to stderr.
In-process, against the simulator over HTTP."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sisdropd import cli
from tests.support import TOKEN, USERS, Drop


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("SISDROPD_TOKEN", TOKEN)
    before = os.umask(0o022)  # cli.main sets the process's umask: the test process gets its own back
    os.umask(before)
    yield
    os.umask(before)


def submit(drop: Drop, path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, Any, str]:
    code = cli.main(["submit", str(path), "--json", "-c", str(drop.config), *extra])
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    return code, json.loads(out), err  # the whole of stdout: one object, no line after it


def test_imported_prints_canvas_final_object_alone(drop: Drop, tmp_path: Path, capsys) -> None:
    (f := tmp_path / "users.csv").write_text(USERS)
    code, doc, err = submit(drop, f, capsys)
    assert code == 0 and doc["workflow_state"] == "imported" and doc["id"] == drop.sim.imports()[0]["id"]
    assert f"imported: import {doc['id']} (" in err


def test_no_wait_prints_the_import_as_created(drop: Drop, tmp_path: Path, capsys) -> None:
    drop.sim.set_outcome("users", "imported", seconds=30)
    (f := tmp_path / "users.csv").write_text(USERS)
    code, doc, err = submit(drop, f, capsys, "--no-wait")
    assert code == 0 and doc["id"] == drop.sim.imports()[0]["id"] and doc["workflow_state"] == "created"
    assert f"posted: import {doc['id']} (created)" in err


def test_gave_up_waiting_prints_the_import_as_last_seen(drop: Drop, tmp_path: Path, capsys) -> None:
    drop.sim.set_outcome("users", "stuck")
    drop.write(watch={"max_wait": 1.0})
    (f := tmp_path / "users.csv").write_text(USERS)
    code, doc, err = submit(drop, f, capsys)
    assert code == 3 and doc["id"] == drop.sim.imports()[0]["id"] and doc["workflow_state"] == "created"
    assert "gave up waiting" in err


def test_rejected_prints_an_error_object(drop: Drop, tmp_path: Path, capsys) -> None:
    (f := tmp_path / "grades.csv").write_text("student,grade\nu1,A\n")
    code, doc, err = submit(drop, f, capsys)
    assert code == 1 and doc["id"] is None and doc["workflow_state"] is None
    assert doc["error"].startswith("rejected: grades.csv") and "Couldn't find Canvas CSV import headers" in err
    assert drop.sim.imports() == []


def test_canvas_unreachable_prints_an_error_object(drop: Drop, tmp_path: Path, capsys) -> None:
    drop.write(canvas={"base_url": "http://127.0.0.1:9", "timeout": 1, "retry_initial": 0.1, "retry_max": 0.3})
    (f := tmp_path / "users.csv").write_text(USERS)
    code, doc, err = submit(drop, f, capsys)
    assert code == 3 and doc == {"id": None, "workflow_state": None, "error": doc["error"]}
    assert "unreachable" in doc["error"] and "unreachable" in err
