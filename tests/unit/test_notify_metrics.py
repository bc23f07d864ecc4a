"""Notifier and metrics, against real things: real commands, a real HTTP receiver, real files."""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from sisdropd.config import NotifyConfig
from sisdropd.logs import add_secret
from sisdropd.metrics import KNOWN, Metrics
from sisdropd.notify import Notifier
from tests.support import wait_for

SECRET = "nfy-secret-7d3e9a1c5b2f"  # registered below; must never leave the process
HOOK_PATH = "/hooks/T0001/B0002/pathsecretXYZ"  # webhook paths are often secrets themselves

NOTIFIER_SCRIPT = r"""
import json, os, subprocess, sys, time
out = sys.argv[1]
mode = sys.argv[2] if len(sys.argv) > 2 else "ok"
data = sys.stdin.read()
if mode == "fail":
    sys.stderr.write("boom: channel #sis not found\nsecond line\n")
    sys.exit(3)
if mode == "hang":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    with open(out + ".pids", "a") as f:
        f.write(f"{os.getpid()} {child.pid}\n")
    time.sleep(3)
env = {k: v for k, v in os.environ.items()}
with open(out, "a") as f:
    f.write(json.dumps({"stdin": data, "env": env}) + "\n")
"""


@pytest.fixture
def logs() -> Iterator[list[str]]:
    """Every log line ("LEVEL message") emitted while the test runs."""
    lines: list[str] = []
    sink = logger.add(
        lambda m: lines.append(str(m).rstrip("\n")), level="DEBUG", format="{level} {message}"
    )
    yield lines
    logger.remove(sink)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    p = tmp_path / "sis-alert.py"
    p.write_text(NOTIFIER_SCRIPT)
    return p


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


class Receiver:
    """A webhook endpoint on 127.0.0.1: records each POST, answers ``status``."""

    def __init__(self) -> None:
        self.status = 204
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's spelling
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{HOOK_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


PAYLOAD = {
    "file": "users.csv",
    "import_id": 4821,
    "state": None,
    "reason": "failed_with_messages",
    "sidecar": "/srv/sisdrop/failed/20240501T120000Z_users.csv.json",
    "counts": {"users": 12},
}


# -- notify ---------------------------------------------------------------------------


def test_wants_needs_the_event_and_a_notifier(script: Path, tmp_path: Path) -> None:
    assert not Notifier(NotifyConfig()).wants("failed")
    n = Notifier(NotifyConfig(command=(sys.executable, str(script), str(tmp_path / "out"))))
    assert n.wants("failed") and n.wants("held") and n.wants("stale")
    assert not n.wants("done")
    n.send("done", PAYLOAD)  # not wanted: nothing runs
    n.close()
    assert n.delivered == n.failures == 0 and not (tmp_path / "out").exists()


def test_command_gets_json_on_stdin_and_the_environment(
    script: Path, tmp_path: Path, logs: list[str]
) -> None:
    out = tmp_path / "out"
    n = Notifier(NotifyConfig(command=(sys.executable, str(script), str(out)), timeout=10))
    n.send("failed", PAYLOAD)
    wait_for(lambda: n.delivered == 1, 10, what="the command to run")
    n.close()
    (rec,) = records(out)
    doc = json.loads(rec["stdin"])
    assert list(doc)[:3] == ["event", "time", "host"]
    assert doc["event"] == "failed"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["time"])
    assert doc["host"] and doc["file"] == "users.csv" and doc["import_id"] == 4821
    assert doc["state"] is None and doc["counts"] == {"users": 12}
    assert doc["sidecar"] == PAYLOAD["sidecar"]
    env = rec["env"]
    assert env["SISDROPD_EVENT"] == "failed"
    assert env["SISDROPD_FILE"] == "users.csv"
    assert env["SISDROPD_IMPORT_ID"] == "4821"
    assert env["SISDROPD_STATE"] == ""
    assert env["PATH"] == os.environ["PATH"]  # the daemon's environment is passed on
    assert n.failures == 0
    assert "INFO notified failed for users.csv via command" in logs


