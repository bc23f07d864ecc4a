"""The time-driven side of the Canvas simulator: Canvas's import job, one batch at a time.

:class:`Runner` owns one background thread that moves the :class:`~.store.Store`'s batches
along (reference §5, §6): ``created`` batches start one at a time, oldest first, once
``start_delay`` has passed since their creation; a started batch is read
(:func:`~.content.analyse`), turns ``importing`` with its ``csv_attachments``, its progress
rises over its run time, batch mode adds a ``cleanup_batch`` stage (progress from 0 again,
half the run time), and then it ends in the state its content (or an outcome rule) gives.
An errors attachment appears ``errors_attachment_delay`` seconds after a batch with messages
ended. Timings are read from the shared :class:`~.model.Timing` at every step.
"""

from __future__ import annotations

import csv
import threading
import time
import traceback
from typing import Any

from sisdropd.simulator.content import (
    HEAD,
    Analysis,
    Message,
    Stopped,
    analyse,
    total_state_changes,
)
from sisdropd.simulator.model import RUNNING, SUCCESS, Batch, Timing, term_key
from sisdropd.simulator.store import Store
from sisdropd.sisformat import COUNT_KEYS

# Which message kinds a finished batch shows, by final state.
_VISIBLE = {
    "imported": frozenset(),
    "imported_with_messages": frozenset({"warning"}),
    "failed_with_messages": frozenset({"error", "warning"}),
    "failed": frozenset({"error", "warning"}),
    "aborted": frozenset({"error", "warning"}),
}
_BATCH_KINDS = ("courses", "sections", "enrollments")


class Runner:
    """Runs the batches of ``store`` as Canvas's job would, with the durations of ``timing``."""

    def __init__(self, store: Store, timing: Timing) -> None:
        self.store = store
        self.timing = timing
        self._cond = store.cond
        self._running: Batch | None = None
        self._analysing: Batch | None = None
        self._due: list[Batch] = []
        # What earlier batch-mode imports left in each term, for the next one's clean-up.
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

    # -- waiting ---------------------------------------------------------------------------------

    def settled(self) -> bool:
        """True when nothing is pending or running and no errors attachment is due.

        Batches that never move (stuck in ``initializing``, or matched by a "stuck"
        outcome) do not count as pending.
        """
        with self._cond:
            if self._analysing is not None or self._running is not None or self._due:
                return False
            for b in self.store.batches():
                if b.workflow_state in RUNNING:
                    return False
                if b.workflow_state == "created":
                    o = self.store.outcome_for(b.stored_name)
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

    # -- the worker ----------------------------------------------------------------------------

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
        for b in self.store.batches():
            if b.workflow_state == "created" and not b.stuck:
                wait = min(wait, b.created_mono + self.timing.start_delay - now)
        return max(0.005, wait)

    def _pick(self, now: float) -> Batch | None:
        waiting = sorted(
            (
                b
                for b in self.store.batches()
                if b.workflow_state == "created"
                and not b.stuck
                and b.created_mono + self.timing.start_delay <= now
            ),
            key=lambda b: (b.created, b.id),
        )
        for b in waiting:
            b.forced = self.store.outcome_for(b.stored_name)
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
                b.csv_attachments.append(self.store.new_file(name, path, size, b.started))
            b.data["supplied_batches"] = list(result.supplied)
            b.data["running_immediately"] = result.inline
            b.data["downloadable_attachment_ids"] = [f.id for f in b.csv_attachments]
            self._enter_phase(b, now, self._run_time(b))
            self._running = b

    def _run_time(self, b: Batch) -> float:
        if b.forced is not None and b.forced.seconds is not None:
            return b.forced.seconds
        return self.timing.import_seconds

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
            b.errors_due = now + self.timing.errors_attachment_delay
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
            for m in self.store.messages(b):
                w.writerow([b.id, m.file or "", m.message, "" if m.row is None else m.row])
        with self._cond:
            b.errors_attachment = self.store.new_file(
                path.name, path, path.stat().st_size, time.time()
            )
            b.errors_due = None
            if b in self._due:
                self._due.remove(b)
            self._cond.notify_all()


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
