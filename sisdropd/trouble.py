"""When Canvas says no, or cannot be reached: keep the file, back off, say it once.

``Trouble`` is the worker's memory of the account's state between steps. A problem on
Canvas's side or the way to it (``canvas``) keeps the file and waits, with a backoff that
grows across steps; a refusal of the account itself (``block``: the token, its permission,
SIS imports disabled, no such root account) keeps every file in order and is said once,
in the log and as a ``blocked`` alert, until Canvas answers again (``cleared``, said once
too). A refused token is read again from its source each time (``reload_token``), and the
``token_epoch`` it bumps makes the worker ask the new token's Canvas user before its next
post.

A post Canvas refuses (``refused``) is about the account or about this file, and a probe
of the account tells which: one about the file fails it after ``REFUSAL_TRIES`` posts. A
post answered HTTP 500 may have created an import, so the worker looks in Canvas's list
before each new post; when the answer repeats for this file while that list answers (the
account does) and shows no import of it, the file fails after ``SERVER_ERROR_TRIES``
posts (``server_errors``): an import type or parameter this Canvas does not have gets a
500 (reference section 7), and must not block the queue for ever.
"""

from __future__ import annotations

import time
from typing import Any

from sisdropd import importer, outcome
from sisdropd.canvas import (
    Backoff,
    CanvasClient,
    CanvasError,
    Forbidden,
    NotFound,
    Refused,
    Retryable,
    TokenRejected,
)
from sisdropd.config import Config, TokenError, read_token
from sisdropd.journal import FileRecord, Journal
from sisdropd.lifecycle import State
from sisdropd.logs import add_secret, logger
from sisdropd.logs import event as log_event
from sisdropd.notify import Notifier
from sisdropd.preflight.params import STOCK_IMPORT_TYPE, import_param_warnings

REFUSAL_TRIES = 3  # a refusal about one file fails it after this many posts...
REFUSAL_SPACING = 30.0  # ...this many seconds apart at most (retry_max when smaller): about a minute
#: Posts answered HTTP 500 (each followed by a look in Canvas's list that answers and shows
#: no import of it: that GET .../sis_imports runs the account's checks, as the probe of a
#: refusal does, so the account answers) before the file goes to failed/ when its import
#: type is not stock Canvas's (else the queue is said blocked: Canvas's fault, order kept). More than REFUSAL_TRIES: unlike a 4xx,
#: a 500 is as often Canvas's own passing trouble (a deploy, its storage, a bug) as the
#: file's (an import type this Canvas lacks). Each try first waits out the lost-post
#: lookup's grace (2 x canvas.timeout), so five span at least 8 x timeout (8 minutes by
#: default): past a blip, yet the queue is not blocked for long. A single 500 (the soak's)
#: costs one lookup; the count starts again whenever Canvas takes a post of the file.
SERVER_ERROR_TRIES = 5