def test_close_delivers_what_is_queued_then_refuses(
    script: Path, tmp_path: Path, logs: list[str]
) -> None:
    out = tmp_path / "out"
    n = Notifier(NotifyConfig(command=(sys.executable, str(script), str(out)), events=("done",)))
    for i in range(3):
        n.send("done", {**PAYLOAD, "file": f"f{i}.csv", "state": "imported"})
    n.close(timeout=10)
    assert n.delivered == 3
    assert [json.loads(r["stdin"])["file"] for r in records(out)] == ["f0.csv", "f1.csv", "f2.csv"]
    assert [r["env"]["SISDROPD_STATE"] for r in records(out)] == ["imported"] * 3
    n.send("done", PAYLOAD)  # after close: dropped with a warning, never raised
    n.close()
    assert n.delivered == 3 and len(records(out)) == 3
    assert any(line.startswith("WARNING notifier closed") for line in logs)


def test_failing_and_missing_commands_are_logged_and_counted(
    script: Path, tmp_path: Path, logs: list[str]
) -> None:
    failing = Notifier(
        NotifyConfig(command=(sys.executable, str(script), str(tmp_path / "o"), "fail"))
    )
    missing = Notifier(NotifyConfig(command=(str(tmp_path / "no-such-alert"), "--channel", "sis")))
    failing.send("failed", PAYLOAD)
    missing.send("held", PAYLOAD)
    wait_for(lambda: failing.failures == 1 and missing.failures == 1, 10, what="both failures")
    failing.close()
    missing.close()
    assert failing.delivered == missing.delivered == 0
    errors = [line for line in logs if line.startswith("ERROR")]
    assert any(
        "could not notify failed for users.csv via command: exit status 3; "
        "stderr: boom: channel #sis not found" in line
        for line in errors
    ), errors
    assert not any("second line" in line for line in logs)
    assert any(
        f"could not notify held for users.csv via command: cannot run {tmp_path / 'no-such-alert'}: "
        "No such file or directory" in line
        for line in errors
    ), errors


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # a zombie nobody reaped yet is dead too


def test_hanging_command_is_killed_and_send_never_waits(
    script: Path, tmp_path: Path, logs: list[str]
) -> None:
    out = tmp_path / "out"
    pids = Path(str(out) + ".pids")
    n = Notifier(NotifyConfig(command=(sys.executable, str(script), str(out), "hang"), timeout=1.0))
    t0 = time.monotonic()
    n.send("stale", {"file": None, "reason": "no new file for 2 days"})
    assert time.monotonic() - t0 < 0.5  # the command hangs; its 1 s timeout is not waited
    wait_for(
        lambda: pids.exists() and pids.read_text().endswith("\n"), 5, what="the command to start"
    )
    t1 = time.monotonic()
    n.send("failed", PAYLOAD)  # the first command is sleeping now
    assert time.monotonic() - t1 < 0.5
    wait_for(lambda: n.failures == 2, 8, what="both commands to be killed")
    assert time.monotonic() - t0 < 5  # two 1 s timeouts, not two 3 s sleeps (6 s)
    n.close()
    assert n.delivered == 0 and not out.exists()
    for line in pids.read_text().splitlines():
        for pid in map(int, line.split()):  # the command and its own child: the whole group
            wait_for(lambda pid=pid: _gone(pid), 5, what=f"pid {pid} to be killed")
    timed_out = [
        line for line in logs if line.startswith("ERROR") and "timed out after 1 s, killed" in line
    ]
    assert len(timed_out) == 2, logs
    assert any("could not notify stale via command" in line for line in timed_out)


