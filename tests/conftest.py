"""Fixtures for every test: the simulator on 127.0.0.1, a drop folder, the daemon as a real
process, and a check that no test leaves a thread running. Helpers are in tests/support.py."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sisdropd.simulator import FakeCanvas
from tests.support import TOKEN, DaemonProcess, Drop

THREAD_GRACE = 3.0  # seconds a thread that is ending may take after its test
WORKERS_PER_CORE = 4  # the suite mostly waits (subprocesses, timers, the simulator): see below


def pytest_xdist_auto_num_workers(config: Any) -> int:
    """``-n auto`` (pyproject's addopts): ``$PYTEST_XDIST_AUTO_NUM_WORKERS`` if set, else
    ``WORKERS_PER_CORE`` per core. Most tests wait on real processes and timers, so more
    workers than cores help. The whole suite on 2 shared cores (about 540 tests): -n 2 296 s,
    -n 4 169 s, -n 8 138 s; so 4 per core."""
    given = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    return WORKERS_PER_CORE * (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[FakeCanvas]:
    s = FakeCanvas(token=TOKEN, import_seconds=0.3, storage_dir=tmp_path / "sim-storage", errors_attachment_delay=0.2)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """``tmpfs(name, size)``: a real second filesystem (a tmpfs mounted at tmp_path/name) for
    moves across filesystems; skips the test, saying why, where it cannot be mounted."""
    mounted: list[Path] = []

    def make(name: str, size: str) -> Path:
        p = tmp_path / name
        p.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs (a second filesystem) needs root")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(p)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
        mounted.append(p)
        return p

    yield make
    for p in mounted:
        subprocess.run(["umount", "-l", str(p)], capture_output=True)


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


# Threads started while a module- or session-scoped fixture was set up outlive a test by design.
_long_lived: set[threading.Thread] = set()


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: Any) -> Iterator[None]:
    if fixturedef.scope == "function":
        yield
        return
    before = set(threading.enumerate())
    yield
    _long_lived.update(set(threading.enumerate()) - before)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread running: measured against the threads alive before it
    (pytest-xdist's own, earlier long-lived fixtures'), after a short grace for ending ones."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREAD_GRACE
    while True:
        left = [t for t in threading.enumerate() if t not in before and t not in _long_lived and t.is_alive()]
        if not left:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the test left {len(left)} thread(s) running: {sorted(t.name for t in left)}")
        time.sleep(0.02)
