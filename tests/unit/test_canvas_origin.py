"""Where the token goes (issue 12, point 2): only to the configured Canvas origin.

Real HTTP servers on 127.0.0.1: one plays Canvas and answers as each test scripts it (a
next-page link, a redirect, an errors file elsewhere); a second one, on another port,
plays the attacker's host (or a files CDN) and records every request it gets and whether
it carried an Authorization header. For the https cases Canvas is served over TLS with a
throwaway CA, and the attacker is plain http on the same host.
"""

from __future__ import annotations

import http.server
import io
import json
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sisdropd import logs
from sisdropd.canvas import CanvasClient, OffOrigin, TooLarge, strip_verifiers
from sisdropd.config import LogConfig
from tests.support import TOKEN

Reply = tuple[int, dict[str, str], bytes | Callable[[Any], None]]


@dataclass
class Server:
    """An HTTP(S) server on 127.0.0.1 whose answers are ``routes[path]`` (path without query)."""

    routes: dict[str, Reply] = field(default_factory=dict)
    seen: list[tuple[str, str | None]] = field(default_factory=list)  # (path with query, Authorization)
    tls: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        server = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                server.seen.append((self.path, self.headers.get("Authorization")))
                status, headers, body = server.routes.get(self.path.split("?")[0], (404, {}, b"{}"))
                self.send_response(status)
                for k, v in headers.items():
                    if k != "Content-Length":
                        self.send_header(k, v)
                if callable(body):
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    body(self.wfile)
                    return
                self.send_header("Content-Length", headers.get("Content-Length", str(len(body))))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        if self.tls is not None:
            self.httpd.socket = self.tls.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="test-http", daemon=True)
        self.thread.start()
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.httpd.server_port}"

    def json(self, path: str, doc: Any, **headers: str) -> None:
        self.routes[path] = (200, {"Content-Type": "application/json", **headers}, json.dumps(doc).encode())

    def redirect(self, path: str, to: str, status: int = 302) -> None:
        self.routes[path] = (status, {"Location": to}, b"")

    def tokens(self) -> list[str | None]:
        return [auth for _, auth in self.seen]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def canvas() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


@pytest.fixture
def attacker() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


@pytest.fixture
def client(canvas: Server) -> Iterator[CanvasClient]:
    c = CanvasClient(canvas.url, "1", TOKEN, timeout=5, retry_initial=0.05, retry_max=0.1, max_download=1 << 20)
    yield c
    c.close()


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.setup(LogConfig(level="DEBUG"), stream=out)
    logs.add_secret(TOKEN)
    yield out
    logs.setup(None)


LIST = "/api/v1/accounts/1/sis_imports"
BEARER = f"Bearer {TOKEN}"


def test_a_next_page_link_to_another_origin_is_refused_never_requested(
    canvas: Server, attacker: Server, client: CanvasClient
) -> None:
    evil = f"{attacker.url}{LIST}?page=2&per_page=100&leak=query-secret"
    canvas.json(LIST, {"sis_imports": [{"id": 1}]}, Link=f'<{evil}>; rel="next"')
    got = []
    with pytest.raises(OffOrigin) as e:
        for imp in client.list_imports():
            got.append(imp["id"])
    # The first page is ours; the refusal is raised, never taken for the end of the list
    # (a caller looking for a lost post must not conclude it is absent).
    assert got == [1] and canvas.tokens() == [BEARER]
    assert attacker.seen == []
    assert f"{attacker.url}{LIST}" in e.value.message and "query-secret" not in e.value.message


@pytest.mark.parametrize("to", ["other-port", "other-host", "other-scheme"])
def test_a_next_page_link_anywhere_but_our_origin_is_refused(canvas: Server, client: CanvasClient, to: str) -> None:
    port = canvas.url.rsplit(":", 1)[1]
    link = {
        "other-port": f"http://127.0.0.1:1{LIST}?page=2",
        "other-host": f"http://localhost:{port}{LIST}?page=2",  # the same server, another name
        "other-scheme": f"https://127.0.0.1:{port}{LIST}?page=2",
    }[to]
    canvas.json(LIST, {"sis_imports": [{"id": 1}]}, Link=f'<{link}>; rel="next"')
    with pytest.raises(OffOrigin):
        list(client.list_imports())
    assert len(canvas.seen) == 1


def test_a_next_page_link_on_our_origin_is_followed_with_the_token(canvas: Server, client: CanvasClient) -> None:
    canvas.json(LIST, {"sis_imports": [{"id": 1}]}, Link=f'<{canvas.url}{LIST}/page2?page=2>; rel="next"')
    canvas.json(LIST + "/page2", {"sis_imports": [{"id": 2}]})
    assert [i["id"] for i in client.list_imports()] == [1, 2]
    assert canvas.tokens() == [BEARER, BEARER]


