"""The simulator's own control endpoints, under ``/_sim/`` (not part of Canvas).

Tests and scripts that run the simulator in another process steer it here exactly as
in-process tests do through :class:`~sisdropd.simulator.FakeCanvas`'s methods: both change
the same :class:`~.context.SimContext`. Bodies are JSON objects; answers are
``{"ok": true}`` (or the data asked for), 400 with ``{"error": ...}`` for a bad request.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sisdropd.simulator.context import SimContext
from sisdropd.simulator.wire import NOT_FOUND, Reply, Request, json_reply


class ControlEndpoints:
    """``/_sim/...`` over the context ``ctx``."""

    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx

    def route(self, req: Request) -> Reply:
        """Answer one ``/_sim/`` request."""
        ctx = self.ctx
        if req.method == "GET":
            if req.path == "/_sim/imports":
                return _ok(ctx.store.records())
            if req.path == "/_sim/requests":
                return _ok(ctx.log.entries())
            if req.path == "/_sim/faults":
                return _ok(ctx.faults.served())
            return json_reply(404, NOT_FOUND, rate=False)
        try:
            body = json.loads(req.read_small() or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            handler = _POST.get(req.path) if req.method == "POST" else None
            if handler is None:
                return json_reply(404, NOT_FOUND, rate=False)
            result = handler(ctx, body)
        except (ValueError, KeyError, TypeError, re.error) as exc:
            return json_reply(400, {"error": str(exc)}, rate=False)
        return _ok({"ok": True} if result is None else result)


def _ok(obj: Any) -> Reply:
    return json_reply(200, obj, rate=False)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _faults(ctx: SimContext, req: dict[str, Any]) -> None:
    ctx.faults.inject(
        str(req["fault"]),
        method=req.get("method"),
        path=req.get("path"),
        count=int(req.get("count", 1)),
        delay=float(req.get("delay", 0.0)),
    )


def _outcome(ctx: SimContext, req: dict[str, Any]) -> None:
    ctx.store.set_outcome(
        str(req["pattern"]), str(req["state"]), _optional_float(req.get("seconds"))
    )


def _token(ctx: SimContext, req: dict[str, Any]) -> None:
    ctx.tokens.set_only(str(req["token"]))


_POST = {
    "/_sim/faults": _faults,
    "/_sim/outcome": _outcome,
    "/_sim/token": _token,
}