def test_webhook_and_command_both_get_the_event_without_secrets(
    script: Path,
    tmp_path: Path,
    receiver: Receiver,
    logs: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_secret(SECRET)
    monkeypatch.setenv("SISDROPD_TOKEN", SECRET)
    monkeypatch.setenv("SOME_URL", f"https://example.edu/?access_token={SECRET}")
    out = tmp_path / "out"
    cfg = NotifyConfig(
        command=(sys.executable, str(script), str(out)), webhook=receiver.url, events=("held",)
    )
    n = Notifier(cfg)
    n.send(
        "held", {**PAYLOAD, "reason": f"Canvas refused token {SECRET}", "why": {SECRET: [SECRET]}}
    )
    wait_for(lambda: n.delivered == 2, 10, what="command and webhook")
    n.close()
    (rec,) = records(out)
    (req,) = receiver.requests
    assert req["path"] == HOOK_PATH
    assert req["headers"]["Content-Type"] == "application/json"
    hook_doc = json.loads(req["body"])
    assert hook_doc == json.loads(rec["stdin"])  # the same document
    assert hook_doc["event"] == "held" and hook_doc["import_id"] == 4821
    assert hook_doc["reason"] == "Canvas refused token [REDACTED]"
    assert hook_doc["why"] == {"[REDACTED]": ["[REDACTED]"]}
    assert SECRET not in rec["stdin"] and SECRET not in json.dumps(rec["env"])
    assert "SISDROPD_TOKEN" not in rec["env"] and "SOME_URL" not in rec["env"]
    assert SECRET.encode() not in req["body"] and SECRET not in json.dumps(req["headers"])
    assert not any(SECRET in line for line in logs)
    assert "INFO notified held for users.csv via command" in logs
    assert "INFO notified held for users.csv via webhook" in logs


def test_webhook_answering_500_is_retried_once_logged_and_counted(
    receiver: Receiver, logs: list[str]
) -> None:
    receiver.status = 500
    n = Notifier(NotifyConfig(webhook=receiver.url, timeout=5))
    t0 = time.monotonic()
    n.send("failed", PAYLOAD)
    assert time.monotonic() - t0 < 0.5  # the post and its retry happen on the notifier's thread
    wait_for(lambda: n.failures == 1, 10, what="the webhook failure")
    n.close()
    assert n.delivered == 0 and len(receiver.requests) == 2  # one retry
    errors = [line for line in logs if line.startswith("ERROR")]
    assert len(errors) == 1 and "via webhook" in errors[0] and "HTTP 500" in errors[0], errors
    assert not any("pathsecretXYZ" in line for line in logs)  # the host only, never the path


# -- metrics --------------------------------------------------------------------------

SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def _unescape(v: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), v)


def parse(
    text: str,
) -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], dict[str, str], set[str]]:
    """Strictly parse exposition text: (samples, TYPE by name, names with HELP)."""
    assert text.endswith("\n")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    types: dict[str, str] = {}
    helps: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split()[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "untyped"), line
            types[name] = kind
        else:
            m = SAMPLE.fullmatch(line)
            assert m, f"not a sample line: {line!r}"
            labels: list[tuple[str, str]] = []
            if m.group(2):
                pos = 0
                for lm in LABEL.finditer(m.group(2)):
                    assert lm.start() == pos, line
                    labels.append((lm.group(1), _unescape(lm.group(2))))
                    pos = lm.end()
                assert pos == len(m.group(2)), line
            assert m.group(1) in types, f"sample before its TYPE: {line!r}"
            samples[(m.group(1), tuple(labels))] = float(m.group(3))
    return samples, types, helps


