"""SIS batches of the Canvas simulator: their records, time-driven state machine and JSON.

One :class:`Store` per simulator holds every batch and runs one background worker that moves
them along (reference §5, §6): ``created`` batches start one at a time, oldest first, once
``start_delay`` has passed since their creation; a started batch is read
(:func:`~sisdropd.fakecanvas_content.analyse`), turns ``importing`` with its
``csv_attachments``, its progress rises over its run time, batch mode adds a
``cleanup_batch`` stage (progress from 0 again, half the run time), and then it ends in the
state its content (or a :meth:`Store.set_outcome` override) gives. An errors attachment
appears ``errors_attachment_delay`` seconds after a batch with messages ended.
All public methods are thread-safe.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import re
import shutil
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sisdropd.fakecanvas_content import (
    HEAD,
    Analysis,
    Message,
    Stopped,
    analyse,
    total_state_changes,
)
from sisdropd.fakecanvas_model import (
    ABORTABLE,
    OUTCOME_STATES,
    RUNNING,
    SUCCESS,
    Batch,
    Outcome,
    SimFile,
    build_options,
    iso,
    term_key,
)
from sisdropd.preflight.sisformat import COUNT_KEYS

# Which message kinds a finished batch shows, by final state.
_VISIBLE = {
    "imported": frozenset(),
    "imported_with_messages": frozenset({"warning"}),
    "failed_with_messages": frozenset({"error", "warning"}),
    "failed": frozenset({"error", "warning"}),
    "aborted": frozenset({"error", "warning"}),
}
_BATCH_KINDS = ("courses", "sections", "enrollments")


class Store:
    """Every batch of one simulated root account, and the worker that runs them."""

    def __init__(
        self,
        root: Path,
        *,
        import_seconds: float,
        start_delay: float,
        errors_attachment_delay: float,
        user: dict[str, Any],
    ) -> None:
        self.root = root
        self.import_seconds = import_seconds
        self.start_delay = start_delay
        self.errors_attachment_delay = errors_attachment_delay
        self.user = user
        self._cond = threading.Condition(threading.RLock())
        self._batches: dict[int, Batch] = {}
        self._files: dict[int, SimFile] = {}
        self._outcomes: list[Outcome] = []
        self._next_id = 1
        self._next_file_id = 1001
        self._running: Batch | None = None
        self._analysing: Batch | None = None
        self._due: list[Batch] = []
        self._memory: dict[str, dict[str, set[Any]]] = {}
        self._course_term: dict[str, str] = {}
        self._section_course: dict[str, str] = {}
        self._stopping = False
        self._worker: threading.Thread | None = None
        self._analyser: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background worker."""
        self._worker = threading.Thread(target=self._work, name="fakecanvas-worker", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """Stop the worker and any analysis in progress; join their threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=30)
        if self._analyser is not None:  # read after the worker ended: it may have started one
            self._analyser.join(timeout=30)

    # -- creating and changing batches -----------------------------------------------------

    def create(
        self,
        *,
        stored_name: str,
        upload: Path,
        size: int,
        kind: str,
        params: dict[str, str],
        user_id: int,
    ) -> Batch:
        """Save a new batch in ``initializing`` and move its upload into its folder."""
        with self._cond:
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
                user_id=user_id,
                created=now,
                created_mono=time.monotonic(),
                updated=now,
            )
            self._batches[bid] = b
            return b

    def queue(self, b: Batch) -> None:
        """Mark an initializing batch ``created``: it now waits for its turn."""
        with self._cond:
            b.workflow_state = "created"
            b.touch()
            self._cond.notify_all()

    def abort(self, bid: int) -> Batch | None:
        """Abort one unfinished batch at once; None if unknown or already finished."""
        with self._cond:
            b = self._batches.get(bid)
            if b is None or b.workflow_state not in ABORTABLE:
                return None
            b.workflow_state = "aborted"
            b.touch()
            if b is self._running:
                self._running = None
            self._cond.notify_all()
            return b

    def abort_all_pending(self) -> None:
        """Abort every ``initializing`` or ``created`` batch; running ones go on."""
        with self._cond:
            for b in self._batches.values():
                if b.workflow_state in ("initializing", "created"):
                    b.workflow_state = "aborted"
                    b.touch()
            self._cond.notify_all()

    def set_outcome(self, pattern: str, state: str, seconds: float | None = None) -> None:
        """Batches whose stored name matches ``pattern`` end in ``state`` (latest rule wins)."""
        if state not in OUTCOME_STATES:
            raise ValueError(f"unknown outcome state {state!r}")
        with self._cond:
            self._outcomes.append(Outcome(re.compile(pattern), state, seconds))
            self._cond.notify_all()

    def _outcome_for(self, name: str) -> Outcome | None:
        for o in reversed(self._outcomes):
            if o.pattern.search(name):
                return o
        return None

    # -- reading -------------------------------------------------------------------------------

    def get(self, bid: int) -> Batch | None:
        with self._cond:
            return self._batches.get(bid)

    def file(self, fid: int) -> SimFile | None:
        with self._cond:
            return self._files.get(fid)

    def select(
        self,
        *,
        since: float | None = None,
        before: float | None = None,
        states: set[str] | None = None,
    ) -> list[Batch]:
        """Batches newest first, filtered strictly by creation time and by state."""
        with self._cond:
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
        with self._cond:
            batches = sorted(self._batches.values(), key=lambda b: b.id)
        out = []
        for b in batches:
            if b.sha256 is None:
                h = hashlib.sha256()
                with open(b.upload, "rb") as fh:
                    while block := fh.read(1 << 20):
                        h.update(block)
                b.sha256 = h.hexdigest()
            with self._cond:
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
        with self._cond:
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

    def settled(self) -> bool:
        """True when nothing is pending or running and no errors attachment is due.

        Batches that never move (stuck in ``initializing``, or matched by a "stuck"
        outcome) do not count as pending.
        """
        with self._cond:
            if self._analysing is not None or self._running is not None or self._due:
                return False
            for b in self._batches.values():
                if b.workflow_state in RUNNING:
                    return False
                if b.workflow_state == "created":
                    o = self._outcome_for(b.stored_name)
                    if not (b.stuck or (o is not None and o.state == "stuck")):
                        return False
            return True

    def wait_settled(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for :meth:`settled`; return whether it is."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.settled():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    def render(self, b: Batch, base: str) -> dict[str, Any]:
        """The SisImport JSON object (§3) of a batch; file URLs under ``base``."""
        with self._cond:
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
            d["user"] = dict(self.user, id=b.user_id)
            if b.csv_attachments:
                d["csv_attachments"] = [f.json(base) for f in b.csv_attachments]
            return d

    def render_many(self, batches: list[Batch], base: str) -> list[dict[str, Any]]:
        """Render several batches as one consistent snapshot."""
        with self._cond:
            return [self.render(b, base) for b in batches]

    # -- the worker ----------------------------------------------------------------------------

    def _new_file(self, name: str, path: Path, size: int, created: float) -> SimFile:
        f = SimFile(self._next_file_id, name, path, size, created)
        self._next_file_id += 1
        self._files[f.id] = f
        return f

    def _work(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = time.monotonic()
                self._tick(now)
                publish = [b for b in self._due if b.errors_due is not None and b.errors_due <= now]
                start = None
                if self._running is None and self._analysing is None:
                    start = self._pick(now)
                    self._analysing = start
                if not publish and start is None:
                    self._cond.wait(self._wait_time(now))
                    continue
            for b in publish:
                self._publish(b)
            if start is not None:
                self._analyser = threading.Thread(
                    target=self._analyse,
                    args=(start,),
                    name=f"fakecanvas-import-{start.id}",
                    daemon=True,
                )
                self._analyser.start()

    def _wait_time(self, now: float) -> float:
        if self._running is not None or self._analysing is not None:
            return 0.02
        wait = 0.5
        for b in self._due:
            if b.errors_due is not None:
                wait = min(wait, b.errors_due - now)
        for b in self._batches.values():
            if b.workflow_state == "created" and not b.stuck:
                wait = min(wait, b.created_mono + self.start_delay - now)
        return max(0.005, wait)

    def _pick(self, now: float) -> Batch | None:
        waiting = sorted(
            (
                b
                for b in self._batches.values()
                if b.workflow_state == "created"
                and not b.stuck
                and b.created_mono + self.start_delay <= now
            ),
            key=lambda b: (b.created, b.id),
        )
        for b in waiting:
            b.forced = self._outcome_for(b.stored_name)
            if b.forced is not None and b.forced.state == "stuck":
                b.stuck = True
                continue
            return b
        return None

    def _analyse(self, b: Batch) -> None:
        error: str | None = None
        result: Analysis | None = None
        try:
            result = analyse(
                b.upload,
                b.kind,
                b.stored_name,
                b.dir / "work",
                skip_deletes=bool(b.options["skip_deletes"]),
                stop=lambda: self._stopping,
            )
        except Stopped:
            return
        except Exception:
            error = traceback.format_exc()
        with self._cond:
            self._analysing = None
            self._cond.notify_all()
            if self._stopping or b.workflow_state != "created":
                return
            now = time.monotonic()
            b.started = time.time()
            if result is None:  # the simulator's own crash: Canvas's "failed"
                b.data["error_message"] = "Simulator error while reading the upload"
                b.data["stack_trace"] = error
                b.workflow_state = "failed"
                b.ended = b.started
                b.touch()
                return
            b.analysis = result
            b.workflow_state = "importing"
            b.progress = 0
            for name, path, size in result.attachments:
                b.csv_attachments.append(self._new_file(name, path, size, b.started))
            b.data["supplied_batches"] = list(result.supplied)
            b.data["running_immediately"] = result.inline
            b.data["downloadable_attachment_ids"] = [f.id for f in b.csv_attachments]
            self._enter_phase(b, now, self._run_time(b))
            self._running = b

    def _run_time(self, b: Batch) -> float:
        if b.forced is not None and b.forced.seconds is not None:
            return b.forced.seconds
        return self.import_seconds

    def _enter_phase(self, b: Batch, now: float, length: float) -> None:
        b.phase_start = now
        b.phase_len = max(0.0, length)
        b.touch()

    def _tick(self, now: float) -> None:
        b = self._running
        if b is None:
            return
        if b.workflow_state not in RUNNING:
            self._running = None
            return
        if now < b.phase_start + b.phase_len:
            progress = min(99, int(100 * (now - b.phase_start) / b.phase_len))
            if progress != b.progress:
                b.progress = progress
                b.touch()
            return
        if b.workflow_state == "importing":
            final = b.forced.state if b.forced is not None else self._content_state(b)
            if b.batch_mode and final in SUCCESS:
                plan = self._batch_plan(b)
                if plan["abort"]:
                    b.extra.append(Message("error", None, plan["abort"]))
                    self._finish(b, "aborted", now)
                    return
                b.batch_plan = plan
                b.pending_final = final
                b.workflow_state = "cleanup_batch"
                b.progress = 0
                self._enter_phase(b, now, self._run_time(b) / 2)
                self._cond.notify_all()
                return
            self._finish(b, final, now)
        else:
            self._apply_batch(b)
            self._finish(b, b.pending_final or "imported", now)

    @staticmethod
    def _content_state(b: Batch) -> str:
        return b.analysis.state if b.analysis is not None else "imported"

    # -- batch mode --------------------------------------------------------------------------

    def _batch_plan(self, b: Batch) -> dict[str, Any]:
        """What batch-mode cleanup would delete, per term, and why it must abort (if so)."""
        a = b.analysis
        assert a is not None
        course_term = {**self._course_term, **a.courses}
        section_course = {**self._section_course, **a.sections}
        multi = bool(b.options["multi_term_batch_mode"])
        given = str(b.params.get("batch_mode_term_id", ""))
        terms = sorted(a.terms) if multi else [term_key(given)]
        threshold = b.options["change_threshold"]
        current: dict[str, dict[str, set[Any]]] = {}
        deleted = dict.fromkeys(_BATCH_KINDS, 0)
        abort = None
        for term in terms:
            cur: dict[str, set[Any]]
            if multi:

                def in_term(course: str, section: str, term: str = term) -> bool:
                    if course:
                        return course_term.get(course) == term
                    return course_term.get(section_course.get(section, "")) == term

                cur = {
                    "courses": {c for c, t in a.courses.items() if t == term},
                    "sections": {s for s, c in a.sections.items() if in_term(c, "")},
                    "enrollments": {k for k in a.enrollments if in_term(k[0], k[1])},
                }
            else:
                cur = {
                    "courses": set(a.courses),
                    "sections": set(a.sections),
                    "enrollments": set(a.enrollments),
                }
            current[term] = cur
            prev = self._memory.get(term, {})
            for kind in _BATCH_KINDS:
                before = prev.get(kind, set())
                gone = len(before - cur[kind])
                deleted[kind] += gone
                pct = 100.0 * gone / len(before) if before else 0.0
                if abort is None and threshold is not None and pct > threshold:
                    label = given if not multi else term
                    abort = (
                        f"Batch mode for term {label} would delete {gone} of {len(before)} "
                        f"{kind}, exceeding the change_threshold of {threshold}%"
                    )
        return {"current": current, "deleted": deleted, "abort": abort}

    def _apply_batch(self, b: Batch) -> None:
        plan = b.batch_plan
        a = b.analysis
        if plan is None or a is None:
            return
        for term, cur in plan["current"].items():
            self._memory[term] = cur
        self._course_term.update(a.courses)
        self._section_course.update(a.sections)
        deleted = plan["deleted"]
        stats = a.statistics
        drop = b.params.get("batch_mode_enrollment_drop_status") or "deleted"
        enroll_key = {"completed": "concluded", "inactive": "deactivated"}.get(drop, "deleted")
        for kind, cls, key in (
            ("courses", "Course", "deleted"),
            ("sections", "CourseSection", "deleted"),
            ("enrollments", "Enrollment", enroll_key),
        ):
            cls_stats = stats[cls]
            assert isinstance(cls_stats, dict)
            cls_stats[key] += deleted[kind]
        stats["total_state_changes"] = total_state_changes(stats)

    # -- finishing ---------------------------------------------------------------------------

    def _finish(self, b: Batch, state: str, now: float) -> None:
        b.workflow_state = state
        b.ended = time.time()
        if state in ("imported", "imported_with_messages", "failed_with_messages"):
            b.progress = 100
        a = b.analysis
        n_err = (a.n_errors if a else 0) + sum(m.kind == "error" for m in b.extra)
        n_warn = (a.n_warnings if a else 0) + sum(m.kind == "warning" for m in b.extra)
        if state == "imported_with_messages" and not n_warn:
            b.extra.append(Message("warning", b.stored_name, "Simulated warning (set_outcome)"))
            n_warn = 1
        if state == "failed_with_messages" and not n_err:
            b.extra.append(
                Message(
                    "error",
                    b.stored_name,
                    f"Error while importing CSV. Please contact support. (Error report {b.id})",
                )
            )
            n_err = 1
        if state == "failed":
            b.data["error_message"] = "Simulated failure (set_outcome)"
        visible = _VISIBLE[state]
        b.visible = visible
        n_err = n_err if "error" in visible else 0
        n_warn = n_warn if "warning" in visible else 0
        heads_e = (a.head_errors if a else []) + [m for m in b.extra if m.kind == "error"]
        heads_w = (a.head_warnings if a else []) + [m for m in b.extra if m.kind == "warning"]
        b.processing_errors = _head(heads_e, n_err, "errors")
        b.processing_warnings = _head(heads_w, n_warn, "warnings")
        counts: dict[str, int] = dict.fromkeys(COUNT_KEYS, 0)
        if a is not None:
            counts.update(a.counts)
        counts["error_count"] = n_err
        counts["warning_count"] = n_warn
        if b.batch_mode:
            deleted = (b.batch_plan or {}).get("deleted", {})
            for kind in _BATCH_KINDS:
                counts[f"batch_{kind}_deleted"] = deleted.get(kind, 0)
        b.data["counts"] = counts
        b.data["completed_importers"] = list(a.supplied) if a else []
        if a is not None:
            b.data["statistics"] = a.statistics
        if a is not None:  # the ids were only needed for batch mode; free them
            a.courses, a.sections, a.enrollments = {}, {}, {}
        b.batch_plan = None
        b.touch()
        if n_err + n_warn:
            b.errors_due = now + self.errors_attachment_delay
            self._due.append(b)
        if self._running is b:
            self._running = None
        self._cond.notify_all()

    def _publish(self, b: Batch) -> None:
        """Write the errors CSV of a finished batch and attach it (outside the lock)."""
        path = b.dir / f"sis_errors_attachment_{b.id}.csv"
        with open(path, "w", encoding="utf-8", newline="") as out:
            w = csv.writer(out)
            w.writerow(["sis_import_id", "file", "message", "row"])
            for m in self.messages(b):
                w.writerow([b.id, m.file or "", m.message, "" if m.row is None else m.row])
        with self._cond:
            b.errors_attachment = self._new_file(path.name, path, path.stat().st_size, time.time())
            b.errors_due = None
            if b in self._due:
                self._due.remove(b)
            self._cond.notify_all()

    def remove_files(self) -> None:
        """Delete every stored upload and scratch file."""
        shutil.rmtree(self.root / "imports", ignore_errors=True)


def _head(msgs: list[Message], total: int, word: str) -> list[list[Any]]:
    """Canvas's processing_errors/-warnings: 24 pairs, then a pair saying how many more."""
    if total == 0:
        return []
    out: list[list[Any]] = [[m.file, m.message] for m in msgs[:HEAD]]
    if total > HEAD:
        out.append(
            [
                f"and {total - HEAD} more {word} that were not included",
                f"Download the error file to see all {word}.",
            ]
        )
    return out
