"""The SIS Import endpoints of the Canvas simulator, answered as Canvas answers them.

:class:`SisEndpoints` serves one account's ``.../sis_imports`` routes once the server has
checked the token and the account (reference §2 create, in Canvas's order of work §2.4;
§4 show, list, importing, abort, abort_all_pending, errors; §8 pagination) and the file
downloads (``/files/:id/download``), restore_states and its Progress (§4). It reads and changes state only through the
:class:`~.context.SimContext` it is given.
"""

from __future__ import annotations

import itertools
import json
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from sisdropd.simulator.context import PERMISSIONS, Grant, SimContext
from sisdropd.simulator.model import WORKFLOW_STATES, Batch, parse_time, truthy
from sisdropd.simulator.upload import (
    BadBody,
    parse_header_params,
    receive_multipart,
    receive_raw,
)
from sisdropd.simulator.wire import NOT_FOUND, UNAUTHORIZED, Reply, Request, json_reply

_RAW_EXT = {"application/zip": "zip", "text/csv": "csv", "text/plain": "csv", "text/xml": "xml"}
_DROP_STATUSES = {"deleted", "completed", "inactive", "deleted_last_completed"}
_USER_REMOVE_STATUSES = {"deleted", "suspended"}
_NEEDS = {"create": frozenset({"import_sis"}), "restore": frozenset({"manage_sis"})}


def _route_name(method: str, rest: list[str]) -> str | None:
    """Which SIS endpoint ``METHOD .../accounts/:id/<rest>`` is; None for no route."""
    if rest == ["sis_imports"]:
        return {"POST": "create", "GET": "list"}.get(method)
    if rest == ["sis_imports", "importing"]:
        return "importing" if method == "GET" else None
    if rest == ["sis_imports", "abort_all_pending"]:
        return "abort_all_pending" if method == "PUT" else None
    if rest == ["sis_import_errors"]:
        return "all_errors" if method == "GET" else None
    if len(rest) >= 2 and rest[0] == "sis_imports" and rest[1].isdigit():
        tail = (method, tuple(rest[2:]))
        return {
            ("GET", ()): "show",
            ("PUT", ("abort",)): "abort",
            ("PUT", ("restore_states",)): "restore",
            ("GET", ("errors",)): "errors",
        }.get(tail)
    return None


def _body_params(req: Request) -> dict[str, str]:
    """Form or JSON parameters of a small request body (restore_states)."""
    raw = req.read_small(64 * 1024)
    if not raw:
        return {}
    media, _ = parse_header_params(req.header("Content-Type"))
    if media == "application/json":
        try:
            obj = json.loads(raw)
        except ValueError:
            return {}
        return {str(k): str(v).lower() for k, v in obj.items()} if isinstance(obj, dict) else {}
    return dict(urllib.parse.parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))


