"""Shared fixtures: the simulator on 127.0.0.1, a drop folder, and the daemon as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sisdropd.simulator import FakeCanvas

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


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[FakeCanvas]:
    s = FakeCanvas(token=TOKEN, import_seconds=0.3, storage_dir=tmp_path / "sim-storage", errors_attachment_delay=0.2)
    s.start()
    yield s
    s.stop()


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


@pytest.fixture
def drop(tmp_path: Path, sim: FakeCanvas) -> Drop:
    return Drop(tmp_path, sim)


@pytest.fixture
def daemon(drop: Drop) -> Iterator[Callable[..., DaemonProcess]]:
    """Start daemons with ``daemon()``; each is killed at the end if still running."""
    started: list[DaemonProcess] = []

    def start(**kw: Any) -> DaemonProcess:
        d = DaemonProcess(drop, **kw)
        started.append(d)
        return d

    yield start
    for d in started:
        d.close()
        assert TOKEN not in d.log(), "the token leaked into the daemon's log"


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
