"""The worker: takes each file through its life, one import at a time.

``Worker.run`` (the daemon's worker thread) and ``Worker.drain`` (the calling thread,
until nothing is left: tests, tools) repeatedly pick the journal's next file (an import
already under way first, else the oldest mtime) and perform the one step its state calls
for:

    QUEUED     open the file once (``posting``: a private copy if it has another hard
               link); checked up front: rejected -> FINISHING(failed), held by the change
               guard -> HELD; else record the post (with the Canvas user of the token that
               makes it) -> POSTING, and post from that descriptor. Checked while sent
               (big CSVs), the same verdicts come before the body's last bytes, cutting
               the request (POSTING -> FINISHING or HELD); bytes that are not the ones
               checked -> QUEUED, checked again. None of these looks in Canvas's list:
               Canvas never had a complete body
    POSTING    (answer lost, or a restart) look in Canvas's list: found -> RUNNING;
               a look-alike that lists no files yet -> wait for it (never post again
               meanwhile; an operator may discard the file); no candidate for the whole
               grace period -> QUEUED (post again), or FINISHING(failed) when Canvas
               answered ``SERVER_ERROR_TRIES`` posts of it with HTTP 500
    RUNNING    follow the import to its final state, or a fresh answer past max_wait
               -> FINISHING (timeout)
    FINISHING  errors file, sidecar, the move into done/ or failed/ -> DONE / FAILED

A refusal is classified by Canvas's answer and a probe of the account (``trouble``): one
about this file (an unknown term...) fails it after ``REFUSAL_TRIES`` tries; one about the
account (``blocked``: a token refused, SIS imports disabled, no such root account) keeps
every file in order, logged and alerted once, and logged again when it clears. A 401 never
sends a file to failed/. A post answered HTTP 500 is looked for in Canvas's list like any
lost answer; once that happened ``SERVER_ERROR_TRIES`` times with no import found (an import
type this Canvas lacks...), the file fails instead of being posted again. Every transition
names the state it expects: a record an operator moved meanwhile (``lifecycle.Conflict``)
is simply looked at again.

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
from sisdropd.config import Config
from sisdropd.crashpoint import crashpoint
from sisdropd.folders import Folders, UnsafeName, inside, plain
from sisdropd.journal import FileRecord, Journal, utcnow
from sisdropd.lifecycle import ACTIVE, Conflict, State
from sisdropd.logs import event as log_event
from sisdropd.notify import Notifier
from sisdropd.preflight.params import config_warnings, import_param_warnings
from sisdropd.trouble import REFUSAL_TRIES as REFUSAL_TRIES
from sisdropd.trouble import SERVER_ERROR_TRIES, Trouble

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
        c = cfg.canvas
        # Each backoff grows across steps and is reset only by the success it waits for.
        self.trouble = Trouble(cfg, journal, client, notifier)  # refusals, unreachable Canvas, the token
        self.throttle_backoff = Backoff(c.retry_initial, c.retry_max)  # posts throttled
        self.bug_backoff = Backoff(c.retry_initial, c.retry_max)  # an unexpected error
        self.finisher = outcome.Finisher(cfg, journal, client, folders, notifier)
        # How long a post that got no answer may still be turning into an import at Canvas.
        self.post_grace = 2 * c.timeout
        self.patience = 2 * c.timeout  # how long one step retries a request before it yields
        self.refusal_spacing = self.trouble.refusal_spacing
        self._user: tuple[int, int] | None = None  # (token epoch, its Canvas user id)
        self._alerted: set[tuple[int, str]] = set()
        self.current: FileRecord | None = None
        self.last_step = time.monotonic()

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        """Work until ``stop`` is set (the daemon's worker thread)."""
        for warning in config_warnings(self.cfg.import_params, [r.import_params for r in self.cfg.rules]):
            logger.warning("config: {}", warning)  # as `check` says it: an import type Canvas may not have
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
            self.bug_backoff.reset()
        except Stopped:
            return False
        except Conflict as e:  # an operator's command moved the record first: look again
            self._log(rec).info("the record changed meanwhile ({}): looking again", e)
        except Exception as e:  # noqa: BLE001 - a bug must not stop the daemon
            delay = self.bug_backoff.next()
            logger.opt(exception=e).bind(file=rec.original_name, import_id=rec.import_id).error(
                "unexpected error in state {} (retrying in {:.0f}s): {}", rec.state, delay, e
            )
            self.journal.update(rec.id, expect=rec.state, next_attempt=time.time() + delay, last_error=str(e)[:500])
        return True

    def _sleep(self, seconds: float | None) -> None:
        self.wake.wait(IDLE_WAKE if seconds is None else min(seconds, IDLE_WAKE))
        self.wake.clear()

    def step(self, rec: FileRecord) -> None:
        """Do the one thing ``rec``'s state calls for (see the module's docstring)."""
        try:
            plain(rec.stored_name)
        except UnsafeName as e:  # a forged or damaged row: never build a path from it
            self._log(rec).error("{}; its record is closed", e)
            self.journal.transition(rec.id, State.LOST, "not a plain file name", expect=rec.state)
            return
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
        path, log = inside(self.folders.processing, rec.stored_name), self._log(rec)
        # Fixed in the journal at the first post: a reload (SIGHUP) never changes a re-post.
        params = rec.import_params or self.cfg.params_for(rec.original_name)
        try:
            out = posting.Outgoing.open(path, name=rec.original_name, rules=posting.Rules.of(self.cfg, params), private=True)
        except FileNotFoundError:
            self.journal.transition(rec.id, State.LOST, "vanished before it was posted", expect=State.QUEUED)
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
            user_id = self._post_user(rec)
            if user_id is None:
                return
            members = [[m.basename, m.size] for m in report.members] if report is not None and report.kind == "zip" else None
            checked: dict[str, Any] = {} if report is None else {"counts": report.counts, "sha256": report.sha256}
            upload = importer.upload_name(rec.original_name)
            # next_attempt 0 while the request may be on the wire: an operator's discard tells it so.
            posting_rec = self.journal.transition(
                rec.id, State.POSTING, "posting", expect=State.QUEUED, upload_name=upload, members=members,
                size=out.size, post_started=time.time(), attempts=rec.attempts + 1, import_params=params,
                post_user_id=user_id, waiting_for=None, absent_since=None, next_attempt=0, **checked,
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
        outcome.fail(
            self.journal, rec.id, "rejected", reason, expect=rec.state, problems=problems, sha256=report.sha256,
            size=report.size,
        )

    def _check_again(self, rec: FileRecord, e: posting.Changed) -> None:
        """Written to while it was posted (POSTING, its body never completed): back to the
        queue, to be checked again once it has settled; whatever its check said is moot."""
        delay = self.cfg.watch.settle_seconds
        self._log(rec).warning("the upload was cut before its last bytes, Canvas got nothing: {}; checked again in {:g}s", e, delay)
        self.journal.transition(
            rec.id, State.QUEUED, f"not posted: {e}", expect=State.POSTING, next_attempt=time.time() + delay,
            last_error=str(e)[:500],
        )

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

    def _post_user(self, rec: FileRecord) -> int | None:
        """The Canvas user of the token the next post goes with (asked again whenever the
        token was read again: a rotated token may belong to another user); None on trouble."""
        if self._user is not None and self._user[0] == self.trouble.token_epoch:
            return self._user[1]
        try:
            me = self.client.whoami(log=self._log(rec), deadline=time.time() + self.patience)
        except CanvasError as e:
            self.trouble.canvas(rec, e)
            return None
        # Not "cleared": /users/self answers whatever the account's state (§1).
        self._user = (self.trouble.token_epoch, int(me["id"]))
        return self._user[1]

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
            self.journal.update(rec.id, expect=State.POSTING, sha256=report.sha256, counts=report.counts)

        try:
            imp = self.client.create_import(out.source(judge), upload_name=rec.upload_name or "", params=params)
        except posting.Rejected as e:
            report = e.report or out.finish_check()
            assert report is not None
            if (changed := out.written_to()) is not None:
                self._check_again(rec, changed)
                return
            self._warnings(rec, report)
            log.warning("the upload was cut before its last bytes: the file fails the pre-flight check")
            self._reject(rec, report)
            return
        except posting.Held as e:
            log.warning("the upload was cut before its last bytes: the change guard holds the file")
            operator.hold(self.cfg, self.journal, self.folders, rec, e.verdict, e.report.counts, self.notifier, sha256=e.report.sha256)
            return
        except posting.Changed as e:
            self._check_again(rec, e)
            return
        except RateLimited as e:
            # Canvas throttles in its middleware, before the controller saves anything. The
            # backoff keeps growing until a post gets through.
            delay = max(e.retry_after or 0.0, self.throttle_backoff.next())
            self.client.retries[e.cause] += 1
            log.warning("post throttled by Canvas ({}): not posted, posting again in {:.1f}s", e.message, delay)
            self.journal.transition(
                rec.id, State.QUEUED, "not posted: rate limited", expect=State.POSTING,
                next_attempt=time.time() + delay, last_error=e.message[:500],
            )
            return
        except (TokenRejected, Forbidden, NotFound, Refused) as e:
            # Canvas refused before it queued anything: the post did not happen (§2.4).
            self.trouble.refused(rec, e, params)
            return
        except NotSent as e:
            report = out.finish_check()  # a check cut short with the request: finished here
            if (changed := out.written_to()) is not None:
                self._check_again(rec, changed)
                return
            if report is not None and not report.ok:
                self._reject(rec, report)
                return
            delay = Backoff(self.cfg.canvas.retry_initial, self.cfg.canvas.retry_max, attempt=max(0, rec.attempts - 1)).next()
            self.client.retries[e.cause] += 1
            log.warning("post failed before its body was complete ({}): Canvas created nothing; posting again in {:.1f}s", e.message, delay)
            self.journal.transition(
                rec.id, State.QUEUED, "not posted: the request failed before its body was complete", expect=State.POSTING,
                next_attempt=time.time() + delay, last_error=e.message[:500],
            )
            return
        except (Retryable, OSError) as e:
            delay = min(self.cfg.canvas.retry_max, self.cfg.canvas.retry_initial)
            n, note = self.trouble.server_error(rec, e, params)
            log.warning("post failed ({}); Canvas may have the import: checking its list before posting again{}", getattr(e, "message", e), note)
            self.client.retries[getattr(e, "cause", "network")] += 1
            self.journal.update(rec.id, expect=State.POSTING, next_attempt=time.time() + delay * 0.2, last_error=str(e)[:500], refusals=n)
            return
        crashpoint("posted")
        import_id = int(imp["id"])
        rec = self.journal.transition(
            rec.id, State.RUNNING, "posted", expect=State.POSTING, import_id=import_id, refusals=0,
            workflow_state=imp.get("workflow_state"), progress=imp.get("progress"), posted_at=utcnow(),
        )
        mbps = (rec.size or 0) / max(1e-6, time.monotonic() - started) / 1e6
        self._log(rec).info("posted: import {} ({}), {:.1f} MB/s", import_id, imp.get("workflow_state"), mbps)
        self.throttle_backoff.reset()
        self.trouble.cleared(posted=True)
        crashpoint("running")

    # POSTING ----------------------------------------------------------------------------
    def _resolve_post(self, rec: FileRecord) -> None:
        log = self._log(rec)
        try:
            verdict, imp = importer.find_posted(
                self.client,
                upload=rec.upload_name or "",
                members=rec.members,
                size=rec.size,
                post_started=rec.post_started or time.time(),
                post_user_id=rec.post_user_id,
                exclude=self.journal.known_import_ids(),
                log=log,
                deadline=time.time() + self.patience,
            )
        except CanvasError as e:
            self.trouble.canvas(rec, e)
            return
        self.trouble.cleared()
        now = time.time()
        if verdict == "found" and imp is not None:
            rec = self.journal.transition(
                rec.id, State.RUNNING, "found in Canvas's list", expect=State.POSTING, import_id=int(imp["id"]),
                workflow_state=imp.get("workflow_state"), progress=imp.get("progress"),
                posted_at=imp.get("created_at") or utcnow(), waiting_for=None, absent_since=None, refusals=0,
            )
            self._log(rec).info("the earlier post reached Canvas as import {}: following it, not posting again", imp["id"])
            return
        if verdict == "waiting" and imp is not None:
            cid = int(imp["id"])
            say = log.warning if rec.waiting_for != cid else log.debug
            say(
                "waiting for import {} ({}, created {}, no files listed yet): it may be this file's post, so the file is "
                "not posted again until that import lists its files or ends (`sisdropd discard {}` gives up on it)",
                cid, imp.get("workflow_state"), imp.get("created_at"), rec.original_name,
            )
            self.journal.update(
                rec.id, expect=State.POSTING, waiting_for=cid, absent_since=None,
                next_attempt=now + self.cfg.watch.poll_interval,
            )
            return
        if rec.waiting_for is not None:
            log.info("import {} ended without listing files, or listed another post's: not this file's doing", rec.waiting_for)
        since = rec.absent_since if rec.absent_since is not None and rec.waiting_for is None else now
        if now < since + self.post_grace:
            # A request Canvas is still working on (the client gave up, the server did not)
            # shows up only when it finishes: "absent" counts once it holds a while later.
            log.info("Canvas shows no import of the earlier post yet; looking again in {:.0f}s before posting again", since + self.post_grace - now)
            self.journal.update(rec.id, expect=State.POSTING, waiting_for=None, absent_since=since, next_attempt=since + self.post_grace)
            return
        if rec.refusals >= SERVER_ERROR_TRIES:  # answered 500 each time while the list answers
            if import_param_warnings(rec.import_params or {}):  # a type this Canvas may lack: the file's doing
                self.trouble.server_errors(rec)
                return
            self.trouble.server_blocked(rec)  # stock: Canvas's own fault; every file waits, in order
        delay = Backoff(self.cfg.canvas.retry_initial, self.cfg.canvas.retry_max, attempt=max(0, rec.attempts - 1)).next()
        log.info("Canvas has no import of the earlier post: posting again in {:.0f}s", delay)
        self.journal.transition(
            rec.id, State.QUEUED, "not in Canvas: post again", expect=State.POSTING, where={"waiting_for": None},
            absent_since=None, next_attempt=now + delay,
        )

    # RUNNING ----------------------------------------------------------------------------
    def _follow(self, rec: FileRecord) -> None:
        log = self._log(rec)
        assert rec.import_id is not None
        deadline = (rec.post_started or time.time()) + self.cfg.watch.max_wait

        def progress(imp: dict[str, Any]) -> None:
            self.trouble.cleared()
            if importer.is_final(imp.get("workflow_state")) and not importer.needs_errors_file(imp):
                return  # decided at once: the FINISHING transition journals the same state
            self.journal.update(rec.id, expect=State.RUNNING, workflow_state=imp.get("workflow_state"), progress=imp.get("progress"))

        try:
            imp, final = importer.follow(
                self.client, rec.import_id, deadline=deadline, poll_interval=self.cfg.watch.poll_interval,
                log=log, on_update=progress, patience=self.patience,
            )
        except NotFound as e:  # the import is gone, or the whole account is refused: ask
            try:
                refusal = importer.probe_account(self.client, log=log, patience=self.patience)
            except Retryable as r:
                self.trouble.canvas(rec, r)
                return
            if refusal is not None:
                self.trouble.block(rec, refusal)
                return
            reason = f"Canvas no longer knows import {rec.import_id} ({e.message})"
            log.error("{}", reason)
            outcome.fail(self.journal, rec.id, "import gone", reason, expect=State.RUNNING)
            return
        except Retryable as e:
            if time.time() >= deadline:
                self._unreachable_at_deadline(rec, e)
            else:
                self.trouble.canvas(rec, e)
            return
        except CanvasError as e:
            self.trouble.canvas(rec, e)
            return
        self.trouble.cleared()
        if final:
            outcome.decide(self.journal, rec, imp)
        else:
            self._timeout(rec, imp)

    def _timeout(self, rec: FileRecord, imp: dict[str, Any]) -> None:
        """Canvas said, at or after the deadline, that the import still runs: failed/ (timeout)."""
        log = self._log(rec)
        assert rec.import_id is not None
        name = rec.original_name
        reason = f"timeout: import {rec.import_id} still {imp.get('workflow_state')} after max_wait ({self.cfg.watch.max_wait:g}s)"
        may_run = (
            f"Canvas may still run the import: `sisdropd abort {name}` stops it, and `sisdropd retry {name}` "
            "posts the file again only once it has ended"
        )
        if self.cfg.watch.abort_on_timeout:
            try:
                imp = self.client.abort(rec.import_id, log=log, deadline=time.time() + self.patience)
                reason += "; aborted in Canvas"
            except NotFound:  # it finished meanwhile: decided by its state
                try:
                    imp = self.client.get_import(rec.import_id, log=log, deadline=time.time() + self.patience)
                except CanvasError as e:
                    self.trouble.canvas(rec, e)
                    return
                if importer.is_final(imp.get("workflow_state")):
                    outcome.decide(self.journal, rec, imp)
                    return
                reason += f"; {may_run}"
            except Retryable as e:  # ask again (and abort) at the next step
                self.trouble.canvas(rec, e)
                return
            except CanvasError as e:
                reason += f"; the abort failed ({e.message}): {may_run}"
        else:
            reason += f"; {may_run}"
        log.error("{}", reason)
        outcome.fail(self.journal, rec.id, "timeout", reason, expect=State.RUNNING, sis_import=imp, workflow_state=imp.get("workflow_state"))

    def _unreachable_at_deadline(self, rec: FileRecord, e: CanvasError) -> None:
        """max_wait has passed but Canvas cannot be asked: keep waiting for its word (logged, alerted once)."""
        delay = self.trouble.net_backoff.next()
        self.client.retries[e.cause] += 1
        log = self._log(rec)
        if (rec.id, "deadline") not in self._alerted:
            self._alerted.add((rec.id, "deadline"))
            reason = (
                f"max_wait ({self.cfg.watch.max_wait:g}s) has passed, but Canvas cannot be reached to ask how import "
                f"{rec.import_id} is ({e.message}): the file waits for Canvas's word, never sent to failed/ without it"
            )
            log.error("{}; asking again in {:.0f}s", reason, delay)
            self.trouble.notify("blocked", rec, reason)
        else:
            log.warning("Canvas still cannot be reached about import {} ({}); asking again in {:.0f}s", rec.import_id, e.message, delay)
        self.journal.update(rec.id, expect=State.RUNNING, next_attempt=time.time() + delay, last_error=e.message[:500])

    # FINISHING --------------------------------------------------------------------------
    def _finish(self, rec: FileRecord) -> None:
        self.finisher.finish(rec, operator.locate(self.folders, rec))

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
            if r.waiting_for is not None:
                s += f"; {r.original_name} waits for import {r.waiting_for} to list its files"
            else:
                s += f"; {r.original_name} #{r.import_id or '?'} {r.workflow_state or r.state} {r.progress or 0}%"
        if self.trouble.blocked:
            s += f"; BLOCKED: {self.trouble.blocked}"
        return s
