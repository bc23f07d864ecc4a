"""The records of the Canvas simulator: its SIS batches, their files, and their JSON.

One :class:`Store` per simulator holds every batch (reference §3), the Canvas Files the
simulator serves (uploads' CSVs, errors attachments) and the test's outcome rules. It changes
a batch only where an API request does (create, queue, abort, abort_all_pending); the
time-driven moves (picking, analysing, phases, finishing) are :mod:`.runner`'s, made under
the same lock: :attr:`Store.cond`, a condition over a re-entrant lock, which every writer
notifies so the runner wakes. All public methods are thread-safe.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sisdropd.simulator.content import Message
from sisdropd.simulator.model import (
    ABORTABLE,
    OUTCOME_STATES,
    Batch,
    Outcome,
    SimFile,
    build_options,
    iso,
)


class Store:
    """Every batch and file of one simulated root account, kept under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cond = threading.Condition(threading.RLock())
        self._batches: dict[int, Batch] = {}
        self._files: dict[int, SimFile] = {}
        self._outcomes: list[Outcome] = []
        self._next_id = 1
        self._next_file_id = 1001

    # -- creating and changing batches -----------------------------------------------------

    def create(
        self,
        *,
        stored_name: str,
        upload: Path,
        size: int,
        kind: str,
        params: dict[str, str],
        user: dict[str, Any],
    ) -> Batch:
        """Save a new batch in ``initializing`` and move its upload into its folder."""
        with self.cond:
            bid = self._next_id
            self._next_id += 1
            bdir = self.root / "imports" / str(bid)
            bdir.mkdir(parents=True)
            dest = bdir / "upload"
            upload.replace(dest)
            now = time.time()
            b = Batch(
                id=bid,
                stored_name=stored_name,
                upload=dest,
                dir=bdir,
                size=size,
                kind=kind,
                params=dict(params),
                options=build_options(params),
                user=dict(user),
                created=now,
                created_mono=time.monotonic(),
                updated=now,
            )
            self._batches[bid] = b
            return b

    def queue(self, b: Batch) -> None:
        """Mark an initializing batch ``created``: it now waits for its turn."""
        with self.cond:
            b.workflow_state = "created"
            b.touch()
            self.cond.notify_all()

    def abort(self, bid: int) -> Batch | None:
        """Abort one unfinished batch at once; None if unknown or already finished."""
        with self.cond:
            b = self._batches.get(bid)
            if b is None or b.workflow_state not in ABORTABLE:
                return None
            b.workflow_state = "aborted"
            b.touch()
            self.cond.notify_all()
            return b

    def abort_all_pending(self) -> None:
        """Abort every ``initializing`` or ``created`` batch; running ones go on."""
        with self.cond:
            for b in self._batches.values():
                if b.workflow_state in ("initializing", "created"):
                    b.workflow_state = "aborted"
                    b.touch()
            self.cond.notify_all()

    def set_outcome(self, pattern: str, state: str, seconds: float | None = None) -> None:
        """Batches whose stored name matches ``pattern`` end in ``state`` (latest rule wins)."""
        if state not in OUTCOME_STATES:
            raise ValueError(f"unknown outcome state {state!r}")
        with self.cond:
            self._outcomes.append(Outcome(re.compile(pattern), state, seconds))
            self.cond.notify_all()

    def outcome_for(self, name: str) -> Outcome | None:
        """The latest outcome rule matching a stored name, or None."""
        with self.cond:
            for o in reversed(self._outcomes):
                if o.pattern.search(name):
                    return o
            return None

    def new_file(self, name: str, path: Path, size: int, created: float) -> SimFile:
        """Register a Canvas File served from ``path``."""
        with self.cond:
            f = SimFile(self._next_file_id, name, path, size, created)
            self._next_file_id += 1
            self._files[f.id] = f
            return f

    # -- reading -------------------------------------------------------------------------------

    def get(self, bid: int) -> Batch | None:
        with self.cond:
            return self._batches.get(bid)

    def file(self, fid: int) -> SimFile | None:
        with self.cond:
            return self._files.get(fid)

    def batches(self) -> list[Batch]:
        """Every batch, oldest first."""
        with self.cond:
            return sorted(self._batches.values(), key=lambda b: b.id)

    def select(
        self,
        *,
        since: float | None = None,
        before: float | None = None,
        states: set[str] | frozenset[str] | None = None,
    ) -> list[Batch]:
        """Batches newest first, filtered strictly by creation time and by state."""
        with self.cond:
            out = [
                b
                for b in self._batches.values()
                if (since is None or b.created > since)
                and (before is None or b.created < before)
                and (not states or b.workflow_state in states)
            ]
        out.sort(key=lambda b: (b.created, b.id), reverse=True)
        return out

    def records(self) -> list[dict[str, Any]]:
        """The simulator's own record of every batch, oldest first (see FakeCanvas.imports)."""
        out = []
        for b in self.batches():
            if b.sha256 is None:
                h = hashlib.sha256()
                with open(b.upload, "rb") as fh:
                    while block := fh.read(1 << 20):
                        h.update(block)
                b.sha256 = h.hexdigest()
            with self.cond:
                out.append(
                    {
                        "id": b.id,
                        "filename": b.stored_name,
                        "size": b.size,
                        "sha256": b.sha256,
                        "workflow_state": b.workflow_state,
                        "created_at": iso(b.created),
                        "params": dict(b.params),
                        "user_id": b.user_id,
                    }
                )
        return out

    def messages(self, b: Batch, *, failure_only: bool = False) -> Iterator[Message]:
        """The batch's error rows (SisBatchError), in the order found; none before it ends."""
        with self.cond:
            visible = b.visible
            extra = list(b.extra)
            spool = b.analysis.spool if b.analysis else None
        if not visible:
            return
        kinds = visible & {"error"} if failure_only else visible
        if spool is not None and spool.exists():
            with open(spool, encoding="utf-8", newline="") as fh:
                for kind, file, message, row, row_info in csv.reader(fh):
                    if kind in kinds:
                        yield Message(
                            kind, file or None, message, int(row) if row else None, row_info
                        )
        for m in extra:
            if m.kind in kinds:
                yield m

    def render(self, b: Batch, base: str) -> dict[str, Any]:
        """The SisImport JSON object (§3) of a batch; file URLs under ``base``."""
        with self.cond:
            d: dict[str, Any] = {
                "id": b.id,
                "created_at": iso(b.created),
                "started_at": iso(b.started),
                "ended_at": iso(b.ended),
                "updated_at": iso(b.updated),
                "progress": b.progress,
                "workflow_state": b.workflow_state,
                "data": copy.deepcopy(b.data),
                **b.options,
            }
            if b.processing_errors:
                d["processing_errors"] = copy.deepcopy(b.processing_errors)
            if b.processing_warnings:
                d["processing_warnings"] = copy.deepcopy(b.processing_warnings)
            if b.options["diffing_data_set_identifier"] and not b.batch_mode:
                d["diffing_threshold_exceeded"] = False
            if b.errors_attachment is not None:
                d["errors_attachment"] = b.errors_attachment.json(base)
            d["user"] = dict(b.user)
            if b.csv_attachments:
                d["csv_attachments"] = [f.json(base) for f in b.csv_attachments]
            return d

    def render_many(self, batches: list[Batch], base: str) -> list[dict[str, Any]]:
        """Render several batches as one consistent snapshot."""
        with self.cond:
            return [self.render(b, base) for b in batches]

    def remove_files(self) -> None:
        """Delete every stored upload and scratch file."""
        shutil.rmtree(self.root / "imports", ignore_errors=True)
