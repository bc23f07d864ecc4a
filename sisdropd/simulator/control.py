"""The simulator's own control endpoints, under ``/_sim/`` (not part of Canvas).

Tests and scripts that run the simulator in another process steer it here exactly as
in-process tests do through :class:`~sisdropd.simulator.FakeCanvas`'s methods: both change
the same :class:`~.context.SimContext`. Bodies are JSON objects; answers are
``{"ok": true}`` (or the data asked for), 400 with ``{"error": ...}`` for a bad request.
When the context has a ``control_token`` (a simulator serving beyond loopback), every
``/_sim/`` request must carry it as ``Authorization: Bearer <token>``, else 401.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable
from typing import Any

from sisdropd.simulator.context import PERMISSIONS, SimContext
from sisdropd.simulator.model import user_json
from sisdropd.simulator.wire import NOT_FOUND, Reply, Request, json_reply

FOREIGN_USER_ID = 99
FOREIGN_CSV = b"user_id,login_id,status\nother-1,other.one,active\n"


class ControlEndpoints:
    """``/_sim/...`` over the context ``ctx``."""

    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx

    def route(self, req: Request) -> Reply:
        """Answer one ``/_sim/`` request."""
        ctx = self.ctx
        if ctx.control_token is not None and not hmac.compare_digest(
            req.bearer().encode(), ctx.control_token.encode()
        ):
            return json_reply(401, {"error": "the control token is required"}, rate=False)
        if req.method == "GET":
            if req.path == "/_sim/imports":
                return _ok(ctx.store.records())
            if req.path == "/_sim/requests":
                return _ok(ctx.log.entries())
            if req.path == "/_sim/faults":
                return _ok(ctx.faults.served())
            if req.path == "/_sim/refusals":
                return _ok(sorted(ctx.refusals))
            return json_reply(404, NOT_FOUND, rate=False)
        handler = _POST.get(req.path) if req.method == "POST" else None
        if handler is None:
            return json_reply(404, NOT_FOUND, rate=False)
        try:
            body = json.loads(req.read_small() or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            result = handler(ctx, body)
        except (ValueError, KeyError, TypeError, re.error) as exc:
            return json_reply(400, {"error": f"{type(exc).__name__}: {exc}"}, rate=False)
        return _ok({"ok": True} if result is None else result)


def _ok(obj: Any) -> Reply:
    return json_reply(200, obj, rate=False)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


# -- operations shared by the facade's methods and the endpoints ---------------------------------


def add_token(
    ctx: SimContext,
    token: str,
    user_id: int,
    *,
    name: str | None = None,
    permissions: frozenset[str] | set[str] | None = None,
) -> None:
    """Make ``token`` valid for Canvas user ``user_id`` (see FakeCanvas.add_token)."""
    user = user_json(int(user_id), name or f"User {user_id}")
    ctx.tokens.add(token, user, PERMISSIONS if permissions is None else frozenset(permissions))


def foreign_import(
    ctx: SimContext,
    *,
    seconds: float | None,
    user_id: int = FOREIGN_USER_ID,
    name: str = "other_integration.csv",
    content: bytes = FOREIGN_CSV,
) -> int:
    """Another Canvas user's import, queued now (see FakeCanvas.foreign_import); its id."""
    if seconds is not None and not float(seconds) >= 0:
        raise ValueError("seconds must be >= 0 (or None: until released)")
    user = user_json(int(user_id), "Other Integration")
    b = ctx.store.foreign_import(user=user, name=name, content=content, seconds=seconds)
    return b.id


# -- the endpoints --------------------------------------------------------------------------------


def _faults(ctx: SimContext, req: dict[str, Any]) -> None:
    ctx.faults.inject(
        str(req["fault"]),
        method=req.get("method"),
        path=req.get("path"),
        count=int(req.get("count", 1)),
        delay=float(req.get("delay", 0.0)),
    )


def _outcome(ctx: SimContext, req: dict[str, Any]) -> None:
    state = req.get("state")
    message = req.get("error_message")
    ctx.store.set_outcome(
        str(req["pattern"]),
        None if state is None else str(state),
        _float(req.get("seconds")),
        attachments_delay=_float(req.get("attachments_delay")),
        error_message=None if message is None else str(message),
    )


def _token(ctx: SimContext, req: dict[str, Any]) -> None:
    ctx.tokens.set_only(str(req["token"]))


def _tokens_add(ctx: SimContext, req: dict[str, Any]) -> None:
    perms = req.get("permissions")
    add_token(
        ctx,
        str(req["token"]),
        int(req["user_id"]),
        name=req.get("name"),
        permissions=None if perms is None else {str(p) for p in perms},
    )


def _tokens_remove(ctx: SimContext, req: dict[str, Any]) -> dict[str, Any]:
    return {"removed": ctx.tokens.remove(str(req["token"]))}


def _foreign(ctx: SimContext, req: dict[str, Any]) -> dict[str, Any]:
    iid = foreign_import(
        ctx,
        seconds=_float(req.get("seconds")),
        user_id=int(req.get("user_id", FOREIGN_USER_ID)),
    )
    return {"id": iid}


def _release(ctx: SimContext, req: dict[str, Any]) -> dict[str, Any]:
    iid = req.get("id")
    return {"released": ctx.store.release(None if iid is None else int(iid))}


def _refusal(ctx: SimContext, req: dict[str, Any]) -> None:
    ctx.refuse(str(req["kind"]), bool(req.get("on", True)))


def _terms(ctx: SimContext, req: dict[str, Any]) -> None:
    terms = req["terms"]
    if terms is not None and not isinstance(terms, list):
        raise ValueError("terms must be a list or null")
    ctx.set_terms(terms)


def _timing(ctx: SimContext, req: dict[str, Any]) -> None:
    ctx.timing.update(**{str(k): _float(v) for k, v in req.items()})


def _restores(ctx: SimContext, req: dict[str, Any]) -> None:
    ctx.store.restores_fail = bool(req["fail"])


_POST: dict[str, Callable[[SimContext, dict[str, Any]], Any]] = {
    "/_sim/faults": _faults,
    "/_sim/outcome": _outcome,
    "/_sim/token": _token,
    "/_sim/tokens": _tokens_add,
    "/_sim/tokens/remove": _tokens_remove,
    "/_sim/foreign": _foreign,
    "/_sim/release": _release,
    "/_sim/refusal": _refusal,
    "/_sim/terms": _terms,
    "/_sim/timing": _timing,
    "/_sim/restores": _restores,
}
