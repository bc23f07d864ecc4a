"""When Canvas says no, or cannot be reached: keep the file, back off, say it once.

``Trouble`` is the worker's memory of the account's state between steps. A problem on
Canvas's side or the way to it (``canvas``) keeps the file and waits, with a backoff that
grows across steps; a refusal of the account itself (``block``: the token, its permission,
SIS imports disabled, no such root account) keeps every file in order and is said once,
in the log and as a ``blocked`` alert, until Canvas answers again (``cleared``, said once
too). A refused token is read again from its source each time (``reload_token``), and the
``token_epoch`` it bumps makes the worker ask the new token's Canvas user before its next
post.
"""

from __future__ import annotations

import time
from typing import Any

from sisdropd import importer
from sisdropd.canvas import (
    Backoff,
    CanvasClient,
    CanvasError,
    Forbidden,
    NotFound,
    Refused,
    TokenRejected,
)
from sisdropd.config import Config, TokenError, read_token
from sisdropd.journal import FileRecord, Journal
from sisdropd.logs import add_secret, logger
from sisdropd.logs import event as log_event
from sisdropd.notify import Notifier


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
        self.token_epoch = 0  # bumped whenever the token is read again

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

    def cleared(self) -> None:
        """Canvas answered: a refusal of the account is over (said so), the backoffs start again."""
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
