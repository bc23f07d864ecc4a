"""What the HTTP side of the Canvas simulator works on: one explicit context object.

:class:`SimContext` gathers the simulated account's knobs (its id, sub-accounts, terms),
the valid tokens and their users, the queue of injected faults, the request log, the store
of batches and the timings. :class:`~sisdropd.simulator.FakeCanvas` builds one and hands it
to the server; tests change it through the facade's methods or the ``/_sim/`` endpoints.
The small registries here are thread-safe; plain fields are read afresh at each request.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sisdropd.simulator.model import Timing
from sisdropd.simulator.store import Store

FAULTS = ("500", "502", "503", "429", "403_rate_limit", "401", "drop", "drop_after", "delay")


@dataclass
class Fault:
    """One queued fault: ``name`` (see FAULTS) for ``left`` more matching requests."""

    name: str
    method: str | None
    path: re.Pattern[str] | None
    left: int
    delay: float


class FaultQueue:
    """Faults injected by a test, consumed FIFO by the requests they match."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._served: Counter[str] = Counter()

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

        Raises ValueError for an unknown fault name, a count below 1 or a bad regex.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
        if count < 1:
            raise ValueError("count must be at least 1")
        try:
            rx = re.compile(path) if path is not None else None
        except re.error as exc:
            raise ValueError(f"bad path pattern: {exc}") from exc
        with self._lock:
            self._faults.append(Fault(fault, method.upper() if method else None, rx, count, delay))

    def take(self, method: str, path: str) -> Fault | None:
        """The first queued fault matching this request (consuming one use), or None."""
        with self._lock:
            for f in self._faults:
                if (f.method is None or f.method == method) and (
                    f.path is None or f.path.search(path)
                ):
                    f.left -= 1
                    if f.left <= 0:
                        self._faults.remove(f)
                    self._served[f.name] += 1
                    return f
        return None

    def served(self) -> dict[str, int]:
        """How many requests each fault kind has been applied to so far."""
        with self._lock:
            return dict(self._served)


class RequestLog:
    """(method, path, status) of every request, in order; status 0 = no answer sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[tuple[str, str, int]] = []

    def record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._entries.append((method, path, status))

    def entries(self) -> list[tuple[str, str, int]]:
        with self._lock:
            return list(self._entries)


class Tokens:
    """The access tokens Canvas accepts, each belonging to a Canvas user."""

    def __init__(self, token: str, user: dict[str, Any]) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, dict[str, Any]] = {token: dict(user)}
        self.primary = token

    def set_only(self, token: str) -> None:
        """Make ``token`` the only valid one, for the primary token's user."""
        with self._lock:
            user = self._users[self.primary]
            self._users = {token: user}
            self.primary = token

    def user_of(self, token: str) -> dict[str, Any] | None:
        """The user a valid token belongs to; None for an unknown token."""
        with self._lock:
            user = self._users.get(token)
            return dict(user) if user is not None else None


@dataclass
class SimContext:
    """Everything a request to the simulator may read or change.

    ``account_id``: the root account (also reachable as ``self`` and ``sis_account_id:...``);
    ``sub_accounts``: ids answered as sub-accounts (400); other ids are unknown (404).
    ``known_terms``: the valid ``batch_mode_term_id`` values, None = any. ``incoming``: where
    uploads are received before a batch owns them. ``stop``: set when the simulator stops
    (a ``delay`` fault ends early then). ``url``: the base URL once serving.
    """

    account_id: str
    store: Store
    timing: Timing
    tokens: Tokens
    incoming: Path
    known_terms: set[str] | None = None
    sub_accounts: set[str] = field(default_factory=lambda: {"2"})
    faults: FaultQueue = field(default_factory=FaultQueue)
    log: RequestLog = field(default_factory=RequestLog)
    stop: threading.Event = field(default_factory=threading.Event)
    url: str = ""