def test_write_renders_every_known_metric_and_the_values_set(tmp_path: Path) -> None:
    path = tmp_path / "sisdropd.prom"
    m = Metrics(path)
    m.set("sisdropd_files_total", 2, {"outcome": "done"})
    m.set("sisdropd_imports_total", 1, {"state": "imported"})
    m.set("sisdropd_retries_total", 3, {"cause": "network"})
    m.set("sisdropd_queue_length", 4)
    m.set("sisdropd_last_success_timestamp_seconds", 1714564800.25)
    m.set("sisdropd_paused", 1)
    m.set("sisdropd_custom_thing", 2.5, {"b": "2", "a": "1"})
    weird = 'we"ird\\state\nx'
    m.set("sisdropd_imports_total", 1, {"state": weird})
    m.write()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sisdropd.prom"]  # no temp left
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    samples, types, helps = parse(path.read_text())
    for name, (kind, _) in KNOWN.items():
        assert types[name] == kind and name in helps
    assert types["sisdropd_custom_thing"] == "untyped"
    assert samples == {
        ("sisdropd_files_total", (("outcome", "done"),)): 2,
        ("sisdropd_files_total", (("outcome", "failed"),)): 0,
        ("sisdropd_files_total", (("outcome", "held"),)): 0,
        ("sisdropd_files_total", (("outcome", "lost"),)): 0,
        ("sisdropd_imports_total", (("state", "imported"),)): 1,
        ("sisdropd_imports_total", (("state", weird),)): 1,
        ("sisdropd_retries_total", (("cause", "network"),)): 3,
        ("sisdropd_notifications_failed_total", ()): 0,
        ("sisdropd_queue_length", ()): 4,
        ("sisdropd_current_import_seconds", ()): 0,
        ("sisdropd_last_success_timestamp_seconds", ()): 1714564800.25,
        ("sisdropd_up", ()): 1,
        ("sisdropd_paused", ()): 1,
        ("sisdropd_held_files", ()): 0,
        ("sisdropd_custom_thing", (("a", "1"), ("b", "2"))): 2.5,
    }
    assert 'state="we\\"ird\\\\state\\nx"' in path.read_text()
    assert Metrics(None).render() == Metrics(tmp_path / "other.prom").render()
    Metrics(None).write()  # no textfile: nothing to do


def test_write_is_atomic_for_a_concurrent_reader(tmp_path: Path) -> None:
    path = tmp_path / "sisdropd.prom"
    m = Metrics(path)
    for i in range(40):  # a file of some size, so a torn write would show
        m.set("sisdropd_padding", i, {"n": str(i), "text": "x" * 200})
    m.write()
    seen: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(path.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(60):
            m.set("sisdropd_queue_length", i)
            m.write()
    finally:
        stop.set()
        reader.join()
    assert len(seen) > 5
    for text in seen:
        samples, types, _ = parse(text)  # every read is a complete file
        assert ("sisdropd_held_files", ()) in samples and len(types) == len(KNOWN) + 1
    assert parse(path.read_text())[0][("sisdropd_queue_length", ())] == 59
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sisdropd.prom"]


def test_write_never_raises_and_warns_once(tmp_path: Path, logs: list[str]) -> None:
    path = tmp_path / "missing" / "sisdropd.prom"
    m = Metrics(path)
    m.write()
    m.write()
    warnings = [line for line in logs if line.startswith("WARNING")]
    assert len(warnings) == 1 and warnings[0] == (
        f"WARNING cannot write metrics to {path}: No such file or directory"
    )
    path.parent.mkdir()
    m.write()
    assert path.exists() and any("metrics written to" in line for line in logs)
    assert sorted(p.name for p in path.parent.iterdir()) == ["sisdropd.prom"]


def test_metrics_set_from_threads_while_rendering_and_bad_names_refused(tmp_path: Path) -> None:
    """The daemon sets totals from its main thread while nothing else writes; the notifier's
    failures and the client's retries change on other threads: sets and renders interleave."""
    m = Metrics(None)
    stop = threading.Event()
    renders: list[str] = []

    def render() -> None:
        while not stop.is_set():
            renders.append(m.render())

    def mirror(cause: str) -> None:
        for n in range(2000):
            m.set("sisdropd_retries_total", n + 1, {"cause": cause})

    reader = threading.Thread(target=render)
    reader.start()
    threads = [threading.Thread(target=mirror, args=(f"c{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    reader.join()
    assert all(m.get("sisdropd_retries_total", {"cause": f"c{i}"}) == 2000 for i in range(8))
    for text in renders:
        parse(text)  # every render is complete and well-formed
    with pytest.raises(ValueError):
        m.set("bad name", 1)
    with pytest.raises(ValueError):
        m.set("sisdropd_x", 1, {"bad-label": "v"})