class Trouble:
    """The account's state as the worker last heard it, and what to do about trouble."""

    def __init__(self, cfg: Config, journal: Journal, client: CanvasClient, notifier: Notifier | None) -> None:
        self.cfg = cfg
        self.journal = journal
        self.client = client
        self.notifier = notifier
        c = cfg.canvas
        self.auth_backoff = Backoff(c.retry_initial, c.retry_max)  # the account is refused
        self.net_backoff = Backoff(c.retry_initial, c.retry_max)  # Canvas cannot be reached
        self.blocked: str | None = None  # why Canvas refuses the account, while it does
        self.server_fault: str | None = None  # Canvas answers every post 500 (stock type), while it does
        self.token_epoch = 0  # bumped whenever the token is read again
        self.patience = 2 * c.timeout  # how long one step retries a request before it yields
        self.refusal_spacing = min(REFUSAL_SPACING, c.retry_max)

    def canvas(self, rec: FileRecord, e: CanvasError) -> None:
        """A problem on Canvas's side or with our credentials: keep the file, wait, try again."""
        if isinstance(e, TokenRejected | Forbidden | NotFound | Refused):
            self.block(rec, e)
            return
        delay = self.net_backoff.next()
        log_event(rec.original_name, rec.import_id).warning("Canvas trouble ({}); trying again in {:.0f}s", e.message, delay)
        self.client.retries[e.cause] += 1
        self.journal.update(rec.id, expect=rec.state, next_attempt=time.time() + delay, last_error=e.message[:500])

    def block(self, rec: FileRecord, e: CanvasError) -> None:
        """Canvas refuses the account itself: every file waits, in order. Said once (log and
        a "blocked" alert) until it clears; a refused token is read again each time."""
        log = log_event(rec.original_name, rec.import_id)
        what = importer.account_refusal(e, self.cfg.canvas.account_id)
        delay = self.auth_backoff.next()
        if isinstance(e, TokenRejected):
            self.reload_token(log)
        if self.blocked != what:
            self.blocked = what
            log.error("blocked: {}. Every file waits in the queue, in order, until Canvas accepts the account again (asking every {:g}s at most)", what, self.cfg.canvas.retry_max)
            self.notify("blocked", rec, what)
        else:
            log.debug("still blocked: {} (asking again in {:.0f}s)", what, delay)
        self.client.retries[e.cause] += 1
        self.journal.update(rec.id, expect=rec.state, next_attempt=time.time() + delay, last_error=e.message[:500])

    def refused(self, rec: FileRecord, e: CanvasError, params: dict[str, Any]) -> None:
        """Canvas said no to a post (POSTING ``rec``): about the account (keep every file,
        blocked) or this file (fail it after REFUSAL_TRIES); the probe of the account tells
        which. A 401 is never the file's doing."""
        log = log_event(rec.original_name, rec.import_id)
        refusal: CanvasError | None = e
        if not isinstance(e, TokenRejected):
            try:
                refusal = importer.probe_account(self.client, log=log, patience=self.patience)
            except Retryable as r:
                rec = self.journal.transition(rec.id, State.QUEUED, f"not posted: {e.cause}", expect=State.POSTING)
                self.canvas(rec, r)
                return
        if refusal is not None:
            rec = self.journal.transition(rec.id, State.QUEUED, f"not posted: {e.cause}", expect=State.POSTING, refusals=0)
            self.block(rec, refusal)
            return
        self.cleared()
        tries = rec.refusals + 1
        reason = importer.file_refusal(e, params)
        if tries >= REFUSAL_TRIES:
            reason += f"; refused {tries} times while the account answers: it is about this file"
            log.error("not posted: {}", reason)
            outcome.fail(self.journal, rec.id, "refused", reason, expect=State.POSTING, refusals=tries)
            return
        log.warning(
            "Canvas refused the post ({}) while the account answers: this file may be at fault; try {} of {} in {:.0f}s",
            e.message, tries, REFUSAL_TRIES, self.refusal_spacing,
        )
        self.journal.transition(
            rec.id, State.QUEUED, f"refused by Canvas (try {tries} of {REFUSAL_TRIES})", expect=State.POSTING,
            refusals=tries, next_attempt=time.time() + self.refusal_spacing, last_error=e.message[:500],
        )

    @staticmethod
    def server_error(rec: FileRecord, e: Exception, params: dict[str, Any]) -> tuple[int, str]:
        """The record's count of posts answered HTTP 500 once this post failed with ``e``, and
        what the log line about it adds ("" when ``e`` is no 500).

        Only Canvas's own 500 counts (a 502, 503 or 504 is a proxy's or a gateway's, and a
        timeout says nothing); it shares ``refusals`` with the 4xx refusals, which fail a
        file at REFUSAL_TRIES, so a count past that is 500s.
        """
        if not (isinstance(e, Retryable) and e.status == 500):
            return rec.refusals, ""
        n = rec.refusals + 1
        doubts = import_param_warnings(params)
        then = "the last fails the file" if doubts else "past that the queue is said blocked, every file kept in order"
        doubt = "".join(f"; {w}" for w in doubts)
        return n, (
            f" (a 500 to this file's post, {n} of {SERVER_ERROR_TRIES}: with no import of it in the list, {then}; "
            f"`sisdropd discard {rec.original_name}` gives up on it now{doubt})"
        )

    def server_errors(self, rec: FileRecord) -> None:
        """POSTING ``rec``'s post was answered HTTP 500 ``rec.refusals`` times (at least
        SERVER_ERROR_TRIES), and Canvas's list, just asked, shows no import of it: failed/."""
        params = rec.import_params or {}
        doubt = "; ".join(import_param_warnings(params))
        reason = (
            f"Canvas answered HTTP 500 to this file's post {rec.refusals} times while the account answers, and its list "
            f"shows no import of it: the import type ({params.get('import_type', STOCK_IMPORT_TYPE)}) or parameters may "
            f"be unknown to this Canvas{f' ({doubt})' if doubt else ''}. Once they are right in the config (a reload "
            f"takes it), `sisdropd retry {rec.original_name}` posts the file again"
        )
        log_event(rec.original_name, rec.import_id).error("not posted: {}", reason)
        outcome.fail(self.journal, rec.id, "server errors", reason, expect=State.POSTING, where={"waiting_for": None})

    def server_blocked(self, rec: FileRecord) -> None:
        """POSTING ``rec``'s post, of the stock import type, was answered HTTP 500 ``rec.refusals``
        times while Canvas's list answers: a fault on Canvas's side (its storage, a deploy),
        not the file's. Failing it would let newer files past it, and an older snapshot
        retried after a newer one rolls Canvas back: every file waits, in order, said once
        (log and a "blocked" alert) until a post gets through."""
        what = f"Canvas answers HTTP 500 to every post of {rec.original_name} ({rec.refusals} so far) while its list answers: a fault on Canvas's side"
        if self.server_fault is None:
            self.server_fault = what
            log_event(rec.original_name, rec.import_id).error(
                "blocked: {}. Every file waits in the queue, in order, posted again after a growing wait "
                "(`sisdropd discard {}` gives up on this one)", what, rec.original_name,
            )
            self.notify("blocked", rec, what)

    def cleared(self, *, posted: bool = False) -> None:
        """Canvas answered: a refusal of the account is over (said so), the backoffs start again;
        a post got through (``posted``): Canvas's server errors are over too (said so)."""
        if posted and self.server_fault is not None:
            logger.info("unblocked: Canvas takes posts again (it answered: {}); the queue moves on", self.server_fault)
            self.server_fault = None
        if self.blocked is not None:
            logger.info("unblocked: Canvas accepts the account again (it refused: {}); the queue moves on", self.blocked)
            self.blocked = None
        self.auth_backoff.reset()
        self.net_backoff.reset()

    def notify(self, event: str, rec: FileRecord, reason: str) -> None:
        if self.notifier is not None:
            self.notifier.send(event, {"file": rec.original_name, "import_id": rec.import_id, "state": rec.workflow_state, "reason": reason})

    def reload_token(self, log: Any) -> None:
        """The operator may have put a new token in place: read it again from its source."""
        try:
            token, _ = read_token(self.cfg)
        except TokenError as e:
            log.error("cannot read the token again: {}", e)
            return
        add_secret(token)
        self.client.set_token(token)
        self.token_epoch += 1  # its Canvas user is asked again before the next post
