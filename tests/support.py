"""What the tests share besides fixtures: waiting on conditions, a drop folder, the daemon as a
real process, a real intake for watcher tests. Imported as ``tests.support`` from any folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sisdropd import config
from sisdropd.canvas import client_for
from sisdropd.folders import Folders
from sisdropd.intake import Intake, Taken
from sisdropd.journal import FileRecord, Journal
from sisdropd.notify import Notifier
from sisdropd.simulator import FakeCanvas
from sisdropd.worker import Worker

REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())
TOKEN = "test-token-4f9c2a7e1b"  # a recognisable secret: tests grep for it in every output


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def holds(cond: Callable[[], Any], seconds: float, interval: float = 0.05, what: str = "condition") -> None:
    """A bounded wait on something that would show a negative: ``cond`` must stay truthy for
    ``seconds``; fails as soon as it does not. Say at the call why ``seconds`` is enough."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert cond(), f"no longer true: {what}"
        time.sleep(interval)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class Drop:
    """A drop folder with a config pointing at the simulator, and helpers to look at it."""

    def __init__(self, root: Path, sim: FakeCanvas) -> None:
        self.root = root
        self.sim = sim
        self.inbox = root / "sisdrop" / "inbox"
        self.processing = root / "sisdrop" / "processing"
        self.done = root / "sisdrop" / "done"
        self.failed = root / "sisdrop" / "failed"
        self.held = root / "sisdrop" / "held"
        self.state_dir = root / "sisdrop" / ".sisdropd"
        self.config = root / "sisdropd.toml"
        self.sections: dict[str, dict[str, Any]] = {
            "canvas": {"base_url": sim.url, "account_id": "1", "timeout": 2, "retry_initial": 0.2, "retry_max": 1.0},
            "folders": {"root": str(root / "sisdrop")},
            "import": {"import_type": "instructure_csv"},
            "watch": {"settle_seconds": 0.5, "poll_interval": 0.3, "max_wait": 60, "rescan_interval": 5},
            "log": {"level": "DEBUG"},
        }
        self.write()
        self.inbox.mkdir(parents=True, exist_ok=True)

    def write(self, **changes: dict[str, Any]) -> Path:
        for section, values in changes.items():
            self.sections.setdefault(section, {}).update(values)
        return write_config(self.config, self.sections)

    def outcomes(self, folder: str) -> list[Path]:
        d = getattr(self, folder)
        if not d.exists():
            return []
        return sorted(p for p in d.iterdir() if not p.name.endswith((".json", ".errors.csv")) and not p.name.startswith("."))

    def sidecar(self, path: Path) -> dict[str, Any]:
        return json.loads(path.with_name(path.name + ".json").read_text())

    def finished(self) -> list[Path]:
        return self.outcomes("done") + self.outcomes("failed")

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SISDROPD_", "NOTIFY_SOCKET", "JOURNAL_STREAM"))}
        env.update({"SISDROPD_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}, **extra)
        return env

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``sisdropd ARGS`` as a real process and return what it did."""
        return subprocess.run(
            [sys.executable, "-m", "sisdropd", *args], env=env or self.env(), capture_output=True,
            text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )

    def status(self) -> dict[str, Any]:
        r = self.cli("status", "-c", str(self.config), "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)


class DaemonProcess:
    """``sisdropd run`` as a real process; its stderr (the log) goes to a file."""

    def __init__(self, drop: Drop, env: dict[str, str] | None = None) -> None:
        self.drop = drop
        self.log_path = drop.root / f"daemon-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sisdropd", "run", "-c", str(drop.config)],
            env=env or drop.env(), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        wait_for(lambda: "watching" in self.log() or self.proc.poll() is not None, 20, what="daemon start")
        assert self.proc.poll() is None, self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 10) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


class Inbox:
    """A real intake (folders, journal) for watcher tests: ``taken()`` lists what it took."""

    def __init__(self, root: Path, **watch: Any) -> None:
        self.cfg = config.from_dict(
            {"canvas": {"base_url": "http://127.0.0.1:9"}, "folders": {"root": str(root)}, "watch": watch}
        )
        self.folders = Folders.of(self.cfg)
        self.folders.make()
        self.journal = Journal(self.folders.state_dir)
        self.intake = Intake(self.cfg, self.journal, self.folders)
        self.path = self.folders.inbox

    def taken(self) -> list[str]:
        return [r.original_name for r in self.journal.select()]

    def close(self) -> None:
        self.journal.close()


RECORDER = """\
import json, sys
doc = json.load(sys.stdin)
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(doc) + "\\n")
"""


def recorder(tmp: Path) -> tuple[list[str], Path]:
    """A notify command that appends each event (JSON) to a file: (its argv, the file)."""
    script, out = tmp / "record_alert.py", tmp / "alerts.jsonl"
    script.write_text(RECORDER)
    return [sys.executable, str(script), str(out)], out


def alerts(out: Path, event: str | None = None) -> list[dict[str, Any]]:
    """The events a ``recorder`` wrote, of kind ``event`` (all when None)."""
    docs = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return [d for d in docs if event is None or d["event"] == event]


USERS = "user_id,login_id,first_name,last_name,status\nu1,ada,Ada,Lovelace,active\nu2,alan,Alan,Turing,active\n"


def write_slowly(path: Path, data: bytes, pieces: int, seconds: float) -> None:
    """Write ``data`` in ``pieces`` over ``seconds``, flushing each piece (a slow upload)."""
    step = max(1, len(data) // pieces)
    with open(path, "wb") as f:
        for i in range(0, len(data), step):
            f.write(data[i : i + step])
            f.flush()
            os.fsync(f.fileno())
            time.sleep(seconds / pieces)


class Rig:
    """One worker in-process, every part real: the config, folders and journal in ``root``, a
    CanvasClient to the simulator over HTTP, the intake and the worker. Files come in through
    the intake (``drop``) and ``drain`` runs the worker on this thread until nothing is left.

    Timings are small (retries from 0.05 s, status checks every 0.05 s) so a path runs in a
    second or two; ``sections`` override the config (as in the TOML file).
    """

    def __init__(self, root: Path, sim: FakeCanvas, **sections: Any) -> None:
        self.sim = sim
        merged: dict[str, Any] = {
            "canvas": {"base_url": sim.url, "account_id": "1", "timeout": 5, "retry_initial": 0.05, "retry_max": 0.2},
            "folders": {"root": str(root / "sisdrop")},
            "watch": {"poll_interval": 0.05, "max_wait": 30, "truncated_after": 0},
        }
        for section, values in sections.items():
            merged[section] = values if isinstance(values, list) else {**merged.get(section, {}), **values}
        self.cfg = config.from_dict(merged)
        self.folders = Folders.of(self.cfg)
        self.folders.make()
        self.journal = Journal(self.folders.state_dir)
        self.stop = threading.Event()
        self.client = client_for(self.cfg, TOKEN, stop=self.stop)
        self.intake = Intake(self.cfg, self.journal, self.folders)
        n = self.cfg.notify
        self.notifier = Notifier(n) if n.command or n.webhook else None
        self.worker = Worker(self.cfg, self.journal, self.client, self.folders, stop=self.stop, notifier=self.notifier)

    def drop(self, name: str, data: str | bytes, mtime: float | None = None) -> int:
        """Write ``name`` into inbox/ and take it through the intake, as the watcher would; its record id."""
        path = self.folders.inbox / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return self.drop_entry(name)

    def drop_entry(self, name: str) -> int:
        """Take the inbox entry ``name`` (any kind: a FIFO too) through the intake; its record id."""
        path = self.folders.inbox / name
        assert self.intake.take(path, os.lstat(path)) == Taken.TAKEN
        return max(r.id for r in self.journal.select() if r.original_name == name)

    def drain(self, timeout: float = 20.0) -> None:
        assert self.worker.drain(timeout), f"still open after {timeout}s: {self.journal.open_records()}"

    def run_until(self, cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> None:
        """Run the worker's steps (honouring each record's next_attempt) until ``cond()`` holds."""
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
            rec = self.journal.next_queued()
            assert rec is not None, f"nothing left to do, and still not {what}"
            if rec.next_attempt > time.time():
                time.sleep(min(0.05, rec.next_attempt - time.time()))
                continue
            self.worker._attempt(rec)

    def posts(self) -> int:
        """Create requests the simulator received (answered or not)."""
        return sum(1 for method, path, _ in self.sim.request_log() if method == "POST" and path.endswith("/sis_imports"))

    def events(self, file_id: int) -> list[tuple[str | None, str, str | None]]:
        return self.journal.events(file_id)

    def record(self, file_id: int) -> FileRecord:
        return self.journal.get(file_id)

    def finished(self, file_id: int) -> tuple[Path, dict[str, Any]]:
        """The record's file in done/ or failed/, and its sidecar."""
        rec = self.record(file_id)
        path = getattr(self.folders, str(rec.state)) / rec.stored_name
        return path, json.loads(path.with_name(path.name + ".json").read_text())

    def close(self) -> None:
        self.stop.set()
        if self.notifier is not None:
            self.notifier.close(timeout=5)
        self.client.close()
        self.journal.close()


def run_in_pty(
    args: list[str], env: dict[str, str], *, answer: str | None = None, prompt: str = "", timeout: float = 60,
) -> tuple[int, str]:
    """Run ``sisdropd ARGS`` with stdin, stdout and stderr on a real pseudo-terminal; return its
    exit status and everything it wrote there (``\\r\\n`` as the terminal got it). When
    ``answer`` is given, it is typed once ``prompt`` has appeared."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sisdropd", *args], env={**env, "TERM": "xterm"}, stdin=slave, stdout=slave,
        stderr=slave, close_fds=True, start_new_session=True,
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer has closed the terminal
                    break
                if not data:
                    break
                out += data
                if answer is not None and prompt.encode() in out:
                    os.write(master, answer.encode() + b"\n")
                    answer = None
            elif proc.poll() is not None and not select.select([master], [], [], 0.2)[0]:
                break
        else:
            raise AssertionError(f"sisdropd {args} still running after {timeout}s: {out!r}")
        return proc.wait(10), out.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