class SisEndpoints:
    """Canvas's SIS Import API over the simulator's context ``ctx``."""

    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self._report_ids = itertools.count(1)

    def internal_error(self) -> dict[str, Any]:
        """Canvas's 500 body, with a fresh error report id."""
        return {
            "errors": [{"message": "An error occurred.", "error_code": "internal_server_error"}],
            "error_report_id": next(self._report_ids),
        }

    def route(self, req: Request, rest: list[str], grant: Grant) -> Reply:
        """Answer ``.../accounts/:id/<rest>`` for a token with ``grant`` (account checked)."""
        base = req.base
        method = req.method
        route = _route_name(method, rest)
        if route is None:
            return json_reply(404, NOT_FOUND)
        # §1: import_sis creates; restore_states needs manage_sis; the rest take either.
        need = _NEEDS.get(route, PERMISSIONS)
        if "unauthorized" in self.ctx.refusals or not (grant.permissions & need):
            return json_reply(401, UNAUTHORIZED)
        if route == "create":
            return self.create(req, grant.user)
        if route == "list":
            return self.list_imports(req)
        if route == "importing":
            running = self.store.select(states={"importing", "cleanup_batch"})
            return json_reply(200, {"sis_imports": self.store.render_many(running, base)})
        if route == "abort_all_pending":
            self.store.abort_all_pending()
            return json_reply(200, {"aborted": True})
        if route == "all_errors":
            return self.errors_page(req, self.store.select())
        bid = int(rest[1])
        if route == "show":
            return self._one(self.store.get(bid), base)
        if route == "abort":
            return self._one(self.store.abort(bid), base)
        if route == "restore":
            return self.restore(req, bid)
        b = self.store.get(bid)
        return self.errors_page(req, [b]) if b else json_reply(404, NOT_FOUND)

    def _one(self, b: Batch | None, base: str) -> Reply:
        return json_reply(200, self.store.render(b, base)) if b else json_reply(404, NOT_FOUND)

    # -- undo ------------------------------------------------------------------------------------

    def restore(self, req: Request, bid: int) -> Reply:
        """PUT .../sis_imports/:id/restore_states: queue the undo job, answer its Progress.

        Options come from the query or a form/JSON body. The reference (§4) says nothing of
        an import that has not finished; Canvas's controller does not look at the batch's
        state, so neither does the simulator: the job runs, its ``restoring`` write takes
        the batch off the queue (or ends its run), and it ends restored like any other.
        """
        params = {**dict(req.query), **_body_params(req)}
        options = {
            key: truthy(params.get(key))
            for key in ("batch_mode", "undelete_only", "unconclude_only")
        }
        if options["undelete_only"] and options["unconclude_only"]:
            return json_reply(
                400, {"message": "cannot set both undelete_only and unconclude_only"}
            )
        p = self.store.restore(bid, options)
        if p is None:
            return json_reply(404, NOT_FOUND)
        return json_reply(200, self.store.render_progress(p, req.base))

    def progress(self, req: Request, pid: str) -> Reply:
        """GET /api/v1/progress/:id."""
        p = self.store.progress(int(pid)) if pid.isdigit() else None
        if p is None:
            return json_reply(404, NOT_FOUND)
        return json_reply(200, self.store.render_progress(p, req.base))

    # -- create ---------------------------------------------------------------------------------

    def create(self, req: Request, user: dict[str, Any]) -> Reply:
        """POST .../sis_imports, in Canvas's order of work (reference §2.4)."""
        media, cparams = parse_header_params(req.header("Content-Type"))
        incoming = self.ctx.incoming / f"{uuid.uuid4().hex}.part"
        query = dict(req.query)
        try:
            multipart = media == "multipart/form-data"
            file_name: str | None = None
            if multipart:
                boundary = cparams.get("boundary")
                if not boundary:
                    raise BadBody("multipart without boundary")
                mp = receive_multipart(req.body, boundary, incoming)
                params = {**query, **mp.params}
                file_name, size = mp.file_name, mp.size
            else:
                size = receive_raw(req.body, incoming)
                params = query
            itype = params.get("import_type")
            if itype and itype != "instructure_csv":
                return json_reply(500, self.internal_error())
            if multipart:
                if file_name is None:
                    return json_reply(400, {"error": True, "error_message": "Missing attachment"})
                stored = file_name
            else:
                ext = params.get("extension")
                if not ext:
                    charset = cparams.get("charset", "").strip('"')
                    if charset and charset.lower() != "utf-8":
                        return json_reply(400, {"error": "Invalid content type, UTF-8 required"})
                    ext = _RAW_EXT.get(media, "zip")
                stored = f"sis_import.{ext}"
            if truthy(params.get("batch_mode")):  # step 4: only checked with batch_mode
                term = params.get("batch_mode_term_id")
                if term:  # given but not an active term: api_find's 404
                    if not self.ctx.term_exists(term):
                        return json_reply(404, NOT_FOUND)
                elif "multi_term_batch_mode" not in params:
                    msg = "Batch mode specified, but the given batch_mode_term_id cannot be found."
                    return json_reply(400, {"message": msg})
            suffix = Path(stored).suffix.lower()
            kind = {".csv": "csv", ".zip": "zip"}.get(suffix, "none")
            batch = self.store.create(
                stored_name=stored,
                upload=incoming,
                size=size,
                kind=kind,
                params=params,
                user=user,
            )
            problem = _late_checks(params)
            if problem is not None:
                return problem  # the batch stays "initializing" for ever, as in Canvas
            self.store.queue(batch)
            return json_reply(200, self.store.render(batch, req.base))
        finally:
            incoming.unlink(missing_ok=True)

    # -- lists ---------------------------------------------------------------------------------

    def list_imports(self, req: Request) -> Reply:
        """GET .../sis_imports: newest first, filtered, one page."""
        q = dict(req.query)
        since = parse_time(q["created_since"]) if q.get("created_since") else None
        before = parse_time(q["created_before"]) if q.get("created_before") else None
        wanted = {v for k, v in req.query if k in ("workflow_state[]", "workflow_state")}
        states = {s for s in wanted if s in WORKFLOW_STATES} or None
        batches = self.store.select(since=since, before=before, states=states)
        page, per_page = _paging(req.query)
        start = (page - 1) * per_page
        items = batches[start : start + per_page]
        link = _links(req, page, per_page, len(batches) > start + per_page)
        body = {"sis_imports": self.store.render_many(items, req.base)}
        return json_reply(200, body, headers=[link])

    def errors_page(self, req: Request, batches: list[Batch]) -> Reply:
        """One page of SisBatchError rows of ``batches``."""
        failure = truthy(dict(req.query).get("failure"))
        page, per_page = _paging(req.query)
        every = itertools.chain.from_iterable(
            ((b, m) for m in self.store.messages(b, failure_only=failure)) for b in batches
        )
        chunk = list(itertools.islice(every, (page - 1) * per_page, page * per_page + 1))
        items = [
            {
                "sis_import_id": b.id,
                "file": m.file,
                "message": m.message,
                "row": m.row,
                "row_info": m.row_info,
            }
            for b, m in chunk[:per_page]
        ]
        link = _links(req, page, per_page, len(chunk) > per_page)
        return json_reply(200, {"sis_import_errors": items}, headers=[link])

    # -- files -----------------------------------------------------------------------------------

    def download(self, req: Request, fid: int) -> Reply:
        """GET /files/:id/download: needs the file's verifier or a valid token."""
        f = self.store.file(fid)
        if f is None:
            return json_reply(404, NOT_FOUND, rate=False)
        verified = dict(req.query).get("verifier") == f.verifier
        if not verified and self.ctx.tokens.user_of(req.bearer()) is None:
            return json_reply(401, UNAUTHORIZED, rate=False)
        return Reply(
            200,
            file=f.path,
            content_type=f.content_type,
            headers=[("Content-Disposition", f'attachment; filename="{f.filename}"')],
        )