def test_an_api_redirect_to_another_origin_is_refused_never_requested(
    canvas: Server, attacker: Server, client: CanvasClient
) -> None:
    canvas.redirect("/api/v1/users/self", f"{attacker.url}/steal?x=1")
    with pytest.raises(OffOrigin) as e:
        client.whoami()
    assert attacker.seen == [] and "redirect" in e.value.message and "x=1" not in e.value.message


def test_an_api_redirect_on_our_origin_is_followed_with_the_token(canvas: Server, client: CanvasClient) -> None:
    canvas.redirect("/api/v1/users/self", "/api/v1/users/17", status=301)
    canvas.json("/api/v1/users/17", {"id": 17})
    assert client.whoami() == {"id": 17}
    assert canvas.tokens() == [BEARER, BEARER]


def test_a_download_on_another_origin_goes_without_the_token(
    canvas: Server, attacker: Server, client: CanvasClient, tmp_path: Path, log: io.StringIO
) -> None:
    attacker.routes["/files/9/download"] = (200, {}, b"sis_import_id,file,message,row\n")
    n = client.download(f"{attacker.url}/files/9/download?verifier=v", tmp_path / "e.csv")
    assert n == 31 and (tmp_path / "e.csv").read_bytes().startswith(b"sis_import_id")
    assert attacker.tokens() == [None]
    line = next(x for x in log.getvalue().splitlines() if "without the token" in x)
    assert f"{attacker.url}/files/9/download" in line and "verifier" not in line


def test_a_download_redirected_to_a_files_host_drops_the_token_there(
    canvas: Server, attacker: Server, client: CanvasClient, tmp_path: Path
) -> None:
    """Canvas's /files/:id/download answers 302 to its files host (inst-fs): that hop gets no token."""
    canvas.redirect("/files/9/download", f"{attacker.url}/cdn/9?sig=abc")
    attacker.routes["/cdn/9"] = (200, {}, b"row\n")
    assert client.download(f"{canvas.url}/files/9/download?verifier=v", tmp_path / "e.csv") == 4
    assert canvas.tokens() == [BEARER] and attacker.tokens() == [None]


def test_redirects_are_bounded(canvas: Server, client: CanvasClient) -> None:
    canvas.redirect("/api/v1/users/self", "/api/v1/users/self")
    with pytest.raises(Exception, match="redirects"):
        client.whoami(deadline=0)
    assert len(canvas.seen) == 11


# ---------------------------------------------------------------- https -> http downgrade


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A server context for 127.0.0.1 signed by a throwaway CA, and that CA's file."""
    if subprocess.run(["openssl", "version"], capture_output=True).returncode != 0:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    ca_key, ca, key, csr, crt, ext = (d / n for n in ("ca.key", "ca.pem", "k.pem", "r.csr", "c.pem", "ext.cnf"))
    ext.write_text("subjectAltName=IP:127.0.0.1\n")

    def run(*a: str) -> None:
        subprocess.run(a, check=True, capture_output=True)

    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", "/CN=Test CA")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(crt), "-days", "2", "-extfile", str(ext))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    return ctx, ca


@pytest.fixture
def tls_canvas(tls: tuple[ssl.SSLContext, Path]) -> Iterator[tuple[Server, CanvasClient]]:
    ctx, ca = tls
    s = Server(tls=ctx)
    c = CanvasClient(s.url, "1", TOKEN, timeout=5, ca_bundle=str(ca), retry_initial=0.05, retry_max=0.1)
    yield s, c
    c.close()
    s.close()


def test_an_https_canvas_never_sends_anything_over_http(
    tls_canvas: tuple[Server, CanvasClient], attacker: Server, tmp_path: Path
) -> None:
    canvas, client = tls_canvas
    plain = attacker.url  # http://127.0.0.1:<port>: the same host, clear text
    # A download offered over http: refused outright (its verifier and the file would travel in clear).
    with pytest.raises(OffOrigin, match="not over https"):
        client.download(f"{plain}/files/9/download?verifier=v", tmp_path / "e.csv")
    # A download whose redirect downgrades to http: refused at that hop.
    canvas.redirect("/files/9/download", f"{plain}/files/9/download?verifier=v")
    with pytest.raises(OffOrigin, match="redirect"):
        client.download(f"{canvas.url}/files/9/download?verifier=v", tmp_path / "e.csv")
    # An API call redirected to http on the same host, and a next-page link there.
    canvas.redirect("/api/v1/users/self", f"{plain}/api/v1/users/self")
    with pytest.raises(OffOrigin):
        client.whoami()
    canvas.json(LIST, {"sis_imports": []}, Link=f'<{plain}{LIST}?page=2>; rel="next"')
    with pytest.raises(OffOrigin):
        list(client.list_imports())
    assert attacker.seen == [], "nothing at all went over http"
    assert canvas.tokens() == [BEARER] * 3 and not list(tmp_path.iterdir())


