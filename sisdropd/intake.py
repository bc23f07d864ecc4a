"""Intake: what in inbox/ is ours, and taking a settled file into processing/.

The watcher (``watcher.Watcher``) sees entries arrive and settle; it asks this module
which entry an event concerns (``Intake.consider``) and hands each settled one to
``Intake.take``, on its own thread. Taking a file:

1. the sender's marker, when ``[watch] marker`` is set: ``users.csv`` waits until
   ``users.csv.ok`` exists (the marker is removed once the file is taken);
2. the truncation wait: a file that looks cut short (``preflight.looks_truncated``)
   stays in the inbox until it changes, and is taken to be failed after
   ``truncated_after`` seconds unchanged;
3. the claim: one atomic rename into processing/ under its stored name, made durable,
   then the QUEUED record (a crash between the two is found by ``recovery``). A name
   that is not UTF-8 is taken like any other: the journal, the logs and the stored name
   carry its ``folders.readable`` form (``bad%FF.csv``).

``eligible`` is the contract's point 1: hidden names, temporary upload names and other
extensions are never ours.
"""

from __future__ import annotations

import os
import stat
import time
from enum import Enum
from pathlib import Path

from sisdropd import outcome, preflight
from sisdropd.config import Config
from sisdropd.crashpoint import crashpoint
from sisdropd.files import fsync_dir, sha256_or_none
from sisdropd.folders import Folders, readable, stored_name
from sisdropd.journal import Journal
from sisdropd.lifecycle import State
from sisdropd.logs import event as log_event
from sisdropd.preflight.files import file_kind

TEMP_SUFFIXES = (".part", ".filepart", ".tmp", ".partial")


def eligible(name: str, extensions: tuple[str, ...] | list[str]) -> bool:
    """True when an inbox entry named ``name`` is one we take (by name alone).

    Hidden names, temporary upload names (``*.part``, ``*.filepart``, ``*.tmp``,
    ``*.partial``, ``*~``) and other extensions are left alone.
    """
    if not name or name.startswith(".") or name.endswith("~"):
        return False
    lower = name.lower()
    if lower.endswith(TEMP_SUFFIXES):
        return False
    ext = lower.rsplit(".", 1)[-1] if "." in lower else ""
    return ext in {e.lower() for e in extensions}


class Taken(Enum):
    """What became of a settled entry handed to ``Intake.take``."""

    TAKEN = "taken"  # dealt with: in processing/ and journaled, or gone before it was taken
    RETRY = "retry"  # not now (it changed, looks truncated, or could not be moved): try again later
    WAIT = "wait"  # waits for the sender's marker: look again when an event comes


class Intake:
    """Takes settled inbox entries into processing/; called on the watcher's thread only."""

    def __init__(self, cfg: Config, journal: Journal, folders: Folders) -> None:
        self.cfg = cfg
        self.journal = journal
        self.folders = folders
        self.extensions = cfg.watch.extensions
        self.marker = cfg.watch.marker
        self._truncated: dict[str, tuple[tuple[int, int, int], float]] = {}  # name -> (signature, since)

    # -- which entry ------------------------------------------------------------------------
    def consider(self, name: str) -> str | None:
        """The inbox entry an event about ``name`` concerns, or None when it is none of ours.

        An eligible name is itself; a marker (``users.csv.ok``) stands for its file.
        """
        if self.marker and name.endswith(self.marker):
            name = name[: -len(self.marker)]
        return name if eligible(name, self.extensions) else None

    def _marker_of(self, path: Path) -> Path | None:
        return path.with_name(path.name + self.marker) if self.marker else None

    # -- taking -------------------------------------------------------------------------------
    def take(self, path: Path, st: os.stat_result) -> Taken:
        """Take the settled entry ``path`` (``st`` is its lstat when it settled); see the module."""
        marker = self._marker_of(path)
        if marker is not None and not os.path.lexists(marker):
            return Taken.WAIT  # settled, but the sender has not said it is complete
        truncated = None if marker is not None else self._truncated_verdict(path, st)
        if truncated == "wait":
            return Taken.RETRY
        result = self._claim(path, st, truncated)
        if result == Taken.TAKEN and marker is not None:
            try:
                os.unlink(marker)
            except OSError:
                pass
        return result

    def _claim(self, path: Path, st: os.stat_result, truncated: str | None) -> Taken:
        """Rename the entry into processing/ and record it QUEUED (failed at once if ``truncated``)."""
        name = readable(path.name)  # what the journal, the log and the sidecar call it
        stored = stored_name(name)
        dest = self.folders.processing / stored
        try:
            now = os.lstat(path)
            if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                return Taken.RETRY  # changed since it settled: settle again
            os.rename(path, dest)
        except FileNotFoundError:
            return Taken.TAKEN  # deleted before it was taken: nothing of ours to lose
        except OSError as e:
            log_event(name).error("cannot move it into {}: {} (will try again)", dest.parent, e.strerror)
            return Taken.RETRY
        fsync_dir(path.parent)
        fsync_dir(dest.parent)
        crashpoint("claimed")
        file_id = self.journal.add(original_name=name, stored_name=stored, size=st.st_size, mtime=st.st_mtime)
        if stat.S_ISREG(st.st_mode):
            log_event(name).info("taken: {} bytes -> processing/{}", st.st_size, stored)
        else:  # a link's or a FIFO's own size says nothing of a file: none is given
            log_event(name).info("taken ({}, not a regular file) -> processing/{}", file_kind(st.st_mode), stored)
        if truncated:
            reason = f"looks truncated ({truncated}) and did not change for {self.cfg.watch.truncated_after:g}s"
            log_event(name).error("{}: not posted", reason)
            outcome.fail(
                self.journal, file_id, "truncated", reason, expect=State.QUEUED, problems=[f"{name}: {reason}"], sha256=sha256_or_none(dest)
            )
        return Taken.TAKEN

    def _truncated_verdict(self, path: Path, st: os.stat_result) -> str | None:
        """None: looks whole, take it. "wait": looks cut short, leave it in the inbox.
        Any other text: still cut short after ``truncated_after``; take it to fail it."""
        limit = self.cfg.watch.truncated_after
        if limit <= 0:
            return None
        why = preflight.looks_truncated(path)
        key = path.name
        if why is None:
            self._truncated.pop(key, None)
            return None
        sig = (st.st_size, st.st_mtime_ns, st.st_ino)
        seen = self._truncated.get(key)
        if seen is None or seen[0] != sig:
            self._truncated[key] = (sig, time.monotonic())
            log_event(readable(key)).warning(
                "looks truncated ({}): waiting for it to change (sent to failed/ after {:g}s unchanged)", why, limit
            )
            return "wait"
        if time.monotonic() - seen[1] < limit:
            return "wait"
        self._truncated.pop(key, None)
        return why
