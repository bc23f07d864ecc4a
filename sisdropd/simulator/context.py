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
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sisdropd.simulator.model import Timing
from sisdropd.simulator.store import Store

# "drop": hang up after the request's headers; "drop_read": read the whole request, then hang
# up without acting on it (a proxy died: the client cannot tell it from a lost answer);
# "drop_after": act on the request, then hang up before the answer.
FAULTS = ("500", "502", "503", "429", "403_rate_limit", "401", "drop", "drop_read", "drop_after", "delay")


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


PERMISSIONS = frozenset({"import_sis", "manage_sis"})
# Account-wide refusals a test can switch on (reference §7), in the order Canvas checks them.
REFUSALS = ("expired_token", "unknown_account", "sis_disabled", "sub_account", "unauthorized")


@dataclass(frozen=True)
class Grant:
    """What one access token is: the Canvas ``user`` it belongs to and its permissions."""

    user: dict[str, Any]
    permissions: frozenset[str]


class Tokens:
    """The access tokens Canvas accepts, each belonging to a Canvas user.

    ``primary`` is the token set last by the constructor or :meth:`set_only`.
    """

    def __init__(self, token: str, user: dict[str, Any]) -> None:
        self._lock = threading.Lock()
        self._grants: dict[str, Grant] = {token: Grant(dict(user), PERMISSIONS)}
        self.primary = token

    def set_only(self, token: str, user: dict[str, Any] | None = None) -> None:
        """Make ``token`` the only valid one, for ``user`` (default: the primary's user)."""
        _check_token(token)
        with self._lock:
            old = self._grants[self.primary] if self.primary in self._grants else None
            if user is None and old is None:
                raise ValueError("no user for the new token")
            grant = Grant(dict(user), PERMISSIONS) if user is not None else old
            assert grant is not None
            self._grants = {token: grant}
            self.primary = token

    def add(
        self, token: str, user: dict[str, Any], permissions: frozenset[str] = PERMISSIONS
    ) -> None:
        """Make ``token`` valid too, for ``user``, with ``permissions`` (a subset of
        import_sis and manage_sis); the tokens valid before stay valid."""
        _check_token(token)
        unknown = set(permissions) - PERMISSIONS
        if unknown:
            raise ValueError(f"unknown permission(s) {sorted(unknown)}; known: {sorted(PERMISSIONS)}")
        with self._lock:
            self._grants[token] = Grant(dict(user), frozenset(permissions))

    def remove(self, token: str) -> bool:
        """Revoke ``token`` (it now gets 401 Invalid access token); False if unknown."""
        with self._lock:
            return self._grants.pop(token, None) is not None

    def grant(self, token: str) -> Grant | None:
        """What a valid token is; None for an unknown one."""
        with self._lock:
            return self._grants.get(token)

    def user_of(self, token: str) -> dict[str, Any] | None:
        """The user a valid token belongs to; None for an unknown token."""
        g = self.grant(token)
        return dict(g.user) if g is not None else None


def _check_token(token: str) -> None:
    if not token or any(c.isspace() or ord(c) < 32 for c in token):
        raise ValueError("a token must be non-empty, without spaces or control characters")


@dataclass
class SimContext:
    """Everything a request to the simulator may read or change.

    ``account_id``: the root account (also reachable as ``self`` and ``sis_account_id:...``);
    ``sub_accounts``: ids answered as sub-accounts (400); other ids are unknown (404).
    ``known_terms``: the account's active terms, None = any: SIS term ids (found as
    ``sis_term_id:<id>``) and Canvas ids (all digits, found as given). ``refusals``: the
    account-wide refusals switched on (see REFUSALS), each with the time it began.
    ``control_token``: when set, the ``/_sim/`` endpoints require it as a Bearer token.
    ``incoming``: where uploads are received before a batch owns them. ``stop``: set when
    the simulator stops (a ``delay`` fault ends early then). ``url``: the base URL once
    serving. Fields are replaced whole (never mutated in place), so readers need no lock.
    """

    account_id: str
    store: Store
    timing: Timing
    tokens: Tokens
    incoming: Path
    known_terms: frozenset[str] | None = None
    sub_accounts: set[str] = field(default_factory=lambda: {"2"})
    refusals: dict[str, float] = field(default_factory=dict)
    control_token: str | None = None
    faults: FaultQueue = field(default_factory=FaultQueue)
    log: RequestLog = field(default_factory=RequestLog)
    stop: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def refuse(self, kind: str, on: bool = True) -> None:
        """Switch the account-wide refusal ``kind`` on or off; ValueError if unknown."""
        if kind not in REFUSALS:
            raise ValueError(f"unknown refusal {kind!r}; one of {', '.join(REFUSALS)}")
        now = dict(self.refusals)
        if on:
            now.setdefault(kind, time.time())
        else:
            now.pop(kind, None)
        self.refusals = now

    def set_terms(self, terms: Iterable[str] | None) -> None:
        """The account's active terms from now on (None: every term exists)."""
        if isinstance(terms, str):
            raise ValueError("terms must be a list of term ids, not one string")
        self.known_terms = None if terms is None else frozenset(str(t) for t in terms)

    def term_exists(self, ref: str) -> bool:
        """Whether a ``batch_mode_term_id`` names an active term: ``sis_term_id:X`` by SIS
        id, digits by Canvas id; anything else is never found (Canvas's api_find)."""
        known = self.known_terms
        if known is None:
            return True
        if ref.startswith("sis_term_id:"):
            return ref.removeprefix("sis_term_id:") in known
        return ref.isdigit() and ref in known
