"""The records of the Canvas simulator: its SIS batches, their files, and their JSON.

One :class:`Store` per simulator holds every batch (reference §3), the Canvas Files the
simulator serves (uploads' CSVs, errors attachments) and the test's outcome rules. It changes
a batch only where an API request does (create, queue, abort, abort_all_pending, a
restore_states request, another client's post, a test releasing a held import); the
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
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sisdropd.simulator.content import Message
from sisdropd.simulator.model import (
    ABORTABLE,
    OUTCOME_STATES,
    Batch,
    Outcome,
    Progress,
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
        self._progress: dict[int, Progress] = {}
        self._next_id = 1
        self._next_file_id = 1001
        self._next_progress_id = 501
        self.restores_fail = False  # restore jobs started from now on end "failed"

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

    def set_outcome(
        self,
        pattern: str,
        state: str | None,
        seconds: float | None = None,
        *,
        attachments_delay: float | None = None,
        error_message: str | None = None,
    ) -> None:
        """Add an outcome rule (see :class:`~.model.Outcome`; the latest matching rule wins).

        ValueError for an unknown state, a bad regex or a negative time.
        """
        if state is not None and state not in OUTCOME_STATES:
            raise ValueError(f"unknown outcome state {state!r}")
        for value in (seconds, attachments_delay):
            if value is not None and not float(value) >= 0:
                raise ValueError("times must be numbers of seconds >= 0")
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"bad name pattern: {exc}") from exc
        rule = Outcome(rx, state, seconds, attachments_delay, error_message)
        with self.cond:
            self._outcomes.append(rule)
            self.cond.notify_all()

    def foreign_import(
        self,
        *,
        user: dict[str, Any],
        name: str,
        content: bytes,
        seconds: float | None,
    ) -> Batch:
        """Another client's POST of ``content`` as ``name`` by ``user``, queued like any other.

        Once started it runs ``seconds`` (None: until :meth:`release`), so it can hold the
        account's one-at-a-time queue while our imports stay ``created``.
        """
        incoming = self.root / "incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        part = incoming / f"foreign-{uuid.uuid4().hex}.part"
        part.write_bytes(content)
        suffix = Path(name).suffix.lower()
        with self.cond:
            b = self.create(
                stored_name=name,
                upload=part,
                size=len(content),
                kind={".csv": "csv", ".zip": "zip"}.get(suffix, "none"),
                params={},
                user=user,
            )
            b.run_seconds = seconds
            b.held = seconds is None
            self.queue(b)
            return b

    def release(self, bid: int | None = None) -> list[int]:
        """Let held imports (all, or the one ``bid``) finish; returns the ids released."""
        with self.cond:
            out = []
            for b in self._batches.values():
                if b.held and (bid is None or b.id == bid):
                    b.held = False
                    out.append(b.id)
            self.cond.notify_all()
            return out

    def restore(self, bid: int, options: dict[str, bool]) -> Progress | None:
        """Queue a restore_states job for batch ``bid``; its Progress, or None if unknown."""
        with self.cond:
            b = self._batches.get(bid)
            if b is None:
                return None
            now = time.time()
            p = Progress(
                id=self._next_progress_id,
                batch_id=bid,
                created=now,
                created_mono=time.monotonic(),
                options=dict(options),
                prior_state=b.workflow_state,
                fail=self.restores_fail,
            )
            self._next_progress_id += 1
            self._progress[p.id] = p
            self.cond.notify_all()
            return p

    def progress(self, pid: int) -> Progress | None:
        with self.cond:
            return self._progress.get(pid)

    def progresses(self) -> list[Progress]:
        """Every Progress, oldest first."""
        with self.cond:
            return sorted(self._progress.values(), key=lambda p: p.id)

    def render_progress(self, p: Progress, base: str) -> dict[str, Any]:
        with self.cond:
            return p.json(base)

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
