"""The time-driven side of the Canvas simulator: Canvas's import job, one batch at a time.

:class:`Runner` owns one background thread that moves the :class:`~.store.Store`'s batches
along (reference §5, §6): ``created`` batches start one at a time, oldest first, once
``start_delay`` has passed since their creation; a started batch turns ``importing`` at once
and is read (:func:`~.content.analyse`) while Canvas would fetch and unpack it: its
``csv_attachments`` (and ``data.supplied_batches``) appear only when that is done and
``attachments_delay`` has passed (reference §0 fact 7, §9), or it ends ``failed`` without
them ("failed_early"). The unpacking is part of the run: an import whose run time is shorter
than the delay lists its files when its run ends. Then its progress rises over the rest of
its run time, batch mode adds a ``cleanup_batch`` stage (progress from 0 again,
half the run time), and then it ends in the state its content (or an outcome rule) gives.
An errors attachment appears ``errors_attachment_delay`` seconds after a batch with messages
ended. Restore jobs (restore_states) run beside the queue. Timings are read from the
shared :class:`~.model.Timing` at every step.
"""

from __future__ import annotations

import csv
import threading
import time
import traceback
from typing import Any

from sisdropd.preflight.sisformat import COUNT_KEYS
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
        self._running: Batch | None = None  # the one batch importing or in cleanup_batch
        self._due: list[Batch] = []
        # What earlier batch-mode imports left in each term, for the next one's clean-up.
        self._memory: dict[str, dict[str, set[Any]]] = {}
        self._course_term: dict[str, str] = {}
        self._section_course: dict[str, str] = {}
        self._stopping = False
        self._worker: threading.Thread | None = None
        self._analysers: list[threading.Thread] = []

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
        for t in self._analysers:  # read after the worker ended: it may have started one
            t.join(timeout=30)

    # -- waiting ---------------------------------------------------------------------------------

    def settled(self) -> bool:
        """True when nothing is pending or running, no errors attachment is due and no
        restore job is unfinished.

        Batches that never move (stuck in ``initializing``, or matched by a "stuck"
        outcome) do not count as pending.
        """
        with self._cond:
            if self._running is not None or self._due or self._restoring():
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
                self._tick_restores(now)
                publish = [b for b in self._due if b.errors_due is not None and b.errors_due <= now]
                start = None
                if self._running is None:
                    start = self._pick(now)
                    if start is not None:
                        self._begin(start, now)
                        if start.forced is not None and start.forced.state == "failed_early":
                            start = None  # nothing to read: the job fails before reading it
                if not publish and start is None:
                    self._cond.wait(self._wait_time(now))
                    continue
            for b in publish:
                self._publish(b)
            if start is not None:
                t = threading.Thread(
                    target=self._analyse,
                    args=(start,),
                    name=f"fakecanvas-import-{start.id}",
                    daemon=True,
                )
                self._analysers = [a for a in self._analysers if a.is_alive()] + [t]
                t.start()

    def _wait_time(self, now: float) -> float:
        if self._running is not None or self._restoring():
            b = self._running
            if b is not None and b.unpacked and not b.held:  # a phase ends on time, not on the next tick
                return max(0.0, min(0.02, b.phase_start + b.phase_len - now))
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

    def _begin(self, b: Batch, now: float) -> None:
        """Canvas's job saves ``importing`` first; the attachments come after the unpacking."""
        b.workflow_state = "importing"
        b.started = time.time()
        b.progress = 0
        b.unpack_from = now
        b.touch()
        self._running = b
        self._cond.notify_all()

    def _analyse(self, b: Batch) -> None:
        """Read the upload (in its own thread); the worker attaches the result when due."""
        error: str | None = None
        result: Analysis | None = None
        try:
            result = analyse(
                b.upload,
                b.kind,
                b.stored_name,
                b.dir / "work",
                skip_deletes=bool(b.options["skip_deletes"]),
                stop=lambda: self._stopping or b.workflow_state not in RUNNING,
            )
        except Stopped:
            return
        except Exception:
            error = traceback.format_exc()
        with self._cond:
            b.analysis = result
            b.analysis_error = error
            b.analysed = True
            self._cond.notify_all()

    def _run_time(self, b: Batch) -> float:
        if b.run_seconds is not None:
            return b.run_seconds
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
        if b.workflow_state not in RUNNING:  # aborted, or a restore job took it over
            self._running = None
            self._cond.notify_all()
            return
        if not b.unpacked:
            self._unpack(b, now)
            return
        if now < b.phase_start + b.phase_len or b.held:
            elapsed = (now - b.phase_start) / b.phase_len if b.phase_len else 0.99
            progress = min(99, int(100 * elapsed))
            if progress != b.progress:
                b.progress = progress
                b.touch()
            return
        if b.workflow_state == "importing":
            final = self._final_state(b)
            if b.batch_mode and final in SUCCESS:
                b.batch_plan = self._batch_plan(b)
                b.pending_final = final
                b.workflow_state = "cleanup_batch"
                b.progress = 0
                self._enter_phase(b, now, self._run_time(b) / 2)
                self._cond.notify_all()
                return
            self._finish(b, final, now)
        elif b.batch_plan is not None and b.batch_plan["abort"]:
            # Canvas applied the rows, then stopped before deleting anything (§5 aborted).
            self._remember_rows(b)
            b.extra.append(Message("error", None, b.batch_plan["abort"]))
            b.batch_plan["deleted"] = dict.fromkeys(_BATCH_KINDS, 0)
            self._finish(b, "aborted", now)
        else:
            self._apply_batch(b)
            self._finish(b, b.pending_final or "imported", now)

    def _unpack(self, b: Batch, now: float) -> None:
        """The window after ``importing`` began: no attachments until the upload is read."""
        rule = b.forced
        delay = self.timing.attachments_delay  # read now: a test may shorten it meanwhile
        if rule is not None and rule.attachments_delay is not None:
            delay = rule.attachments_delay
        if rule is None or rule.state != "failed_early":
            # The unpacking is part of the import's run (§0 fact 7): an import that runs
            # shorter than the delay lists its files as it ends, never later.
            delay = min(delay, self._run_time(b))
        due = now >= b.unpack_from + delay
        if rule is not None and rule.state == "failed_early":
            if due:
                message = rule.error_message or "Simulated failure while fetching the upload"
                self._crash(b, message, f"{message}\n(simulated by set_outcome failed_early)")
            return
        if not b.analysed or not due:
            return
        if b.analysis is None:  # the simulator could not read it: Canvas's job raised
            self._crash(b, "Simulator error while reading the upload", b.analysis_error)
            return
        started = time.time()
        for name, path, size in b.analysis.attachments:
            b.csv_attachments.append(self.store.new_file(name, path, size, started))
        b.data["supplied_batches"] = list(b.analysis.supplied)
        b.data["running_immediately"] = b.analysis.inline
        b.data["downloadable_attachment_ids"] = [f.id for f in b.csv_attachments]
        b.unpacked = True
        self._enter_phase(b, now, self._run_time(b) - (now - b.unpack_from))
        self._cond.notify_all()

    def _final_state(self, b: Batch) -> str:
        rule = b.forced
        if rule is not None and rule.state is not None:
            return rule.state
        return b.analysis.state if b.analysis is not None else "imported"

    def _crash(self, b: Batch, message: str, trace: str | None) -> None:
        """End ``failed`` before anything was imported: data.error_message, no attachments,
        no counts, no processing_errors (the job raised; §0 fact 7)."""
        b.data["error_message"] = message
        b.data["stack_trace"] = trace
        b.workflow_state = "failed"
        b.ended = time.time()
        b.visible = frozenset()
        b.touch()
        self._running = None
        self._cond.notify_all()

    # -- batch mode --------------------------------------------------------------------------

    def _batch_plan(self, b: Batch) -> dict[str, Any]:
        """What batch-mode clean-up would delete, per term, and why it must abort (if so).

        Only the types this import supplies are cleaned up (§10): a batch-mode users.csv
        deletes nothing; an enrollments.csv alone drops the term's enrollments it does not
        list. Types are checked in Canvas's order (courses, sections, enrollments), each
        against ``change_threshold`` alone; the first one over it aborts the clean-up with
        Canvas's words (§5 ``aborted``).
        """
        a = b.analysis
        assert a is not None
        course_term = {**self._course_term, **a.courses}
        section_course = {**self._section_course, **a.sections}
        multi = bool(b.options["multi_term_batch_mode"])
        given = str(b.params.get("batch_mode_term_id", ""))
        terms = sorted(a.terms) if multi else [term_key(given)]
        threshold = b.options["change_threshold"]
        supplied = {f"{s}s" for s in a.supplied}
        current: dict[str, dict[str, set[Any]]] = {}
        deleted = dict.fromkeys(_BATCH_KINDS, 0)
        abort = None
        for term in terms:
            prev = self._memory.get(term, {})
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
            for kind in _BATCH_KINDS:
                before = prev.get(kind, set())
                if kind not in supplied:  # not supplied: nothing of this type is touched
                    cur[kind] = set(before)
                    continue
                gone = len(before - cur[kind])
                pct = 100.0 * gone / len(before) if before else 0.0
                if abort is None and threshold is not None and pct > threshold:
                    abort = (
                        f"{gone} {kind} would be deleted and exceeds the set threshold "
                        f"of {threshold}%"
                    )
                deleted[kind] += gone
            current[term] = cur
        return {"current": current, "deleted": deleted, "abort": abort}

    def _remember_rows(self, b: Batch) -> None:
        """The rows were applied but nothing deleted: each term now holds old and new."""
        plan, a = b.batch_plan, b.analysis
        if plan is None or a is None:
            return
        for term, cur in plan["current"].items():
            prev = self._memory.get(term, {})
            self._memory[term] = {k: prev.get(k, set()) | cur[k] for k in _BATCH_KINDS}
        self._course_term.update(a.courses)
        self._section_course.update(a.sections)

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
            rule = b.forced
            message = rule.error_message if rule is not None else None
            b.data["error_message"] = message or "Simulated failure (set_outcome)"
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

    # -- restore_states jobs --------------------------------------------------------------------

    def _restoring(self) -> bool:
        return any(p.workflow_state in ("queued", "running") for p in self.store.progresses())

    def _tick_restores(self, now: float) -> None:
        """Move restore jobs along: ``queued`` for the first fifth of restore_seconds, then
        ``running`` (the batch ``restoring``), then ``completed`` with the batch ``restored``,
        or ``partially_restored`` when any option narrowed it (§4, §5). Canvas runs these
        as ordinary jobs, outside the account's import queue."""
        length = self.timing.restore_seconds
        for p in self.store.progresses():
            if p.workflow_state not in ("queued", "running"):
                continue
            b = self.store.get(p.batch_id)
            assert b is not None
            elapsed = now - p.created_mono
            if p.workflow_state == "queued":
                if elapsed < length / 5:
                    continue
                p.workflow_state = "running"
                p.updated = time.time()
                b.workflow_state = "restoring"
                b.touch()
                self._cond.notify_all()
            if elapsed < length:
                completion = min(99.0, round(100.0 * elapsed / length, 1)) if length else 99.0
                if completion != p.completion:
                    p.completion = completion
                    p.updated = time.time()
                continue
            if p.fail:  # the job raised: Progress failed, the batch left ``restoring``
                p.workflow_state = "failed"
                p.message = "Simulated failure of the restore job"
            else:
                p.workflow_state = "completed"
                p.completion = 100.0
                partial = any(p.options.values())
                b.workflow_state = "partially_restored" if partial else "restored"
            p.updated = time.time()
            b.touch()
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
