"""A request that got no answer is told in plain words: where it went and what went wrong.

Real sockets on 127.0.0.1 (a closed port, a port that takes the connection and never
answers, a port whose queue is full, a TLS server with a certificate of a throwaway CA, a
proxy that refuses the tunnel) and a name under .invalid, which never resolves. Each
failure is ``Retryable``, as it always was; only its words changed: no urllib3
``HTTPConnectionPool(...): Max retries exceeded ...`` (no retry was made), no query string,
no proxy password, no token.
"""

from __future__ import annotations

import http.server
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sisdropd import cli
from sisdropd.canvas import CanvasClient, Retryable
from tests.support import TOKEN, write_config
from tests.unit.test_canvas_origin import Server, tls  # noqa: F401 - tls: the module's fixture

SELF = "/users/self"


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (just freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def failure(base_url: str, path: str = SELF, *, timeout: float = 5.0, proxy: str | None = None, **kw: object) -> Retryable:
    """The error of one request to ``base_url`` + ``path`` (one attempt: no retry loop)."""
    client = CanvasClient(base_url, "1", TOKEN, timeout=timeout, proxy=proxy)
    try:
        with pytest.raises(Retryable) as e:
            client.request("GET", path, **kw)
    finally:
        client.close()
    text = e.value.message
    for noise in ("Max retries", "HTTPConnectionPool", "Caused by", "Errno", TOKEN):
        assert noise not in text, text
    assert "\n" not in text
    return e.value


@pytest.fixture
def silent() -> Iterator[int]:
    """A port that takes connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


def test_a_closed_port_is_connection_refused_with_the_address_and_no_query() -> None:
    port = closed_port()
    e = failure(f"http://127.0.0.1:{port}", params={"state": "query-secret"})
    assert e.message == f"cannot connect to Canvas at http://127.0.0.1:{port}: connection refused"
    assert e.status is None and e.cause == "network"


def test_a_server_that_never_answers_timed_out_after_the_configured_seconds(silent: int) -> None:
    e = failure(f"http://127.0.0.1:{silent}", params={"page": "query-secret"}, timeout=0.3)
    assert e.message == f"no answer from Canvas at http://127.0.0.1:{silent}/api/v1/users/self: timed out after 0.3 s"


def test_a_connection_never_accepted_timed_out_connecting() -> None:
    # A listening socket that never accepts, its queue filled: the next SYN goes unanswered.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(0)
        port = s.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                c = socket.socket()
                c.setblocking(False)
                c.connect_ex(("127.0.0.1", port))
                fillers.append(c)
            e = failure(f"http://127.0.0.1:{port}", timeout=0.4)
        finally:
            for c in fillers:
                c.close()
    assert e.message == f"cannot connect to Canvas at http://127.0.0.1:{port}: timed out after 0.4 s"


def test_a_server_that_hangs_up_without_answering_lost_the_connection() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]

        def hang_up() -> None:  # read the whole request, then close without a word
            conn, _ = s.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data and (chunk := conn.recv(4096)):
                    data += chunk

        thread = threading.Thread(target=hang_up, name="test-hang-up")
        thread.start()
        try:
            e = failure(f"http://127.0.0.1:{port}")
        finally:
            thread.join(5)
    assert e.message == f"connection to Canvas at http://127.0.0.1:{port}/api/v1/users/self lost: closed without an answer"


def test_a_name_that_does_not_resolve_says_so() -> None:
    e = failure("https://nonexistent.invalid")
    assert e.message.startswith("cannot connect to Canvas at https://nonexistent.invalid: name not resolved"), e.message


def test_a_certificate_from_an_unknown_ca_is_a_tls_verify_failure(tls: tuple[ssl.SSLContext, Path]) -> None:  # noqa: F811
    server = Server(tls=tls[0])
    try:
        e = failure(server.url)
    finally:
        server.close()
    assert e.message.startswith(f"cannot connect to Canvas at {server.url}: TLS: certificate verify failed (")
    assert "[CERTIFICATE_VERIFY_FAILED]" in e.message  # the name to search for


def test_a_proxy_that_cannot_be_reached_is_named_with_its_password_masked() -> None:
    proxy_port, canvas_port = closed_port(), closed_port()
    e = failure(f"http://127.0.0.1:{canvas_port}", proxy=f"http://sis:proxy-secret@127.0.0.1:{proxy_port}")
    assert e.message == (
        f"cannot connect to the proxy http://sis:****@127.0.0.1:{proxy_port} "
        f"(on the way to Canvas at http://127.0.0.1:{canvas_port}): connection refused"
    )


def test_a_proxy_that_refuses_the_tunnel_is_named_with_its_answer() -> None:
    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_CONNECT(self) -> None:  # noqa: N802
            self.send_response(407)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    proxy.daemon_threads = True
    thread = threading.Thread(target=proxy.serve_forever, name="test-proxy", daemon=True)
    thread.start()
    try:
        e = failure("https://canvas.test", proxy=f"http://127.0.0.1:{proxy.server_port}")
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(5)
    assert e.message == (
        f"the proxy http://127.0.0.1:{proxy.server_port} refused to connect to Canvas at https://canvas.test: "
        "407 Proxy Authentication Required"
    )


def test_status_of_an_import_shows_the_plain_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    cfg = write_config(tmp_path / "c.toml", {"canvas": {"base_url": f"http://127.0.0.1:{port}", "timeout": 1}, "folders": {"root": str(tmp_path)}})
    monkeypatch.setenv("SISDROPD_TOKEN", TOKEN)
    code = cli.main(["-c", str(cfg), "status", "5"])
    out = capsys.readouterr()
    assert code == 1
    assert out.out + out.err == f"import 5: cannot ask Canvas: cannot connect to Canvas at http://127.0.0.1:{port}: connection refused\n"
