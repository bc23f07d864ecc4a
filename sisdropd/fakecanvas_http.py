"""HTTP side of the Canvas simulator: the server, and every Canvas endpoint it answers.

:class:`Api` turns one request into one answer the way Canvas would (reference §1-§4, §7,
§8): token check and 401 bodies, root/sub-account checks, the create flow in Canvas's order
of work (§2.4), show/list/importing/abort/abort_all_pending/errors with Canvas's pagination,
the errors-attachment download, rate-limit headers, and the faults queued with
:meth:`sisdropd.fakecanvas.FakeCanvas.inject`. State lives in the simulator's
:class:`~sisdropd.fakecanvas_store.Store`.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import threading
import time
import traceback
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sisdropd.fakecanvas_model import WORKFLOW_STATES, Batch, parse_time, truthy
from sisdropd.fakecanvas_upload import (
    CHUNK,
    BadBody,
    BodyReader,
    ClientGone,
    parse_header_params,
    receive_multipart,
    receive_raw,
)

if TYPE_CHECKING:
    from sisdropd.fakecanvas import FakeCanvas

_STATUS_FAULTS = {"500", "502", "503", "429", "403_rate_limit", "401"}
_RAW_EXT = {"application/zip": "zip", "text/csv": "csv", "text/plain": "csv", "text/xml": "xml"}
_DROP_STATUSES = {"deleted", "completed", "inactive", "deleted_last_completed"}
_USER_REMOVE_STATUSES = {"deleted", "suspended"}
_NOT_FOUND = {"errors": [{"message": "The specified resource does not exist."}]}
_UNAUTHENTICATED = {
    "status": "unauthenticated",
    "errors": [{"message": "user authorization required"}],
}
_INVALID_TOKEN = {"errors": [{"message": "Invalid access token."}]}
_UNAUTHORIZED = {
    "status": "unauthorized",
    "errors": [{"message": "user not authorized to perform that action"}],
}
_WWW_AUTH = ("WWW-Authenticate", 'Bearer realm="canvas-lms"')
_RATE_MAX = 700.0
_RATE_LEAK = 10.0


@dataclass
class _Response:
    """One HTTP answer; ``rate`` adds Canvas's rate-limit headers."""

    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    file: Path | None = None
    rate: bool = False


def _json(
    status: int, obj: Any, *, rate: bool = True, headers: list[tuple[str, str]] | None = None
) -> _Response:
    return _Response(status, json.dumps(obj).encode(), rate=rate, headers=headers or [])


class Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its simulator and tracks handler threads."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], sim: FakeCanvas, family: int) -> None:
        self.sim = sim
        self.api = Api(sim)
        self.address_family = family
        super().__init__(addr, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        self.sim._add_thread(t)
        t.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that vanished mid-request is routine here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeCanvas/1.0"
    timeout = 120
    server: Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.sim._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sim._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.api.handle(self)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET


class Api:
    """Canvas's answers for one simulator ``sim`` (its token, account, store and faults)."""

    def __init__(self, sim: FakeCanvas) -> None:
        self.sim = sim
        self.store = sim._store
        self._rate_lock = threading.Lock()
        self._bucket = 0.0
        self._bucket_t = time.monotonic()
        self._report_ids = itertools.count(1)

    def handle(self, h: _Handler) -> None:
        """Answer one request (or drop it, as the queued faults say)."""
        t0 = time.monotonic()
        method = h.command.upper()
        split = urllib.parse.urlsplit(h.path)
        path = split.path
        status = 0
        try:
            fault = None if path.startswith("/_sim/") else self.sim._take_fault(method, path)
            if fault is not None and fault.name == "drop":
                self._drop(h)
                return
            if fault is not None and fault.name == "delay":
                self.sim._stop_event.wait(fault.delay)
            body = self._body(h)
            if body is None:
                resp = _json(400, {"errors": [{"message": "Bad Request"}]}, rate=False)
                h.close_connection = True
            elif fault is not None and fault.name in _STATUS_FAULTS:
                body.drain()
                resp = self._fault_response(fault.name)
            else:
                try:
                    resp = self._route(h, method, path, split.query, body)
                    body.drain()
                except BadBody:
                    resp = _json(400, {"errors": [{"message": "Bad Request"}]}, rate=False)
                    h.close_connection = True
                except (ClientGone, OSError):
                    raise
                except Exception:  # a simulator bug: answer like Canvas does, keep serving
                    traceback.print_exc()
                    resp = _json(500, self._internal_error())
                    h.close_connection = True
            if fault is not None and fault.name == "drop_after":
                self._drop(h)
                return
            self._send(h, resp, t0)
            status = resp.status
        except (ClientGone, OSError):
            h.close_connection = True
        finally:
            self.sim._record(method, path, status)

    @staticmethod
    def _body(h: _Handler) -> BodyReader | None:  # rfile is a BinaryIO in practice
        te = (h.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            return BodyReader(h.rfile, length=None, chunked=True)  # type: ignore[arg-type]
        cl = h.headers.get("Content-Length")
        if cl is None:
            return BodyReader(h.rfile, length=0, chunked=False)  # type: ignore[arg-type]
        try:
            length = int(cl)
        except ValueError:
            return None
        return BodyReader(h.rfile, length=length, chunked=False) if length >= 0 else None  # type: ignore[arg-type]

    @staticmethod
    def _drop(h: _Handler) -> None:
        h.close_connection = True
        try:
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _rate_headers(self, cost: float) -> list[tuple[str, str]]:
        with self._rate_lock:
            now = time.monotonic()
            self._bucket = max(0.0, self._bucket - (now - self._bucket_t) * _RATE_LEAK) + cost
            self._bucket_t = now
            remaining = _RATE_MAX - self._bucket
        return [("X-Request-Cost", f"{cost:.7f}"), ("X-Rate-Limit-Remaining", f"{remaining:.1f}")]

    def _send(self, h: _Handler, resp: _Response, t0: float) -> None:
        h.send_response(resp.status)
        headers = list(resp.headers)
        if resp.rate:
            headers += self._rate_headers(0.001 + time.monotonic() - t0)
        size = resp.file.stat().st_size if resp.file is not None else len(resp.body)
        headers += [("Content-Type", resp.content_type), ("Content-Length", str(size))]
        if h.close_connection:
            headers.append(("Connection", "close"))
        for k, v in headers:
            h.send_header(k, v)
        h.end_headers()
        if h.command == "HEAD":
            return
        if resp.file is not None:
            with open(resp.file, "rb") as fh:
                while block := fh.read(CHUNK):
                    h.wfile.write(block)
        else:
            h.wfile.write(resp.body)

    def _fault_response(self, name: str) -> _Response:
        if name == "500":
            return _json(500, self._internal_error())
        if name == "502":
            return _json(502, {"errors": [{"message": "Bad Gateway"}]}, rate=False)
        if name == "503":
            return _json(503, {"errors": [{"message": "Service Unavailable"}]}, rate=False)
        if name == "429":
            return _json(
                429,
                {"errors": [{"message": "Too Many Requests"}]},
                rate=False,
                headers=[("Retry-After", "1")],
            )
        if name == "403_rate_limit":
            return _Response(
                403,
                b"403 Forbidden (Rate Limit Exceeded)",
                content_type="text/plain; charset=utf-8",
                headers=[("X-Rate-Limit-Remaining", "0.0")],
            )
        return _json(401, _INVALID_TOKEN, rate=False, headers=[_WWW_AUTH])

    def _internal_error(self) -> dict[str, Any]:
        return {
            "errors": [{"message": "An error occurred.", "error_code": "internal_server_error"}],
            "error_report_id": next(self._report_ids),
        }

    # -- routing -----------------------------------------------------------------------------

    def _route(self, h: _Handler, method: str, path: str, qs: str, body: BodyReader) -> _Response:
        query = urllib.parse.parse_qsl(qs, keep_blank_values=True)
        if path.startswith("/_sim/"):
            return self._sim_route(method, path, body)
        m = re.fullmatch(r"/files/(\d+)/download", path)
        if m and method == "GET":
            return self._download(h, int(m.group(1)), dict(query))
        if not path.startswith("/api/v1/"):
            return _json(404, _NOT_FOUND, rate=False)
        given = self._token_of(h, query)
        if not given:
            return _json(401, _UNAUTHENTICATED, rate=False, headers=[_WWW_AUTH])
        if given != self.sim.token:
            return _json(401, _INVALID_TOKEN, rate=False, headers=[_WWW_AUTH])
        api = path[len("/api/v1") :].removesuffix(".json")
        parts = [urllib.parse.unquote(p) for p in api.strip("/").split("/")]
        if parts == ["users", "self"] and method == "GET":
            return _json(200, dict(self.store.user))
        if len(parts) < 2 or parts[0] != "accounts":
            return _json(404, _NOT_FOUND)
        acct, rest = parts[1], parts[2:]
        if not rest and method == "GET":
            return self._account_json(acct)
        problem = self._check_account(acct)
        if problem is not None:
            return problem
        return self._sis_route(h, method, rest, query, body)

    def _sis_route(
        self,
        h: _Handler,
        method: str,
        rest: list[str],
        query: list[tuple[str, str]],
        body: BodyReader,
    ) -> _Response:
        base = self._base(h)
        if rest == ["sis_imports"]:
            if method == "POST":
                return self._create(h, dict(query), body)
            if method == "GET":
                return self._list(h, query)
        elif rest == ["sis_imports", "importing"] and method == "GET":
            running = [
                b for b in self.store.select() if b.workflow_state in ("importing", "cleanup_batch")
            ]
            return _json(200, {"sis_imports": self.store.render_many(running, base)})
        elif rest == ["sis_imports", "abort_all_pending"] and method == "PUT":
            self.store.abort_all_pending()
            return _json(200, {"aborted": True})
        elif rest == ["sis_import_errors"] and method == "GET":
            batches = self.store.select()
            return self._errors_page(h, query, batches)
        elif len(rest) >= 2 and rest[0] == "sis_imports" and rest[1].isdigit():
            bid = int(rest[1])
            if rest[2:] == [] and method == "GET":
                b = self.store.get(bid)
                return _json(200, self.store.render(b, base)) if b else _json(404, _NOT_FOUND)
            if rest[2:] == ["abort"] and method == "PUT":
                b = self.store.abort(bid)
                return _json(200, self.store.render(b, base)) if b else _json(404, _NOT_FOUND)
            if rest[2:] == ["errors"] and method == "GET":
                b = self.store.get(bid)
                return self._errors_page(h, query, [b]) if b else _json(404, _NOT_FOUND)
        return _json(404, _NOT_FOUND)

    @staticmethod
    def _token_of(h: _Handler, query: list[tuple[str, str]]) -> str:
        auth = h.headers.get("Authorization") or ""
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return next((v for k, v in query if k == "access_token"), "")

    def _base(self, h: _Handler) -> str:
        host = h.headers.get("Host")
        return f"http://{host}" if host else self.sim.url

    def _is_root(self, acct: str) -> bool:
        """``acct`` names the root account: its id, ``self`` or ``sis_account_id:...``."""
        return acct in (self.sim.account_id, "self") or acct.startswith("sis_account_id:")

    def _check_account(self, acct: str) -> _Response | None:
        if self._is_root(acct):
            return None
        if acct in self.sim.sub_accounts:
            return _json(400, {"errors": ["SIS imports can only be executed on root accounts"]})
        return _json(404, _NOT_FOUND)

    def _account_json(self, acct: str) -> _Response:
        root = int(self.sim.account_id) if self.sim.account_id.isdigit() else self.sim.account_id
        if self._is_root(acct):
            parent: Any = None
            aid: Any = root
        elif acct in self.sim.sub_accounts:
            parent, aid = root, int(acct) if acct.isdigit() else acct
        else:
            return _json(404, _NOT_FOUND)
        return _json(
            200,
            {
                "id": aid,
                "name": "Simulated University" if parent is None else f"Sub-account {aid}",
                "workflow_state": "active",
                "parent_account_id": parent,
                "root_account_id": parent,
                "uuid": uuid.uuid5(uuid.NAMESPACE_URL, f"fakecanvas/{aid}").hex,
                "default_time_zone": "Etc/UTC",
                "sis_account_id": None,
            },
        )

    # -- create ---------------------------------------------------------------------------------

    def _term_known(self, term: str) -> bool:
        if self.sim.known_terms is None:
            return True
        return (
            term in self.sim.known_terms
            or term.removeprefix("sis_term_id:") in self.sim.known_terms
        )

    def _create(self, h: _Handler, query: dict[str, str], body: BodyReader) -> _Response:
        """POST .../sis_imports, in Canvas's order of work (reference §2.4)."""
        media, cparams = parse_header_params(h.headers.get("Content-Type") or "")
        incoming = self.sim._incoming / f"{uuid.uuid4().hex}.part"
        try:
            multipart = media == "multipart/form-data"
            file_name: str | None = None
            if multipart:
                boundary = cparams.get("boundary")
                if not boundary:
                    raise BadBody("multipart without boundary")
                mp = receive_multipart(body, boundary, incoming)
                params = {**query, **mp.params}
                file_name, size = mp.file_name, mp.size
            else:
                size = receive_raw(body, incoming)
                params = dict(query)
            itype = params.get("import_type")
            if itype and itype != "instructure_csv":
                return _json(500, self._internal_error())
            if multipart:
                if file_name is None:
                    return _json(400, {"error": True, "error_message": "Missing attachment"})
                stored = file_name
            else:
                ext = params.get("extension")
                if not ext:
                    charset = cparams.get("charset", "").strip('"')
                    if charset and charset.lower() != "utf-8":
                        return _json(400, {"error": "Invalid content type, UTF-8 required"})
                    ext = _RAW_EXT.get(media, "zip")
                stored = f"sis_import.{ext}"
            if truthy(params.get("batch_mode")):
                term = params.get("batch_mode_term_id")
                if term:
                    if not self._term_known(term):
                        return _json(404, _NOT_FOUND)
                elif "multi_term_batch_mode" not in params:
                    msg = "Batch mode specified, but the given batch_mode_term_id cannot be found."
                    return _json(400, {"message": msg})
            suffix = Path(stored).suffix.lower()
            kind = {".csv": "csv", ".zip": "zip"}.get(suffix, "none")
            batch = self.store.create(
                stored_name=stored,
                upload=incoming,
                size=size,
                kind=kind,
                params=params,
                user_id=self.sim.user_id,
            )
            problem = self._late_checks(params)
            if problem is not None:
                return problem  # the batch stays "initializing" for ever, as in Canvas
            self.store.queue(batch)
            return _json(200, self.store.render(batch, self._base(h)))
        finally:
            incoming.unlink(missing_ok=True)

    @staticmethod
    def _late_checks(params: dict[str, str]) -> _Response | None:
        """Step 6 of §2.4: errors answered after the batch was saved."""
        if "multi_term_batch_mode" in params and not params.get("change_threshold"):
            return _json(
                400, {"message": "change_threshold is required to use multi term_batch mode."}
            )
        for key, allowed in (
            ("diffing_drop_status", _DROP_STATUSES),
            ("diffing_user_remove_status", _USER_REMOVE_STATUSES),
            ("batch_mode_enrollment_drop_status", _DROP_STATUSES),
        ):
            value = params.get(key)
            if value and value not in allowed:
                return _json(400, {"message": f"Invalid {key}"})
        ident = params.get("diffing_data_set_identifier") or ""
        if len(ident) > 128:
            field_name = "diffing_data_set_identifier"
            return _json(
                422,
                {
                    "errors": {
                        field_name: [
                            {
                                "attribute": field_name,
                                "type": "too_long",
                                "message": "is too long (maximum is 128 characters)",
                            }
                        ]
                    }
                },
            )
        return None

    # -- lists ---------------------------------------------------------------------------------

    @staticmethod
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

    def _links(
        self, h: _Handler, query: list[tuple[str, str]], page: int, per_page: int, has_next: bool
    ) -> tuple[str, str]:
        """Canvas's Link header: current, next, prev, first (never last)."""
        path = urllib.parse.urlsplit(h.path).path
        keep = [(k, v) for k, v in query if k not in ("page", "per_page", "access_token")]

        def url(p: int) -> str:
            qs = urllib.parse.urlencode([*keep, ("page", str(p)), ("per_page", str(per_page))])
            return f"{self._base(h)}{path}?{qs}"

        rels = [("current", page)]
        if has_next:
            rels.append(("next", page + 1))
        if page > 1:
            rels.append(("prev", page - 1))
        rels.append(("first", 1))
        return ("Link", ",".join(f'<{url(p)}>; rel="{rel}"' for rel, p in rels))

    def _list(self, h: _Handler, query: list[tuple[str, str]]) -> _Response:
        q = dict(query)
        since = parse_time(q["created_since"]) if q.get("created_since") else None
        before = parse_time(q["created_before"]) if q.get("created_before") else None
        wanted = {v for k, v in query if k in ("workflow_state[]", "workflow_state")}
        states = {s for s in wanted if s in WORKFLOW_STATES} or None
        batches = self.store.select(since=since, before=before, states=states)
        page, per_page = self._paging(query)
        start = (page - 1) * per_page
        items = batches[start : start + per_page]
        link = self._links(h, query, page, per_page, len(batches) > start + per_page)
        base = self._base(h)
        return _json(200, {"sis_imports": self.store.render_many(items, base)}, headers=[link])

    def _errors_page(
        self, h: _Handler, query: list[tuple[str, str]], batches: list[Batch]
    ) -> _Response:
        failure = truthy(dict(query).get("failure"))
        page, per_page = self._paging(query)
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
        link = self._links(h, query, page, per_page, len(chunk) > per_page)
        return _json(200, {"sis_import_errors": items}, headers=[link])

    # -- files and control -------------------------------------------------------------------

    def _download(self, h: _Handler, fid: int, query: dict[str, str]) -> _Response:
        f = self.store.file(fid)
        if f is None:
            return _json(404, _NOT_FOUND, rate=False)
        if query.get("verifier") != f.verifier and self._token_of(h, []) != self.sim.token:
            return _json(401, _UNAUTHORIZED, rate=False)
        return _Response(
            200,
            file=f.path,
            content_type=f.content_type,
            headers=[("Content-Disposition", f'attachment; filename="{f.filename}"')],
        )

    def _sim_route(self, method: str, path: str, body: BodyReader) -> _Response:
        if method == "GET":
            if path == "/_sim/imports":
                return _json(200, self.sim.imports(), rate=False)
            if path == "/_sim/requests":
                return _json(200, self.sim.request_log(), rate=False)
            if path == "/_sim/faults":
                return _json(200, self.sim.faults_served(), rate=False)
            return _json(404, _NOT_FOUND, rate=False)
        raw = b""
        while len(raw) < (1 << 20) and (block := body.read()):
            raw += block
        try:
            req = json.loads(raw or b"{}")
            if not isinstance(req, dict):
                raise ValueError("expected a JSON object")
            if method == "POST" and path == "/_sim/faults":
                self.sim.inject(
                    str(req["fault"]),
                    method=req.get("method"),
                    path=req.get("path"),
                    count=int(req.get("count", 1)),
                    delay=float(req.get("delay", 0.0)),
                )
            elif method == "POST" and path == "/_sim/outcome":
                seconds = req.get("seconds")
                self.sim.set_outcome(
                    str(req["pattern"]),
                    str(req["state"]),
                    seconds=None if seconds is None else float(seconds),
                )
            elif method == "POST" and path == "/_sim/token":
                self.sim.set_token(str(req["token"]))
            else:
                return _json(404, _NOT_FOUND, rate=False)
        except (ValueError, KeyError, TypeError, re.error) as exc:
            return _json(400, {"error": str(exc)}, rate=False)
        return _json(200, {"ok": True}, rate=False)
