"""Seeing files arrive: a watchdog observer, a start-up scan, a periodic rescan, and settling.

The observer's handler only hands a name to the settler (inside try/except: an exception
in a watchdog handler silently kills its thread). Which entry a name concerns, and what
taking one means, is the intake's business (``intake.Intake``): the settler keeps the
candidates and hands each to ``Intake.take`` once its size, mtime and ctime have not
changed for ``settle_seconds``: it
wakes exactly when the next candidate is due, or when an event comes, and sleeps on an
event otherwise, so an idle daemon costs nothing. A full listing of the inbox at start and
every ``rescan_interval`` catches whatever the events missed (an inotify overflow, an
NFS inbox); the rescan also restarts the observer if its thread has died.

With inotify (a local filesystem, one clock) a file's quiet time counts from its own
mtime/ctime, so files already waiting at start are taken at once. With polling (NFS/SMB,
where the server's clock may differ) only what we saw ourselves counts.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from loguru import logger
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from sisdropd.intake import Taken
from sisdropd.logs import event as log_event


def _not_the_stop_race(record: logging.LogRecord) -> bool:
    """watchdog logs "InotifyEmitter.queue_events() called when the thread is inactive" as an
    error when its emitter reads once more while the observer stops (a known, harmless race:
    gorakhargosh/watchdog#963). Ours stops only when the daemon does: no error to report."""
    return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_not_the_stop_race)


class Intake(Protocol):
    """What the watcher needs of ``intake.Intake``."""

    def consider(self, name: str) -> str | None: ...

    def take(self, path: Path, st: os.stat_result) -> Taken: ...


@dataclass
class _Candidate:
    sig: tuple[int, int, int, int, int]
    quiet_since: float  # monotonic time from which the signature has not changed
    retry_at: float = 0.0  # after a failed take


