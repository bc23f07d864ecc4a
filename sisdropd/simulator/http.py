"""HTTP side of the Canvas simulator: the server, and the Api that answers each request.

:class:`Server` is a ThreadingHTTPServer that tracks its connections and handler threads so
it can stop cleanly. :class:`Api` turns one request into one answer the way Canvas would
(reference §1, §7): the injected faults first, then the token and its 401 bodies, the
root/sub-account checks, and the routes, handed to :class:`~.endpoints.SisEndpoints`
(Canvas's SIS API) and :class:`~.control.ControlEndpoints` (the ``/_sim/`` knobs); it adds
Canvas's rate-limit headers. Everything it knows comes from the :class:`~.context.SimContext`.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import traceback
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sisdropd.simulator.context import Fault, SimContext
from sisdropd.simulator.control import ControlEndpoints
from sisdropd.simulator.endpoints import SisEndpoints
from sisdropd.simulator.model import iso
from sisdropd.simulator.upload import CHUNK, BadBody, BodyReader, ClientGone
from sisdropd.simulator.wire import (
    INVALID_TOKEN,
    NOT_FOUND,
    UNAUTHENTICATED,
    WWW_AUTH,
    Reply,
    Request,
    json_reply,
    parse_query,
)

_STATUS_FAULTS = {"500", "502", "503", "429", "403_rate_limit", "401"}
_RATE_MAX = 700.0
_RATE_LEAK = 10.0
_OTHER_ROOT = 9999  # the root above the account when the "sub_account" refusal is on


class Server(ThreadingHTTPServer):
    """ThreadingHTTPServer over one simulator context; tracks connections and threads."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], ctx: SimContext, family: int) -> None:
        self.ctx = ctx
        self.api = Api(ctx)
        self.address_family = family
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._handler_threads: list[threading.Thread] = []
        super().__init__(addr, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        with self._lock:
            self._handler_threads = [x for x in self._handler_threads if x.is_alive()]
            self._handler_threads.append(t)
        t.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that vanished mid-request is routine here

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def stop(self) -> None:
        """Stop serving (call from another thread than serve_forever's), close client
        connections, join the handler threads and close the socket."""
        self.shutdown()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._lock:
            threads = list(self._handler_threads)
        for t in threads:
            t.join(timeout=10)
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeCanvas/1.0"
    timeout = 120
    server: Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.api.handle(self)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET


class Api:
    """Canvas's answers over the simulator context ``ctx``."""

    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx
        self.sis = SisEndpoints(ctx)
        self.control = ControlEndpoints(ctx)
        self._rate_lock = threading.Lock()
        self._bucket = 0.0
        self._bucket_t = time.monotonic()

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        """Answer one request (or drop it, as the queued faults say)."""
        t0 = time.monotonic()
        method = h.command.upper()
        split = urllib.parse.urlsplit(h.path)
        path = split.path
        logged = False

        def log(status: int) -> None:
            # Before the answer or the hang-up: a client that saw either finds its request logged.
            nonlocal logged
            if not logged:
                logged = True
                self.ctx.log.record(method, path, status)

        try:
            fault = None if path.startswith("/_sim/") else self.ctx.faults.take(method, path)
            if fault is not None and fault.name == "drop":
                log(0)
                self._drop(h)
                return
            if fault is not None and fault.name == "delay":
                self.ctx.stop.wait(fault.delay)
            body = self._body(h)
            if body is None:
                resp = json_reply(400, {"errors": [{"message": "Bad Request"}]}, rate=False)
                h.close_connection = True
            elif fault is not None and fault.name in _STATUS_FAULTS:
                body.drain()
                resp = self._fault_response(fault)
            elif fault is not None and fault.name == "drop_read":
                body.drain()
                log(0)
                self._drop(h)
                return
            else:
                host = h.headers.get("Host")
                req = Request(
                    method=method,
                    target=h.path,
                    path=path,
                    query=parse_query(split.query),
                    headers=h.headers,
                    body=body,
                    base=f"http://{host}" if host else self.ctx.url,
                )
                try:
                    resp = self._route(req)
                    body.drain()
                except BadBody:
                    resp = json_reply(400, {"errors": [{"message": "Bad Request"}]}, rate=False)
                    h.close_connection = True
                except (ClientGone, OSError):
                    raise
                except Exception:  # a simulator bug: answer like Canvas does, keep serving
                    traceback.print_exc()
                    resp = json_reply(500, self.sis.internal_error())
                    h.close_connection = True
            if fault is not None and fault.name == "drop_after":
                log(0)
                self._drop(h)
                return
            log(resp.status)
            self._send(h, resp, t0)
        except (ClientGone, OSError):
            h.close_connection = True
        finally:
            log(0)

    @staticmethod
    def _body(h: BaseHTTPRequestHandler) -> BodyReader | None:  # rfile is a BinaryIO in practice
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
    def _drop(h: BaseHTTPRequestHandler) -> None:
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

    def _send(self, h: BaseHTTPRequestHandler, resp: Reply, t0: float) -> None:
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

    def _fault_response(self, fault: Fault) -> Reply:
        name = fault.name
        if name == "500":
            return json_reply(500, self.sis.internal_error())
        if name == "502":
            return json_reply(502, {"errors": [{"message": "Bad Gateway"}]}, rate=False)
        if name == "503":
            return json_reply(503, {"errors": [{"message": "Service Unavailable"}]}, rate=False)
        if name == "429":
            return json_reply(
                429,
                {"errors": [{"message": "Too Many Requests"}]},
                rate=False,
                headers=[("Retry-After", "1")],
            )
        if name == "403_rate_limit":
            return Reply(
                403,
                b"403 Forbidden (Rate Limit Exceeded)",
                content_type="text/plain; charset=utf-8",
                headers=[("X-Rate-Limit-Remaining", "0.0")],
            )
        return json_reply(401, INVALID_TOKEN, rate=False, headers=[WWW_AUTH])

    # -- routing -----------------------------------------------------------------------------

    def _route(self, req: Request) -> Reply:
        path, method = req.path, req.method
        if path.startswith("/_sim/"):
            return self.control.route(req)
        m = re.fullmatch(r"/files/(\d+)/download", path)
        if m and method == "GET":
            return self.sis.download(req, int(m.group(1)))
        if not path.startswith("/api/v1/"):
            return json_reply(404, NOT_FOUND, rate=False)
        given = req.bearer()
        if not given:
            return json_reply(401, UNAUTHENTICATED, rate=False, headers=[WWW_AUTH])
        grant = self.ctx.tokens.grant(given)
        if grant is None:
            return json_reply(401, INVALID_TOKEN, rate=False, headers=[WWW_AUTH])
        refusals = self.ctx.refusals
        if "expired_token" in refusals:
            body = {
                "errors": [{"message": "Expired access token."}],
                "expired_at": iso(refusals["expired_token"]),
            }
            return json_reply(401, body, rate=False, headers=[WWW_AUTH])
        api = path[len("/api/v1") :].removesuffix(".json")
        parts = [urllib.parse.unquote(p) for p in api.strip("/").split("/")]
        if parts == ["users", "self"] and method == "GET":
            return json_reply(200, dict(grant.user))
        if len(parts) == 2 and parts[0] == "progress" and method == "GET":
            return self.sis.progress(req, parts[1])
        if len(parts) < 2 or parts[0] != "accounts":
            return json_reply(404, NOT_FOUND)
        acct, rest = parts[1], parts[2:]
        if not rest and method == "GET":
            return self._account_json(acct)
        problem = self._check_account(acct)
        if problem is not None:
            return problem
        return self.sis.route(req, rest, grant)

    def _is_root(self, acct: str) -> bool:
        """``acct`` names the root account: its id, ``self`` or ``sis_account_id:...``."""
        return acct in (self.ctx.account_id, "self") or acct.startswith("sis_account_id:")

    def _check_account(self, acct: str) -> Reply | None:
        """Canvas's account checks before any SIS endpoint, in its order (§1, §7): the
        account must exist, have SIS imports enabled and be a root account."""
        refusals = self.ctx.refusals
        root = self._is_root(acct)
        if "unknown_account" in refusals or not (root or acct in self.ctx.sub_accounts):
            return json_reply(404, NOT_FOUND)
        if "sis_disabled" in refusals:
            return json_reply(403, {"errors": ["SIS imports are not enabled for this account"]})
        if "sub_account" in refusals or not root:
            return json_reply(400, {"errors": ["SIS imports can only be executed on root accounts"]})
        return None

    def _account_json(self, acct: str) -> Reply:
        own = self.ctx.account_id
        root = int(own) if own.isdigit() else own
        refusals = self.ctx.refusals
        if "unknown_account" in refusals:
            return json_reply(404, NOT_FOUND)
        if self._is_root(acct) and "sub_account" not in refusals:
            parent: Any = None
            aid: Any = root
        elif self._is_root(acct):  # the configured account has become a sub-account
            parent, aid = _OTHER_ROOT, root
        elif acct in self.ctx.sub_accounts:
            parent, aid = root, int(acct) if acct.isdigit() else acct
        else:
            return json_reply(404, NOT_FOUND)
        return json_reply(
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
