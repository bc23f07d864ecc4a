""":class:`FakeCanvas`: the Canvas simulator as one object a test starts, steers and stops.

It builds the parts and wires them: a :class:`~.store.Store` for the batches, a
:class:`~.runner.Runner` that moves them along in time, a :class:`~.context.SimContext` with
the account's knobs, tokens, faults and request log, and the HTTP :class:`~.http.Server`
that answers over that context. Its methods change the same context the ``/_sim/`` control
endpoints change.
"""

from __future__ import annotations

import socket
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from sisdropd.simulator.context import SimContext, Tokens
from sisdropd.simulator.http import Server
from sisdropd.simulator.model import Timing, user_json
from sisdropd.simulator.runner import Runner
from sisdropd.simulator.store import Store


class FakeCanvas:
    """The simulator: one root account, its tokens and users, its SIS imports.

    Given the constructor options, :meth:`start` binds ``host:port`` (0 = a free port) and
    serves in daemon threads; :meth:`stop` ends serving, closes open connections, joins every
    thread and removes the temporary storage it made. ``url`` is the base URL (API under
    ``/api/v1``). ``sub_accounts`` holds account ids that are sub-accounts (400 on SIS
    imports); other unknown ids are 404. ``known_terms`` (None = any) are the valid
    ``batch_mode_term_id`` values (with or without ``sis_term_id:``).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str = "sim-token",
        account_id: str = "1",
        user_id: int = 17,
        storage_dir: Path | None = None,
        import_seconds: float = 1.0,
        start_delay: float = 0.0,
        errors_attachment_delay: float = 0.3,
        known_terms: set[str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.user_id = user_id
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if storage_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fakecanvas-")
            storage_dir = Path(self._tmp.name)
        self.storage_dir = Path(storage_dir)
        self._store = Store(self.storage_dir)
        timing = Timing(
            import_seconds=import_seconds,
            start_delay=start_delay,
            errors_attachment_delay=errors_attachment_delay,
        )
        self._runner = Runner(self._store, timing)
        self._ctx = SimContext(
            account_id=str(account_id),
            store=self._store,
            timing=timing,
            tokens=Tokens(token, user_json(user_id, "SIS Integration")),
            incoming=self.storage_dir / "incoming",
            known_terms=known_terms,
        )
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
    def account_id(self) -> str:
        return self._ctx.account_id

    @property
    def known_terms(self) -> set[str] | None:
        return self._ctx.known_terms

    @known_terms.setter
    def known_terms(self, terms: set[str] | None) -> None:
        self._ctx.known_terms = None if terms is None else set(terms)

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

    def set_token(self, token: str) -> None:
        """Make ``token`` the only valid one; the old one now gets 401 Invalid access token."""
        self._ctx.tokens.set_only(token)

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

    def set_outcome(self, name_pattern: str, state: str, *, seconds: float | None = None) -> None:
        """Uploads whose stored name matches ``name_pattern`` end in ``state``.

        ``state`` is a terminal state or "stuck" (stays ``created`` for ever, others still
        run); ``seconds`` overrides import_seconds for them. The rule is looked up when the
        import is about to start; the latest matching rule wins.
        """
        self._store.set_outcome(name_pattern, state, seconds)

    def imports(self) -> list[dict[str, Any]]:
        """The simulator's own record of every import, oldest first.

        Keys: id, filename (stored name), size, sha256 (of the stored upload), workflow_state,
        created_at, params (the create parameters as received), user_id.
        """
        return self._store.records()

    def request_log(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request, in order; status 0 = no answer sent."""
        return self._ctx.log.entries()

    def wait_all_final(self, timeout: float) -> bool:
        """Wait until no import is pending or running and no errors attachment is due.

        Imports that never move (left ``initializing``, or "stuck" by set_outcome) are
        ignored. Returns False if that did not happen within ``timeout`` seconds.
        """
        return self._runner.wait_settled(timeout)
