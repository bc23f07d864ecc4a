""":class:`FakeCanvas`: the Canvas simulator as one object a test starts, steers and stops.

It builds the parts and wires them: a :class:`~.store.Store` for the batches, a
:class:`~.runner.Runner` that moves them along in time, a :class:`~.context.SimContext` with
the account's knobs, tokens, faults and request log, and the HTTP :class:`~.http.Server`
that answers over that context. Its methods change the same context the ``/_sim/`` control
endpoints change.
"""

from __future__ import annotations

import dataclasses
import secrets
import socket
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from sisdropd.config import is_loopback
from sisdropd.simulator.context import SimContext, Tokens
from sisdropd.simulator.control import FOREIGN_CSV, FOREIGN_USER_ID, add_token, foreign_import
from sisdropd.simulator.http import Server
from sisdropd.simulator.model import Timing, user_json
from sisdropd.simulator.runner import Runner
from sisdropd.simulator.store import Store


class FakeCanvas:
    """The simulator: one root account, its tokens and users, its SIS imports.

    Given the constructor options, :meth:`start` binds ``host:port`` (0 = a free port) and
    serves in daemon threads; :meth:`stop` ends serving, closes open connections, joins every
    thread and removes the temporary storage it made. ``url`` is the base URL (API under
    ``/api/v1``). ``token`` (default ``sim-token``) belongs to Canvas user ``user_id``.
    ``sub_accounts`` holds account ids that are sub-accounts (400 on SIS imports); other
    unknown ids are 404. ``known_terms`` (None = any) are the account's active terms: SIS
    term ids (matched by ``sis_term_id:<id>``) or Canvas ids (digits). Timings in seconds:
    ``import_seconds`` (one run), ``start_delay`` (before a created import may start),
    ``attachments_delay`` (``importing`` without ``csv_attachments`` at first),
    ``errors_attachment_delay`` (after a batch with messages ended), ``restore_seconds``.

    It serves only on loopback unless ``allow_remote`` is true; then the API token, unless
    given, and the control token (``control_token``) are random, and the ``/_sim/``
    endpoints require the control token as a Bearer token. A ``control_token`` given on
    loopback is required too. Raises ValueError for a remote host without ``allow_remote``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        account_id: str = "1",
        user_id: int = 17,
        storage_dir: Path | None = None,
        import_seconds: float = 1.0,
        start_delay: float = 0.0,
        errors_attachment_delay: float = 0.3,
        attachments_delay: float = 0.3,
        restore_seconds: float = 0.5,
        known_terms: Iterable[str] | None = None,
        allow_remote: bool = False,
        control_token: str | None = None,
    ) -> None:
        remote = not is_loopback(host)
        if remote and not allow_remote:
            raise ValueError(
                f"refusing to serve the simulator on {host or 'every address'!r}: its "
                "control endpoints change what it answers; use a loopback address, or "
                "allow_remote (--allow-remote) to serve with random tokens"
            )
        if remote:
            token = token or secrets.token_urlsafe(18)
            control_token = control_token or secrets.token_urlsafe(18)
        self.host = host
        self.port = port
        self.user_id = user_id
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if storage_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fakecanvas-")
            storage_dir = Path(self._tmp.name)
        self.storage_dir = Path(storage_dir)
        self._store = Store(self.storage_dir)
        timing = Timing()
        timing.update(
            import_seconds=import_seconds,
            start_delay=start_delay,
            errors_attachment_delay=errors_attachment_delay,
            attachments_delay=attachments_delay,
            restore_seconds=restore_seconds,
        )
        self._runner = Runner(self._store, timing)
        self._ctx = SimContext(
            account_id=str(account_id),
            store=self._store,
            timing=timing,
            tokens=Tokens(token or "sim-token", user_json(user_id, "SIS Integration")),
            incoming=self.storage_dir / "incoming",
            control_token=control_token,
        )
        self._ctx.set_terms(known_terms)
        self._server: Server | None = None
        self._serve_thread: threading.Thread | None = None

    # -- the account's knobs, as attributes ----------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL once started ("" before)."""
        return self._ctx.url

    @property
    def token(self) -> str:
        """The token set last (by the constructor or :meth:`set_token`)."""
        return self._ctx.tokens.primary

    @property
    def control_token(self) -> str | None:
        """The token the ``/_sim/`` endpoints require; None when they are open."""
        return self._ctx.control_token

    @property
    def account_id(self) -> str:
        return self._ctx.account_id

    @property
    def known_terms(self) -> frozenset[str] | None:
        return self._ctx.known_terms

    @known_terms.setter
    def known_terms(self, terms: Iterable[str] | None) -> None:
        self._ctx.set_terms(terms)

    @property
    def sub_accounts(self) -> set[str]:
        return self._ctx.sub_accounts

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeCanvas:
        """Bind and serve in a background thread; returns self."""
        self._ctx.incoming.mkdir(parents=True, exist_ok=True)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._server = Server((self.host, self.port), self._ctx, family)
        self.port = self._server.server_address[1]
        shown = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        if ":" in shown:
            shown = f"[{shown}]"
        self._ctx.url = f"http://{shown}:{self.port}"
        self._runner.start()
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fakecanvas-http",
            daemon=True,
        )
        self._serve_thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close client connections, join threads, remove temp storage."""
        self._ctx.stop.set()
        if self._server is not None:
            self._server.stop()
            if self._serve_thread is not None:
                self._serve_thread.join(timeout=10)
            self._server = None
        self._runner.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> FakeCanvas:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- control -------------------------------------------------------------------------------

    def set_token(self, token: str, *, user_id: int | None = None) -> None:
        """Make ``token`` the only valid one (every other now gets 401 Invalid access
        token), for Canvas user ``user_id`` (default: the user of the token it replaces)."""
        user = None if user_id is None else user_json(user_id, f"User {user_id}")
        self._ctx.tokens.set_only(token, user)

    def add_token(
        self,
        token: str,
        user_id: int,
        *,
        name: str | None = None,
        permissions: Iterable[str] | None = None,
    ) -> None:
        """Make ``token`` valid too, for Canvas user ``user_id`` (``GET /users/self`` answers
        that user; its imports record it). ``permissions``: a subset of ``import_sis`` and
        ``manage_sis`` (default both); without the one an endpoint needs, 401 (§1)."""
        add_token(
            self._ctx,
            token,
            user_id,
            name=name,
            permissions=None if permissions is None else set(permissions),
        )

    def remove_token(self, token: str) -> bool:
        """Revoke ``token``: it now gets 401 Invalid access token. False if it was unknown."""
        return self._ctx.tokens.remove(token)

    def inject(
        self,
        fault: str,
        *,
        method: str | None = None,
        path: str | None = None,
        count: int = 1,
        delay: float = 0.0,
    ) -> None:
        """Queue ``fault`` for the next ``count`` requests matching ``method`` and ``path``.

        ``path`` is a regex searched in the URL path; None matches all (``/_sim/`` control
        requests are never faulted). Faults are consumed in FIFO order; see FAULTS.
        Raises ValueError for an unknown fault name or a count below 1.
        """
        self._ctx.faults.inject(fault, method=method, path=path, count=count, delay=delay)

    def faults_served(self) -> dict[str, int]:
        """How many requests each fault kind has been applied to so far."""
        return self._ctx.faults.served()

    def set_outcome(
        self,
        name_pattern: str,
        state: str | None,
        *,
        seconds: float | None = None,
        attachments_delay: float | None = None,
        error_message: str | None = None,
    ) -> None:
        """Uploads whose stored name matches ``name_pattern`` (a regex) behave so.

        ``state``: a final state they end in; "stuck" (stays ``created`` for ever, others
        still run); "failed_early" (``failed`` with ``data.error_message`` once the
        attachments delay is over, no attachments, nothing imported); None (what the
        content gives). ``seconds`` overrides import_seconds, ``attachments_delay`` the
        simulator's (e.g. a large zip unpacking for a long while); ``error_message`` is
        the ``data.error_message`` of "failed"/"failed_early". The rule is looked up when
        the import is about to start; the latest matching rule wins.
        """
        self._store.set_outcome(
            name_pattern,
            state,
            seconds,
            attachments_delay=attachments_delay,
            error_message=error_message,
        )

    def foreign_import(
        self,
        seconds: float | None = None,
        *,
        user_id: int = FOREIGN_USER_ID,
        name: str = "other_integration.csv",
        content: bytes = FOREIGN_CSV,
    ) -> int:
        """Another client's import, by Canvas user ``user_id``, created now; its id.

        It joins the account's one-at-a-time queue like any import; once running it
        lasts ``seconds`` (None: until :meth:`release`), keeping later imports ``created``.
        It is listed with its own user, and its own csv_attachments once importing.
        """
        return foreign_import(
            self._ctx, seconds=seconds, user_id=user_id, name=name, content=content
        )

    def hold_queue(self, seconds: float | None = None) -> int:
        """Hold the account's queue with another user's import (see :meth:`foreign_import`)."""
        return self.foreign_import(seconds)

    def release(self, import_id: int | None = None) -> list[int]:
        """Let held foreign imports (all, or one) finish; returns the ids released."""
        return self._store.release(import_id)

    def refuse(self, kind: str, on: bool = True) -> None:
        """Switch an account-wide refusal on (or off), answered on every SIS endpoint (§7):
        "expired_token" (401 Expired access token, on every API request), "unknown_account"
        (404), "sis_disabled" (403), "sub_account" (400), "unauthorized" (401, the token's
        user lost its SIS permissions). ValueError for another kind."""
        self._ctx.refuse(kind, on)

    def refusals(self) -> list[str]:
        """The refusals switched on now."""
        return sorted(self._ctx.refusals)

    def set_terms(self, terms: Iterable[str] | None) -> None:
        """The account's active terms from now on (None: every term exists)."""
        self._ctx.set_terms(terms)

    def set_timing(self, **seconds: float) -> None:
        """Change timings while running: import_seconds, start_delay, attachments_delay,
        errors_attachment_delay, restore_seconds. ValueError for an unknown or bad one."""
        self._ctx.timing.update(**seconds)

    def timing(self) -> dict[str, float]:
        """The timings now in force, by name (see :meth:`set_timing`)."""
        return dataclasses.asdict(self._ctx.timing)

    def fail_restores(self, on: bool = True) -> None:
        """Restore jobs started from now on end with their Progress ``failed``."""
        self._store.restores_fail = on

    def imports(self) -> list[dict[str, Any]]:
        """The simulator's own record of every import, oldest first.

        Keys: id, filename (stored name), size, sha256 (of the stored upload), workflow_state,
        created_at, params (the create parameters as received), user_id.
        """
        return self._store.records()

    def restores(self) -> list[tuple[int, dict[str, bool]]]:
        """(import id, options as received) of every restore_states job, oldest first."""
        return [(p.batch_id, dict(p.options)) for p in self._store.progresses()]

    def request_log(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request, in order; status 0 = no answer sent."""
        return self._ctx.log.entries()

    def wait_all_final(self, timeout: float) -> bool:
        """Wait until no import is pending or running, no errors attachment is due and no
        restore job is unfinished.

        Imports that never move (left ``initializing``, or "stuck" by set_outcome) are
        ignored. Returns False if that did not happen within ``timeout`` seconds.
        """
        return self._runner.wait_settled(timeout)

