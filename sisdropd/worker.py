"""The worker: one thread that takes each file through its life, one import at a time.

``Worker.claim`` is called by the watcher for a settled inbox entry: it renames the entry
into processing/ and records it QUEUED. ``Worker.run`` then repeatedly picks the journal's
next file (an import already under way first, else the oldest mtime) and performs the
one step its state calls for:

    QUEUED     pre-flight check; rejected -> FINISHING(failed); else record the post -> POSTING, post
    POSTING    (answer lost, or a restart) look in Canvas's list: found -> RUNNING;
               provably absent -> QUEUED (post again); pending look-alike -> ask again later
    RUNNING    follow the import to its final state, or max_wait -> FINISHING
    FINISHING  errors file, sidecar, then the move into done/ or failed/ -> DONE / FAILED

Every step is journaled before its effect, so a SIGKILL at any instant resumes at the
right step: the record says what may already have happened, never less.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

from loguru import logger

from sisdropd import __version__, guard, importer, preflight
from sisdropd.canvas import (
    Backoff,
    CanvasClient,
    CanvasError,
    Forbidden,
    NotFound,
    RateLimited,
    Refused,
    Retryable,
    Stopped,
    TokenRejected,
)
from sisdropd.config import Config, TokenError, read_token
from sisdropd.crashpoint import crashpoint
from sisdropd.files import fsync_dir, move, sha256_of, sha256_or_none, write_atomic
from sisdropd.folders import Folders, original_name, stored_name
from sisdropd.journal import FileRecord, Journal, utcnow
from sisdropd.lifecycle import ACTIVE, State
from sisdropd.logs import add_secret
from sisdropd.logs import event as log_event
from sisdropd.notify import Notifier

SIDECAR_KEYS_VERSION = 1


class Worker(threading.Thread):
    """Imports taken files one at a time. ``stop`` ends it at the next checkpoint."""

    def __init__(
        self, cfg: Config, journal: Journal, client: CanvasClient, stop: threading.Event,
        notifier: Notifier | None = None,
    ) -> None:
        super().__init__(name="worker", daemon=True)
        self.cfg = cfg
        self.journal = journal
        self.client = client
        self.stop = stop
        self.wake = threading.Event()
        self.folders = Folders.of(cfg)
        self.auth_backoff = Backoff(cfg.canvas.retry_initial, cfg.canvas.retry_max)
        self.error_backoff = Backoff(cfg.canvas.retry_initial, cfg.canvas.retry_max)
        self.notifier = notifier
        self._truncated: dict[str, tuple[tuple[int, int, int], float]] = {}  # name -> (signature, since)
        self.current: FileRecord | None = None
        # How long a post that got no answer may still be turning into an import at Canvas.
        self.post_grace = 2 * cfg.canvas.timeout
        self._absent_since: dict[int, float] = {}
        self.last_step = time.monotonic()

    # -- intake (called from the watcher's thread) ------------------------------------
    def claim(self, path: Path, st: os.stat_result) -> bool:
        """Take a settled inbox entry: rename it into processing/ and record it QUEUED.

        Returns True when the entry is dealt with (taken, or gone), False to try later.
        """
        name = path.name
        stored = stored_name(name)
        dest = self.folders.processing / stored
        truncated = self._truncated_verdict(path, st)
        if truncated == "wait":
            return False
        try:
            now = os.lstat(path)
            if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                return False  # changed since it settled: settle again
            os.rename(path, dest)
        except FileNotFoundError:
            return True  # deleted before it was taken: nothing of ours to lose
        except OSError as e:
            log_event(name).error("cannot move it into {}: {} (will try again)", dest.parent, e.strerror)
            return False
        fsync_dir(path.parent)
        fsync_dir(dest.parent)
        crashpoint("claimed")
        file_id = self.journal.add(original_name=name, stored_name=stored, size=st.st_size, mtime=st.st_mtime)
        kind = "" if stat.S_ISREG(st.st_mode) else " (not a regular file)"
        log_event(name).info("taken{}: {} bytes -> processing/{}", kind, st.st_size, stored)
        if truncated:
            reason = f"looks truncated ({truncated}) and did not change for {self.cfg.watch.truncated_after:g}s"
            log_event(name).error("{}: not posted", reason)
            self._fail(file_id, "truncated", reason, problems=[f"{name}: {reason}"], sha256=sha256_or_none(dest))
        return True  # the watcher wakes the worker once per batch (on_taken)

    def _truncated_verdict(self, path: Path, st: os.stat_result) -> str | None:
        """None: looks whole, take it. "wait": looks cut short, leave it in the inbox.
        Any other text: still cut short after ``truncated_after``; take it to fail it."""
        limit = self.cfg.watch.truncated_after
        marker = self.cfg.watch.marker
        if limit <= 0 or (marker and os.path.lexists(path.with_name(path.name + marker))):
            return None  # off, or the sender's marker says the file is complete
        why = preflight.looks_truncated(path)
        key = path.name
        if why is None:
            self._truncated.pop(key, None)
            return None
        sig = (st.st_size, st.st_mtime_ns, st.st_ino)
        seen = self._truncated.get(key)
        if seen is None or seen[0] != sig:
            self._truncated[key] = (sig, time.monotonic())
            log_event(key).warning(
                "looks truncated ({}): waiting for it to change (sent to failed/ after {:g}s unchanged)", why, limit
            )
            return "wait"
        if time.monotonic() - seen[1] < limit:
            return "wait"
        self._truncated.pop(key, None)
        return why

    # -- start-up ------------------------------------------------------------------------
    def recover(self) -> None:
        """Reconcile processing/ with the journal after a stop or a crash."""
        records = self.journal.open_records()
        known = {r.stored_name for r in records}
        proc = self.folders.processing
        for rec in self.journal.in_states({State.HELD}):
            if os.path.lexists(proc / rec.stored_name) and not os.path.lexists(self.folders.held / rec.stored_name):
                self._park_held(rec)  # the hold was journaled, the move not yet done
                known.add(rec.stored_name)
        for entry in sorted(os.scandir(proc), key=lambda e: e.name):
            if entry.name.startswith(".") or entry.name in known:
                continue
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                continue
            back = self.journal.find_by_name(entry.name, {State.HELD, State.FAILED})
            if back:  # a release or retry moved the file back, then stopped before journaling
                accepted = 1 if back[0].state == State.HELD else back[0].guard_accepted
                self.journal.transition(back[0].id, State.QUEUED, "requeued (completed after restart)", guard_accepted=accepted, next_attempt=0)
                continue
            self.journal.add(original_name=original_name(entry.name), stored_name=entry.name, size=st.st_size, mtime=st.st_mtime)
            log_event(original_name(entry.name)).warning("found in processing/ with no record: taken again")
        for rec in self.journal.open_records():
            if os.path.lexists(proc / rec.stored_name):
                continue
            log = log_event(rec.original_name, rec.import_id)
            if rec.state == State.FINISHING and rec.outcome:
                dest = getattr(self.folders, rec.outcome) / rec.stored_name
                if os.path.lexists(dest):
                    self.journal.transition(rec.id, State(rec.outcome), "move completed after restart")
                    log.info("finished before the restart: {}/{}", rec.outcome, rec.stored_name)
                    continue
            self.journal.transition(rec.id, State.LOST, "file vanished from processing/")
            log.error("the file vanished from processing/ while {}; its record is closed", rec.state)
        open_now = self.journal.open_records()
        if open_now:
            running = [r for r in open_now if r.state in ACTIVE]
            logger.info(
                "resuming: {} file(s) queued{}",
                len(open_now) - len(running),
                "".join(f", {r.original_name} #{r.import_id or '?'} {r.state}" for r in running),
            )

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        while not self.stop.is_set():
            self.last_step = time.monotonic()
            rec = self.journal.next_queued()
            if rec is None:
                self.current = None
                self._sleep(None)
                continue
            self.current = rec
            delay = rec.next_attempt - time.time()
            if delay > 0:
                self._sleep(delay)
                continue
            try:
                self.step(rec)
                self.error_backoff.reset()
            except Stopped:
                break
            except Exception as e:  # noqa: BLE001 - a bug must not stop the daemon
                delay = self.error_backoff.next()
                logger.opt(exception=e).bind(file=rec.original_name, import_id=rec.import_id).error(
                    "unexpected error in state {} (retrying in {:.0f}s): {}", rec.state, delay, e
                )
                self.journal.update(rec.id, next_attempt=time.time() + delay, last_error=str(e)[:500])
        self.current = None

    def _sleep(self, seconds: float | None) -> None:
        # Wake at least every 5 s so a systemd watchdog can see this thread is alive.
        self.wake.wait(5.0 if seconds is None else min(seconds, 5.0))
        self.wake.clear()

    def step(self, rec: FileRecord) -> None:
        """Do the one thing ``rec``'s state calls for (see the module's docstring)."""
        {
            State.QUEUED: self._prepare_and_post,
            State.POSTING: self._resolve_post,
            State.RUNNING: self._follow,
            State.FINISHING: self._finish,
        }[rec.state](rec)

    def _log(self, rec: FileRecord) -> Any:
        return log_event(rec.original_name, rec.import_id)

    def _path(self, rec: FileRecord) -> Path:
        return self.folders.processing / rec.stored_name

    # QUEUED -----------------------------------------------------------------------------
    def _prepare_and_post(self, rec: FileRecord) -> None:
        path, log = self._path(rec), self._log(rec)
        if not os.path.lexists(path):
            self.journal.transition(rec.id, State.LOST, "vanished before it was posted")
            log.error("the file vanished from processing/ before it was posted; record closed")
            return
        w = self.cfg.watch
        params = self.cfg.params_for(rec.original_name)
        report = preflight.check_path(
            path,
            name=rec.original_name,
            import_type=str(params.get("import_type", "instructure_csv")),
            extensions=w.extensions,
            limits=preflight.Limits(max_bytes=w.max_bytes),
            validate_content=w.validate,
        )
        for warn in report.warnings[:5]:
            log.warning("pre-flight: {}", warn)
        if not report.ok:
            problems = [str(p) for p in report.problems]
            reason = "rejected by the pre-flight check: " + (report.problems[0].message if report.problems else "?")
            for p in problems[:5]:
                log.warning("rejected: {}", p)
            self._fail(rec.id, "rejected", reason, problems=problems, sha256=sha256_or_none(path), size=report.size)
            return
        if guard.applies(self.cfg.guard, params) and not rec.guard_accepted:
            key = guard.dataset_key(self.cfg.guard, rec.original_name, params)
            verdict = guard.judge(self.cfg.guard, key, self.journal.dataset_counts(key), report.counts)
            if verdict.hold:
                self._hold(rec, verdict, report.counts)
                return
        user_id = self._our_user_id(rec)
        if user_id is None:
            return
        members = [[m.basename, m.size] for m in report.members] if report.kind == "zip" else None
        upload = importer.upload_name(rec.original_name)
        rec = self.journal.transition(
            rec.id, State.POSTING, "posting", upload_name=upload, members=members,
            counts=report.counts, sha256=report.sha256 or sha256_of(path), size=report.size,
            post_started=time.time(), attempts=rec.attempts + 1,
        )
        crashpoint("before_post")
        self._post(rec)

    def _hold(self, rec: FileRecord, verdict: guard.Verdict, counts: dict[str, int]) -> None:
        """QUEUED -> HELD: the file waits in held/ for an operator (release or discard)."""
        reason = f"held by the change guard: {verdict.why}"
        info = {"dataset": verdict.dataset, "why": verdict.why, "counts": verdict.table()}
        rec = self.journal.transition(
            rec.id, State.HELD, "change guard", outcome_reason=reason, guard=info, counts=counts,
            sha256=sha256_or_none(self._path(rec)),
        )
        self._park_held(rec)
        log = self._log(rec)
        log.warning("{}; it waits in held/ (sisdropd release {} / discard {})", reason, rec.original_name, rec.original_name)
        for row in verdict.table():
            log.warning(
                "  {}: last import {} rows, this file {} rows ({}%)", row["type"], row["last_import"], row["this_file"],
                "n/a" if row["change_percent"] is None else f"{row['change_percent']:+g}",
            )
        if self.notifier is not None:
            self.notifier.send(
                "held",
                {"file": rec.original_name, "import_id": None, "state": None, "reason": reason,
                 "sidecar": str(self.folders.held / f"{rec.stored_name}.json"), "counts": info["counts"]},
            )

    def _park_held(self, rec: FileRecord) -> None:
        """Sidecar, then the move into held/ (idempotent: start-up finishes a half-done one)."""
        held = self.folders.held
        held.mkdir(parents=True, exist_ok=True)
        write_atomic(held / f"{rec.stored_name}.json", self.sidecar(rec, None))
        move(self._path(rec), held / rec.stored_name)

    def _our_user_id(self, rec: FileRecord) -> int | None:
        """The token's Canvas user id (cached), used to recognise our imports after a crash."""
        key = f"user_id {self.cfg.canvas.base_url} {self.cfg.canvas.account_id}"
        cached = self.journal.meta(key)
        if cached:
            return int(cached)
        try:
            me = self.client.whoami(log=self._log(rec))
        except CanvasError as e:
            self._canvas_trouble(rec, e)
            return None
        self.journal.set_meta(key, str(me["id"]))
        return int(me["id"])

    def _post(self, rec: FileRecord) -> None:
        log = self._log(rec)
        params = self.cfg.params_for(rec.original_name)
        log.info("posting {} bytes as {} ({})", rec.size, rec.upload_name, _describe_params(params))
        started = time.monotonic()
        try:
            imp = self.client.create_import(self._path(rec), upload_name=rec.upload_name or "", params=params)
        except Refused as e:
            reason = f"Canvas refused the import: {e.message}"
            log.error("{}", reason)
            self._fail(rec.id, "refused", reason)
            return
        except (TokenRejected, Forbidden, NotFound) as e:
            # Canvas answered before creating anything: the post provably did not happen.
            self.journal.transition(rec.id, State.QUEUED, f"not posted: {e.cause}")
            self._canvas_trouble(self.journal.get(rec.id), e)
            return
        except RateLimited as e:
            # Canvas throttles in its middleware, before the controller saves anything.
            delay = e.retry_after if e.retry_after is not None else self.error_backoff.next()
            self.client.retries[e.cause] += 1
            log.warning("post throttled by Canvas ({}): not posted, posting again in {:.1f}s", e.message, delay)
            self.journal.transition(rec.id, State.QUEUED, "not posted: rate limited", next_attempt=time.time() + delay, last_error=e.message[:500])
            return
        except (Retryable, OSError) as e:
            delay = min(self.cfg.canvas.retry_max, self.cfg.canvas.retry_initial)
            log.warning("post failed ({}); Canvas may have the import: checking its list before posting again", getattr(e, "message", e))
            self.client.retries[getattr(e, "cause", "network")] += 1
            self.journal.update(rec.id, next_attempt=time.time() + delay * 0.2, last_error=str(e)[:500])
            return
        crashpoint("posted")
        import_id = int(imp["id"])
        rec = self.journal.transition(
            rec.id, State.RUNNING, "posted", import_id=import_id,
            workflow_state=imp.get("workflow_state"), progress=imp.get("progress"), posted_at=utcnow(),
        )
        mbps = (rec.size or 0) / max(1e-6, time.monotonic() - started) / 1e6
        self._log(rec).info("posted: import {} ({}), {:.1f} MB/s", import_id, imp.get("workflow_state"), mbps)
        self.auth_backoff.reset()
        crashpoint("running")

    # POSTING ----------------------------------------------------------------------------
    def _resolve_post(self, rec: FileRecord) -> None:
        log = self._log(rec)
        try:
            verdict, imp = importer.find_posted(
                self.client,
                upload=rec.upload_name or "",
                members=rec.members,
                post_started=rec.post_started or time.time(),
                our_user_id=self._our_user_id(rec),
                exclude=self.journal.known_import_ids(),
                log=log,
            )
        except CanvasError as e:
            self._canvas_trouble(rec, e)
            return
        if verdict == "found" and imp is not None:
            rec = self.journal.transition(
                rec.id, State.RUNNING, "found in Canvas's list", import_id=int(imp["id"]),
                workflow_state=imp.get("workflow_state"), progress=imp.get("progress"), posted_at=imp.get("created_at") or utcnow(),
            )
            self._log(rec).info("the earlier post reached Canvas as import {}: following it, not posting again", imp["id"])
        elif verdict == "unsure":
            log.info("Canvas has a pending import that may be this post; asking again in {:.0f}s", self.cfg.watch.poll_interval)
            self.journal.update(rec.id, next_attempt=time.time() + self.cfg.watch.poll_interval)
        elif time.time() < self._absent_since.setdefault(rec.id, time.time()) + self.post_grace:
            # A request Canvas is still working on (the client gave up, the server did not)
            # shows up only when it finishes: "absent" counts once it holds a while later.
            recheck = self._absent_since[rec.id] + self.post_grace
            log.info("Canvas shows no import of the earlier post yet; looking again in {:.0f}s before posting again", recheck - time.time())
            self.journal.update(rec.id, next_attempt=recheck)
        else:
            self._absent_since.pop(rec.id, None)
            delay = Backoff(self.cfg.canvas.retry_initial, self.cfg.canvas.retry_max, attempt=max(0, rec.attempts - 1)).next()
            log.info("Canvas has no import of the earlier post: posting again in {:.0f}s", delay)
            self.journal.transition(rec.id, State.QUEUED, "not in Canvas: post again", next_attempt=time.time() + delay)

    # RUNNING ----------------------------------------------------------------------------
    def _follow(self, rec: FileRecord) -> None:
        log = self._log(rec)
        assert rec.import_id is not None
        deadline = (rec.post_started or time.time()) + self.cfg.watch.max_wait

        def progress(imp: dict[str, Any]) -> None:
            self.journal.update(rec.id, workflow_state=imp.get("workflow_state"), progress=imp.get("progress"))

        try:
            imp, final = importer.follow(
                self.client, rec.import_id, deadline=deadline, poll_interval=self.cfg.watch.poll_interval,
                log=log, on_update=progress,
            )
            if not final:
                self._timeout(rec, imp)
                return
        except NotFound as e:
            reason = f"Canvas no longer knows import {rec.import_id} ({e.message})"
            log.error("{}", reason)
            self._fail(rec.id, "import gone", reason)
            return
        except (Retryable, TokenRejected, Forbidden) as e:
            if isinstance(e, Retryable) and time.time() >= deadline:
                self._timeout(rec, None)
                return
            self._canvas_trouble(rec, e)
            return
        assert imp is not None
        self._decide(rec, imp)

    def _decide(self, rec: FileRecord, imp: dict[str, Any], extra: str = "") -> None:
        state = str(imp.get("workflow_state"))
        dest, reason = importer.verdict(imp)
        self.journal.transition(
            rec.id, State.FINISHING, state, outcome=str(dest), outcome_reason=reason + extra,
            sis_import=imp, workflow_state=state, progress=imp.get("progress"), finished_at=utcnow(),
        )
        importer.canvas_messages(imp, self._log(rec))
        crashpoint("decided")

    def _timeout(self, rec: FileRecord, imp: dict[str, Any] | None) -> None:
        log = self._log(rec)
        assert rec.import_id is not None
        state = (imp or {}).get("workflow_state") or rec.workflow_state
        reason = f"timeout: import {rec.import_id} still {state} after max_wait ({self.cfg.watch.max_wait:g}s)"
        if self.cfg.watch.abort_on_timeout:
            try:
                imp = self.client.abort(rec.import_id, log=log)
                reason += "; aborted in Canvas"
            except NotFound:
                imp = self.client.get_import(rec.import_id, log=log)  # it finished meanwhile
                if importer.is_final(imp.get("workflow_state")):
                    self._decide(rec, imp)
                    return
            except CanvasError as e:
                reason += f"; abort failed: {e.message}"
        log.error("{}", reason)
        self._fail(rec.id, "timeout", reason, sis_import=imp, workflow_state=(imp or {}).get("workflow_state"))

    def _fail(self, file_id: int, note: str, reason: str, **fields: Any) -> None:
        """-> FINISHING on the way to failed/, with ``reason`` for the sidecar (the caller logs)."""
        self.journal.transition(
            file_id, State.FINISHING, note, outcome="failed", outcome_reason=reason, finished_at=utcnow(), **fields
        )

    # FINISHING --------------------------------------------------------------------------
    def _finish(self, rec: FileRecord) -> None:
        log = self._log(rec)
        dest_state = State(rec.outcome or "failed")
        dest_dir = getattr(self.folders, str(dest_state))
        src, dst = self._path(rec), dest_dir / rec.stored_name
        if not os.path.lexists(src) and os.path.lexists(self.folders.held / rec.stored_name):
            src = self.folders.held / rec.stored_name  # discarded while held
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
            errors_file = rec.errors_file or self._save_errors_file(rec, dest_dir)
            write_atomic(dest_dir / f"{rec.stored_name}.json", self.sidecar(rec, errors_file))
            crashpoint("sidecar")
            move(src, dst)
            crashpoint("moved")
        except FileNotFoundError:
            if not os.path.lexists(dst):
                self.journal.transition(rec.id, State.LOST, "vanished while finishing")
                log.error("the file vanished from processing/ before it could be moved; record closed")
                return
        except OSError as e:
            delay = self.error_backoff.next()
            log.error("cannot move the file into {}/ ({}): it stays in processing/, retrying in {:.0f}s", dest_state, e.strerror or e, delay)
            self.journal.update(rec.id, next_attempt=time.time() + delay, last_error=str(e)[:500])
            return
        rec = self.journal.transition(rec.id, dest_state, "moved", errors_file=errors_file)
        if dest_state == State.DONE and rec.counts:
            params = self.cfg.params_for(rec.original_name)
            self.journal.set_dataset_counts(guard.dataset_key(self.cfg.guard, rec.original_name, params), rec.counts, rec.id)
        took = ""
        if rec.post_started and rec.sis_import:
            took = f" in {time.time() - rec.post_started:.1f}s"
        summary = importer.counts_summary(rec.sis_import) if rec.sis_import else ""
        line = f"{rec.workflow_state or 'not imported'}{took}: {rec.outcome_reason}"
        line += f" ({summary})" if summary else ""
        line += f" -> {dest_state}/{rec.stored_name}"
        if dest_state == State.DONE:
            log.success("{}", line)
        else:
            log.error("{}", line)
        self._notify_outcome(rec, dest_state, dest_dir)

    def _notify_outcome(self, rec: FileRecord, dest_state: State, dest_dir: Path) -> None:
        if self.notifier is None:
            return
        counts = ((rec.sis_import or {}).get("data") or {}).get("counts") or {}
        payload = {
            "file": rec.original_name,
            "import_id": rec.import_id,
            "state": rec.workflow_state,
            "reason": rec.outcome_reason,
            "sidecar": str(dest_dir / f"{rec.stored_name}.json"),
            "path": str(dest_dir / rec.stored_name),
            "counts": counts,
        }
        if dest_state == State.FAILED:
            self.notifier.send("failed", payload)
            return
        self.notifier.send("done", payload)
        if counts.get("warning_count") or counts.get("error_count") or rec.workflow_state == "imported_with_messages":
            self.notifier.send("warnings", {**payload, "warnings": ((rec.sis_import or {}).get("processing_warnings") or [])[:25]})

    def _save_errors_file(self, rec: FileRecord, dest_dir: Path) -> str | None:
        att = (rec.sis_import or {}).get("errors_attachment") or {}
        url = att.get("url")
        if not url:
            return None
        name = f"{rec.stored_name}.errors.csv"
        try:
            self.client.download(url, dest_dir / name)
        except CanvasError as e:
            self._log(rec).warning("could not save Canvas's errors file: {}", e.message)
            return None
        except OSError as e:  # never let the errors file keep the import's own file waiting
            self._log(rec).warning("could not save Canvas's errors file: {}", e.strerror or e)
            return None
        self.journal.update(rec.id, errors_file=name)
        return name

    def sidecar(self, rec: FileRecord, errors_file: str | None) -> bytes:
        """The ``<name>.json`` written beside a finished file (the contract's point 6)."""
        doc = {
            "original_name": rec.original_name,
            "stored_name": rec.stored_name,
            "size": rec.size,
            "sha256": rec.sha256,
            "import_id": rec.import_id,
            "workflow_state": rec.workflow_state,
            "outcome": rec.outcome,
            "reason": rec.outcome_reason,
            "problems": rec.problems or [],
            "taken_at": rec.taken_at,
            "posted_at": rec.posted_at,
            "finished_at": rec.finished_at or utcnow(),
            "upload_name": rec.upload_name,
            "import_params": self.cfg.params_for(rec.original_name),
            "guard": rec.guard,
            "local_counts": rec.counts,
            "canvas_counts": ((rec.sis_import or {}).get("data") or {}).get("counts"),
            "errors_file": errors_file,
            "canvas_url": self.cfg.canvas.base_url,
            "sisdropd_version": __version__,
            "sis_import": rec.sis_import,
        }
        return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    # trouble ----------------------------------------------------------------------------
    def _canvas_trouble(self, rec: FileRecord, e: CanvasError) -> None:
        """A problem on Canvas's side or with our credentials: keep the file, wait, try again."""
        log = self._log(rec)
        if isinstance(e, TokenRejected):
            delay = self.auth_backoff.next()
            log.error("Canvas rejected the token ({}); the file stays queued, trying again in {:.0f}s", e.message, delay)
            self._reload_token(log)
        elif isinstance(e, Forbidden | NotFound):
            delay = self.auth_backoff.next()
            log.error("Canvas refused access ({}); check canvas.account_id and that SIS imports are enabled; trying again in {:.0f}s", e.message, delay)
        else:
            delay = self.error_backoff.next()
            log.warning("Canvas trouble ({}); trying again in {:.0f}s", e.message, delay)
        self.client.retries[e.cause] += 1
        self.journal.update(rec.id, next_attempt=time.time() + delay, last_error=e.message[:500])

    def _reload_token(self, log: Any) -> None:
        """The operator may have put a new token in place: read it again from its source."""
        try:
            token, _ = read_token(self.cfg)
        except TokenError as e:
            log.error("cannot read the token again: {}", e)
            return
        add_secret(token)
        self.client.set_token(token)

    def in_flight(self) -> FileRecord | None:
        """The record the worker is on, as the journal has it now (fresh, not the loop's copy)."""
        rec = self.current
        if rec is None:
            return None
        try:
            return self.journal.get(rec.id)
        except KeyError:
            return None

    def snapshot(self) -> str:
        """One line for systemd's STATUS=: the queue and the import in flight."""
        recs = self.journal.open_records()
        active = [r for r in recs if r.state in ACTIVE]
        queued = len(recs) - len(active)
        s = f"{queued} queued"
        if active:
            r = active[0]
            s += f"; {r.original_name} #{r.import_id or '?'} {r.workflow_state or r.state} {r.progress or 0}%"
        return s


def _describe_params(params: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())