def _late_checks(params: dict[str, str]) -> Reply | None:
    """Step 6 of §2.4: errors answered after the batch was saved."""
    if "multi_term_batch_mode" in params and not params.get("change_threshold"):
        return json_reply(
            400, {"message": "change_threshold is required to use multi term_batch mode."}
        )
    for key, allowed in (
        ("diffing_drop_status", _DROP_STATUSES),
        ("diffing_user_remove_status", _USER_REMOVE_STATUSES),
        ("batch_mode_enrollment_drop_status", _DROP_STATUSES),
    ):
        value = params.get(key)
        if value and value not in allowed:
            return json_reply(400, {"message": f"Invalid {key}"})
    ident = params.get("diffing_data_set_identifier") or ""
    if len(ident) > 128:
        name = "diffing_data_set_identifier"
        too_long = {
            "attribute": name,
            "type": "too_long",
            "message": "is too long (maximum is 128 characters)",
        }
        return json_reply(422, {"errors": {name: [too_long]}})
    return None


def _paging(query: list[tuple[str, str]]) -> tuple[int, int]:
    q = dict(query)
    try:
        per_page = max(1, min(100, int(q.get("per_page", "10"))))
    except ValueError:
        per_page = 10
    try:
        page = max(1, int(q.get("page", "1")))
    except ValueError:
        page = 1
    return page, per_page


def _links(req: Request, page: int, per_page: int, has_next: bool) -> tuple[str, str]:
    """Canvas's Link header: current, next, prev, first (never last)."""
    keep = [(k, v) for k, v in req.query if k not in ("page", "per_page", "access_token")]

    def url(p: int) -> str:
        qs = urllib.parse.urlencode([*keep, ("page", str(p)), ("per_page", str(per_page))])
        return f"{req.base}{req.path}?{qs}"

    rels = [("current", page)]
    if has_next:
        rels.append(("next", page + 1))
    if page > 1:
        rels.append(("prev", page - 1))
    rels.append(("first", 1))
    return ("Link", ",".join(f'<{url(p)}>; rel="{rel}"' for rel, p in rels))
