"""The worker: takes each file through its life, one import at a time.

``Worker.run`` (the daemon's worker thread) and ``Worker.drain`` (the calling thread,
until nothing is left: tests, tools) repeatedly pick the journal's next file (an import
already under way first, else the oldest mtime) and perform the one step its state calls
for:

    QUEUED     open the file once (``posting``: a private copy if it has another hard
               link); checked up front: rejected -> FINISHING(failed), held by the change
               guard -> HELD; else record the post -> POSTING, and post from that
               descriptor. Checked while sent (big CSVs), the same verdicts come before
               the body's last bytes, cutting the request (POSTING -> FINISHING or HELD);
               bytes that are not the ones checked -> QUEUED, checked again. None of
               these looks in Canvas's list: Canvas never had a complete body
    POSTING    (answer lost, or a restart) look in Canvas's list: found -> RUNNING;
               provably absent for the grace period -> QUEUED (post again);
               a pending look-alike -> ask again later
    RUNNING    follow the import to its final state, or max_wait -> FINISHING
    FINISHING  errors file, sidecar, the move into done/ or failed/ -> DONE / FAILED

Every step is journaled before its effect, so a SIGKILL at any instant resumes at the
right step: the record says what may already have happened, never less. Files arrive
through ``intake``; start-up repairs are ``recovery``'s; the end of a file's life is
``outcome``'s; held/ is ``operator``'s.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from loguru import logger

from sisdropd import guard, importer, operator, outcome, posting, preflight
from sisdropd.canvas import (
    Backoff,
    CanvasClient,
    CanvasError,
    Forbidden,
    NotFound,
    NotSent,
    RateLimited,
    Refused,
    Retryable,
    Stopped,
    TokenRejected,
)
from sisdropd.config import Config, TokenError, read_token
from sisdropd.crashpoint import crashpoint
from sisdropd.folders import Folders
from sisdropd.journal import FileRecord, Journal, utcnow
from sisdropd.lifecycle import ACTIVE, State
from sisdropd.logs import add_secret
from sisdropd.logs import event as log_event
from sisdropd.notify import Notifier

IDLE_WAKE = 5.0  # seconds: the loop wakes at least this often, so a watchdog sees it alive


class Worker:
    """Imports taken files one at a time. ``stop`` ends it at the next checkpoint."""

    def __init__(
        self, cfg: Config, journal: Journal, client: CanvasClient, folders: Folders, *,
        stop: threading.Event, notifier: Notifier | None = None,
    ) -> None:
        self.cfg = cfg
        self.journal = journal
        self.client = client
        self.folders = folders
        self.stop = stop
        self.notifier = notifier
        self.wake = threading.Event()  # set when a file was taken or an operator asked something
        self.auth_backoff = Backoff(cfg.canvas.retry_initial, cfg.canvas.retry_max)
        self.error_backoff = Backoff(cfg.canvas.retry_initial, cfg.canvas.retry_max)
        self.finisher = outcome.Finisher(cfg, journal, client, folders, notifier)
        # How long a post that got no answer may still be turning into an import at Canvas.
        self.post_grace = 2 * cfg.canvas.timeout
        self._absent_since: dict[int, float] = {}
        self.current: FileRecord | None = None
        self.last_step = time.monotonic()

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        """Work until ``stop`` is set (the daemon's worker thread)."""
        while not self.stop.is_set():
            self.last_step = time.monotonic()
            rec = self.journal.next_queued()
            self.current = rec
            if rec is None:
                self._sleep(None)
                continue
            delay = rec.next_attempt - time.time()
            if delay > 0:
                self._sleep(delay)
                continue
            if not self._attempt(rec):
                break
        self.current = None

    def drain(self, timeout: float) -> bool:
        """Run the steps on the calling thread until no open record is left.

        Honours each record's ``next_attempt`` by waiting for it, as the loop does. Returns
        True when nothing is left to do (every file DONE, FAILED, HELD or LOST), False when
        ``timeout`` seconds passed first or ``stop`` was set. A step already begun is never
        cut short by the timeout.
        """
        deadline = time.monotonic() + timeout
        while not self.stop.is_set():
            rec = self.journal.next_queued()
            if rec is None:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            delay = rec.next_attempt - time.time()
            if delay > 0:
                self.stop.wait(min(delay, left))
                continue
            self.current = rec
            if not self._attempt(rec):
                break
        self.current = None
        return False

    def _attempt(self, rec: FileRecord) -> bool:
        """``step(rec)``; a bug is logged and retried later. False when the daemon is stopping."""
        try:
            self.step(rec)
            self.error_backoff.reset()
        except Stopped:
            return False
        except Exception as e:  # noqa: BLE001 - a bug must not stop the daemon
            delay = self.error_backoff.next()
            logger.opt(exception=e).bind(file=rec.original_name, import_id=rec.import_id).error(
                "unexpected error in state {} (retrying in {:.0f}s): {}", rec.state, delay, e
            )
            self.journal.update(rec.id, next_attempt=time.time() + delay, last_error=str(e)[:500])
        return True

    def _sleep(self, seconds: float | None) -> None:
        self.wake.wait(IDLE_WAKE if seconds is None else min(seconds, IDLE_WAKE))
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

    # QUEUED -----------------------------------------------------------------------------
    def _prepare_and_post(self, rec: FileRecord) -> None:
        path, log = self.folders.processing / rec.stored_name, self._log(rec)
        params = self.cfg.params_for(rec.original_name)
        try:
            out = posting.Outgoing.open(path, name=rec.original_name, rules=posting.Rules.of(self.cfg, params), private=True)
        except FileNotFoundError:
            self.journal.transition(rec.id, State.LOST, "vanished before it was posted")
            log.error("the file vanished from processing/ before it was posted; record closed")
            return
        with out:
            if out.copied:
                log.warning("it has another hard link, through which it could still be written: posting a private copy")
            report = out.report  # None: checked while it is sent
            if report is not None:
                self._warnings(rec, report)
                if not report.ok:
                    self._reject(rec, report)
                    return
                verdict = self._guard(rec, params, report)
                if verdict is not None:
                    operator.hold(self.cfg, self.journal, self.folders, rec, verdict, report.counts, self.notifier, sha256=report.sha256)
                    return
            user_id = self._our_user_id(rec)
            if user_id is None:
                return
            members = [[m.basename, m.size] for m in report.members] if report is not None and report.kind == "zip" else None
            checked = {} if report is None else {"counts": report.counts, "sha256": report.sha256}
            upload = importer.upload_name(rec.original_name)
            posting_rec = self.journal.transition(
                rec.id, State.POSTING, "posting", upload_name=upload, members=members, size=out.size,
                post_started=time.time(), attempts=rec.attempts + 1, **checked,
            )
            crashpoint("before_post")
            self._post(posting_rec, out, params, judged_as=rec)

    def _warnings(self, rec: FileRecord, report: preflight.Report) -> None:
        for warn in report.warnings[:5]:
            self._log(rec).warning("pre-flight: {}", warn)

    def _reject(self, rec: FileRecord, report: preflight.Report) -> None:
        """Failed by the pre-flight check (QUEUED, or POSTING with its body never completed)."""
        log = self._log(rec)
        problems = [str(p) for p in report.problems]
        reason = "rejected by the pre-flight check: " + (report.problems[0].message if report.problems else "?")
        for p in problems[:5]:
            log.warning("rejected: {}", p)
        outcome.fail(self.journal, rec.id, "rejected", reason, problems=problems, sha256=report.sha256, size=report.size)

    def _guard(self, rec: FileRecord, params: dict[str, Any], report: preflight.Report) -> guard.Verdict | None:
        """The change guard's verdict when it holds the file, else None.

        A file an operator released is not judged again while its bytes are the ones
        accepted (the hash journaled when it was held); other bytes are judged afresh.
        """
        if not guard.applies(self.cfg.guard, params):
            return None
        if rec.guard_accepted:
            if rec.sha256 is not None and rec.sha256 == report.sha256:
                return None
            self._log(rec).warning(
                "its bytes are not the ones the operator released (sha256 {}, now {}): the change guard judges it again",
                (rec.sha256 or "unknown")[:12], (report.sha256 or "unknown")[:12],
            )
        key = guard.dataset_key(self.cfg.guard, rec.original_name, params)
        verdict = guard.judge(self.cfg.guard, key, self.journal.dataset_counts(key), report.counts)
        return verdict if verdict.hold else None

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

    def _post(self, rec: FileRecord, out: posting.Outgoing, params: dict[str, Any], judged_as: FileRecord) -> None:
        """Post ``out`` for the POSTING record ``rec`` (``judged_as``: the record as it was
        queued, whose guard acceptance counts), and record what came of it."""
        log = self._log(rec)
        log.info("posting {} bytes as {} ({})", rec.size, rec.upload_name, ", ".join(f"{k}={v}" for k, v in params.items()))
        started = time.monotonic()

        def judge(report: preflight.Report) -> None:
            """Checked while sent: the verdict before the body's last bytes go."""
            self._warnings(rec, report)
            verdict = self._guard(judged_as, params, report)
            if verdict is not None:
                raise posting.Held(verdict, report)
            # What is about to be posted, durable before Canvas can have a complete body.
            self.journal.update(rec.id, sha256=report.sha256, counts=report.counts)

        try:
            imp = self.client.create_import(out.source(judge), upload_name=rec.upload_name or "", params=params)
        except posting.Rejected as e:
            report = e.report or out.finish_check()
            assert report is not None
            self._warnings(rec, report)
            log.warning("the upload was cut before its last bytes: the file fails the pre-flight check")
            self._reject(rec, report)
            return
        except posting.Held as e:
            log.warning("the upload was cut before its last bytes: the change guard holds the file")
            operator.hold(self.cfg, self.journal, self.folders, rec, e.verdict, e.report.counts, self.notifier, sha256=e.report.sha256)
            return
        except posting.Changed as e:
            delay = self.cfg.watch.settle_seconds
            log.warning("the upload was cut before its last bytes, Canvas got nothing: {}; checked again in {:g}s", e, delay)
            self.journal.transition(rec.id, State.QUEUED, f"not posted: {e}", next_attempt=time.time() + delay, last_error=str(e)[:500])
            return
        except Refused as e:
            reason = f"Canvas refused the import: {e.message}"
            log.error("{}", reason)
            outcome.fail(self.journal, rec.id, "refused", reason)
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
        except NotSent as e:
            report = out.finish_check()  # a check cut short with the request: finished here
            if report is not None and not report.ok:
                self._reject(rec, report)
                return
            delay = Backoff(self.cfg.canvas.retry_initial, self.cfg.canvas.retry_max, attempt=max(0, rec.attempts - 1)).next()
            self.client.retries[e.cause] += 1
            log.warning("post failed before its body was complete ({}): Canvas created nothing; posting again in {:.1f}s", e.message, delay)
            self.journal.transition(rec.id, State.QUEUED, "not posted: the request failed before its body was complete", next_attempt=time.time() + delay, last_error=e.message[:500])
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
            if importer.is_final(imp.get("workflow_state")) and not importer.needs_errors_file(imp):
                return  # decided at once: the FINISHING transition journals the same state
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
            outcome.fail(self.journal, rec.id, "import gone", reason)
            return
        except (Retryable, TokenRejected, Forbidden) as e:
            if isinstance(e, Retryable) and time.time() >= deadline:
                self._timeout(rec, None)
                return
            self._canvas_trouble(rec, e)
            return
        assert imp is not None
        outcome.decide(self.journal, rec, imp)

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
                    outcome.decide(self.journal, rec, imp)
                    return
            except CanvasError as e:
                reason += f"; abort failed: {e.message}"
        log.error("{}", reason)
        outcome.fail(self.journal, rec.id, "timeout", reason, sis_import=imp, workflow_state=(imp or {}).get("workflow_state"))

    # FINISHING --------------------------------------------------------------------------
    def _finish(self, rec: FileRecord) -> None:
        self.finisher.finish(rec, operator.locate(self.folders, rec))

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

    # views ------------------------------------------------------------------------------
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
        s = f"{len(recs) - len(active)} queued"
        if active:
            r = active[0]
            s += f"; {r.original_name} #{r.import_id or '?'} {r.workflow_state or r.state} {r.progress or 0}%"
        return s