def _sig(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            if event.event_type in ("opened", "closed_no_write", "deleted"):
                return
            for p in (event.src_path, getattr(event, "dest_path", "")):
                if p:
                    self.watcher.touch(os.fsdecode(p))
        except Exception:  # noqa: BLE001 - must never escape into watchdog's thread
            logger.exception("error while handling a file event (ignored; the rescan covers it)")


class Watcher:
    """Watches ``inbox`` and calls ``intake.take`` for each entry once it has settled.

    ``paused()`` is asked before each take: while it returns True nothing is taken (the
    candidates are kept). ``on_taken()`` is called after each pass that took something.
    ``start`` scans what is already there; ``stop`` joins its threads.
    """

    def __init__(
        self,
        inbox: Path,
        intake: Intake,
        *,
        settle_seconds: float,
        polling: bool = False,
        rescan_interval: float = 60.0,
        paused: Callable[[], bool] = lambda: False,
        on_taken: Callable[[], None] = lambda: None,
        polling_interval: float = 2.0,
    ) -> None:
        self.inbox = inbox
        self.intake = intake
        self.settle = settle_seconds
        self.polling = polling
        self.rescan_interval = rescan_interval
        self.paused = paused
        self.on_taken = on_taken
        self.polling_interval = polling_interval
        self._cands: dict[str, _Candidate] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._observer: Any = None
        self._thread = threading.Thread(target=self._loop, name="settler", daemon=True)
        self.rescans = 0

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._start_observer()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def alive(self) -> bool:
        """Both threads are running (for the systemd watchdog)."""
        return self._thread.is_alive() and self._observer is not None and self._observer.is_alive()

    def _start_observer(self) -> None:
        obs = PollingObserver(timeout=self.polling_interval) if self.polling else Observer()
        obs.schedule(_Handler(self), str(self.inbox), recursive=False)
        obs.daemon = True
        obs.start()
        self._observer = obs

    # -- input --------------------------------------------------------------------------
    def touch(self, path: str) -> None:
        """An event named ``path``: consider the entry it concerns, if one directly in inbox/."""
        p = Path(path)
        if p.parent != self.inbox:
            return
        name = self.intake.consider(p.name)
        if name is None:
            return
        with self._lock:
            known = name in self._cands
            if not known:
                self._cands[name] = _Candidate(sig=(-1, -1, -1, -1, -1), quiet_since=time.monotonic())
        if not known or name != p.name:  # new, or news about it (its marker): look now
            self._wake.set()

    def poke(self) -> None:
        """Re-check now (after resume, or when a take may succeed again)."""
        self._wake.set()

    def scan(self) -> int:
        """List inbox/ and consider every eligible entry; returns how many there were."""
        n = 0
        try:
            with os.scandir(self.inbox) as it:
                for entry in it:
                    if self.intake.consider(entry.name) == entry.name:
                        self.touch(entry.path)
                        n += 1
        except OSError as e:
            logger.error("cannot list the inbox {}: {}", self.inbox, e.strerror)
        return n

    # -- the settler ----------------------------------------------------------------------
    def _loop(self) -> None:
        self.scan()
        next_rescan = time.monotonic() + self.rescan_interval
        while not self._stop.is_set():
            try:
                due = self._check_due()
            except Exception:  # noqa: BLE001 - keep settling whatever one file does
                logger.exception("settler error (continuing)")
                due = time.monotonic() + 1.0
            now = time.monotonic()
            if self.rescan_interval > 0 and now >= next_rescan:
                self.rescans += 1
                if self._observer is None or not self._observer.is_alive():
                    logger.error("the file watcher thread had stopped; restarting it")
                    self._start_observer()
                self.scan()
                next_rescan = now + self.rescan_interval
                continue
            wake_at = min(due, next_rescan) if self.rescan_interval > 0 else due
            self._wake.wait(max(0.0, wake_at - now) if wake_at != float("inf") else None)
            self._wake.clear()

    def _check_due(self) -> float:
        """Stat each candidate that is due, take the settled ones; return the next due time."""
        now = time.monotonic()
        wall = time.time()
        next_due = float("inf")
        with self._lock:
            names = list(self._cands.items())
        paused = self.paused()
        settled: list[tuple[int, str, Path, os.stat_result, _Candidate]] = []
        for name, cand in names:
            if cand.retry_at > now:
                next_due = min(next_due, cand.retry_at)
                continue
            path = self.inbox / name
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                self._forget(name)
                continue
            except OSError as e:
                log_event(name).warning("cannot stat: {}", e.strerror)
                cand.retry_at = now + max(1.0, self.settle)
                continue
            if stat.S_ISDIR(st.st_mode):
                self._forget(name)  # folders are left alone
                continue
            sig = _sig(st)
            if sig != cand.sig:
                age = 0.0
                if not self.polling:
                    age = max(0.0, wall - max(st.st_mtime, st.st_ctime))
                cand.sig, cand.quiet_since = sig, now - min(age, self.settle)
            due = cand.quiet_since + self.settle
            if now < due:
                next_due = min(next_due, due)
                continue
            if not paused:
                settled.append((st.st_mtime_ns, name, path, st, cand))
        # Take what settled together oldest first, then tell the worker once: files that
        # arrive together are imported in modification-time order (ties by name).
        settled.sort(key=lambda t: (t[0], t[1]))
        taken_any = False
        for _mt, name, path, st, cand in settled:
            try:
                taken = self.intake.take(path, st)
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
                log_event(name).error("could not take the file: {}", e)
                taken = Taken.RETRY
            if taken == Taken.TAKEN:
                self._forget(name)
                if not taken_any:
                    self.on_taken()  # the oldest is in: the worker may start while the rest follow
                taken_any = True
            elif taken == Taken.RETRY:
                cand.retry_at = now + max(1.0, self.settle)
                next_due = min(next_due, cand.retry_at)
            # Taken.WAIT: nothing is due until an event (its marker) wakes the settler
        if taken_any:
            self.on_taken()
        return next_due

    def _forget(self, name: str) -> None:
        with self._lock:
            self._cands.pop(name, None)