# ------------------------------------------------------------------------ bounded download


def test_a_download_announced_too_large_is_not_read(canvas: Server, client: CanvasClient, tmp_path: Path) -> None:
    canvas.routes["/files/1/download"] = (200, {"Content-Length": str(2 << 20)}, b"")
    with pytest.raises(TooLarge, match="max_download_bytes"):
        client.download(f"{canvas.url}/files/1/download", tmp_path / "e.csv")
    assert list(tmp_path.iterdir()) == []


def test_an_endless_download_is_cut_and_nothing_is_left(canvas: Server, client: CanvasClient, tmp_path: Path) -> None:
    sent = []

    def endless(out: Any) -> None:
        chunk = b"x" * 65536
        try:
            while len(sent) < 1000:  # 64 MiB at most: far past the client's 1 MiB limit
                out.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent.append(1)
        except OSError:
            pass  # the client hung up: what it should do

    canvas.routes["/files/1/download"] = (200, {}, endless)
    with pytest.raises(TooLarge):
        client.download(f"{canvas.url}/files/1/download", tmp_path / "e.csv")
    assert list(tmp_path.iterdir()) == [], "the partial file is removed"
    assert len(sent) < 1000, "the client stopped reading"


def test_a_download_within_the_limit_is_whole(canvas: Server, client: CanvasClient, tmp_path: Path) -> None:
    body = b"y" * (1 << 20)  # exactly the limit
    canvas.routes["/files/1/download"] = (200, {}, body)
    assert client.download(f"{canvas.url}/files/1/download", tmp_path / "e.csv") == len(body)
    assert (tmp_path / "e.csv").read_bytes() == body


# ------------------------------------------------------------------------------- verifiers


def test_verifiers_are_stripped_from_every_url_and_nothing_else() -> None:
    imp = {
        "id": 4821,
        "errors_attachment": {"url": "https://c.example.edu/files/99140/download?download_frd=1&verifier=eyJ.sig"},
        "csv_attachments": [{"url": "https://c.example.edu/files/1/download?verifier=abc&download_frd=1", "size": 3}],
        "processing_warnings": [["users.csv", "a verifier= in a message stays"]],
    }
    out = strip_verifiers(imp)
    assert out["errors_attachment"]["url"] == "https://c.example.edu/files/99140/download?download_frd=1"
    assert out["csv_attachments"] == [{"url": "https://c.example.edu/files/1/download?download_frd=1", "size": 3}]
    assert out["processing_warnings"] == imp["processing_warnings"] and out["id"] == 4821
    assert "eyJ" not in json.dumps(out) and "abc" not in json.dumps(out)


def test_the_client_hands_out_no_verifier(canvas: Server, client: CanvasClient, tmp_path: Path) -> None:
    att = {"url": f"{canvas.url}/files/5/download?download_frd=1&verifier=SIGNED"}
    imp = {"id": 7, "workflow_state": "imported_with_messages", "errors_attachment": att, "csv_attachments": [att]}
    canvas.json(f"{LIST}/7", imp)
    canvas.json(LIST, {"sis_imports": [imp]})
    canvas.routes["/files/5/download"] = (200, {}, b"errors\n")
    assert "SIGNED" not in json.dumps(client.get_import(7)) + json.dumps(list(client.list_imports()))
    # The errors file is still fetched: with the URL asked of Canvas now, verifier and all.
    assert client.download_errors_file(7, tmp_path / "e.csv") == 7
    assert canvas.seen[-1][0] == "/files/5/download?download_frd=1&verifier=SIGNED"


def test_a_retry_after_of_zero_still_backs_off(canvas: Server) -> None:
    """A proxy's "429, Retry-After: 0" answered for ever: the retry loop keeps its growing
    backoff (0.05 s doubling here) instead of asking again at once until the deadline."""
    import time

    from sisdropd.canvas import RateLimited

    canvas.routes["/api/v1/users/self"] = (429, {"Retry-After": "0", "Content-Type": "application/json"}, b"{}")
    c = CanvasClient(canvas.url, "1", TOKEN, timeout=5, retry_initial=0.05, retry_max=0.4)
    try:
        with pytest.raises(RateLimited):
            c.whoami(deadline=time.time() + 1.5)
    finally:
        c.close()
    # Waits of at least 0.025, 0.05, 0.1, then 0.2 s each: no more than 10 tries in 1.5 s
    # (asking again at once made 24 a second here, each answer taking ~40 ms).
    assert 3 <= len(canvas.seen) <= 10, len(canvas.seen)
