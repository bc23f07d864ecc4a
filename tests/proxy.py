"""A small forward proxy for the tests, run as its own process: ``python tests/proxy.py RECORD
[--map HOST:PORT=TARGET_HOST:TARGET_PORT]... [--tls-cert CRT --tls-key KEY]``.

It listens on 127.0.0.1 (an ephemeral port, printed as the first line of stdout), serves
HTTP requests in absolute form (``GET http://host:port/path``) and ``CONNECT host:port``,
and appends one JSON line per relayed request to RECORD: ``{"method", "target",
"proxy_auth", "auth_scheme"}`` (the scheme of the request's Authorization header only,
never its value; for a CONNECT tunnel, what the TLS front saw inside, when there is one).

``--map`` sends a made-up host name to a real address (the tests' Canvas "canvas.test" to
the simulator on loopback). With ``--tls-cert``/``--tls-key`` a mapped CONNECT is answered
by a TLS server of its own (the certificate signed by the test's throwaway CA) in front of
the plain-HTTP target, so an https Canvas can be a simulator: the client's TLS ends here.
Each relayed request is sent upstream with ``Connection: close``, so one request is one
connection and every one is recorded.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import threading
from typing import Any

_record_lock = threading.Lock()


def read_head(sock: socket.socket | ssl.SSLSocket) -> tuple[bytes, bytes]:
    """The request head (up to the blank line) and whatever came after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return b"", b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def pump(src: Any, dst: Any) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class Proxy:
    def __init__(self, record: str, mapping: dict[str, tuple[str, int]], tls: ssl.SSLContext | None) -> None:
        self.record = record
        self.mapping = mapping
        self.tls = tls

    def note(self, **entry: Any) -> None:
        with _record_lock, open(self.record, "a") as f:
            f.write(json.dumps(entry) + "\n")

    @staticmethod
    def headers(head: bytes) -> tuple[str, list[tuple[str, str]]]:
        lines = head.decode("latin-1").split("\r\n")
        return lines[0], [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]

    def serve(self, client: socket.socket) -> None:
        try:
            head, rest = read_head(client)
            if not head:
                return
            line, headers = self.headers(head)
            method, target, _ = line.split(" ", 2)
            proxy_auth = any(k.lower() == "proxy-authorization" for k, _ in headers)
            if method == "CONNECT":
                self.tunnel(client, target, proxy_auth)
            else:
                self.forward(client, method, target, headers, rest, proxy_auth)
        except Exception as e:  # noqa: BLE001 - a test helper: say it and go on
            print(f"proxy: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        finally:
            client.close()

    def address(self, hostport: str) -> tuple[str, int]:
        if hostport in self.mapping:
            return self.mapping[hostport]
        host, _, port = hostport.rpartition(":")
        return host.strip("[]"), int(port)

    def forward(
        self, client: socket.socket, method: str, url: str, headers: list[tuple[str, str]], rest: bytes, proxy_auth: bool,
    ) -> None:
        """An absolute-form request: sent on to its host in origin form, one connection each."""
        scheme, _, remainder = url.partition("://")
        hostport, slash, path = remainder.partition("/")
        if ":" not in hostport:
            hostport += ":80"
        self.relay(client, method, "/" + path if slash else "/", headers, rest, self.address(hostport), url, proxy_auth, None)

    def relay(
        self, client: Any, method: str, path: str, headers: list[tuple[str, str]], rest: bytes,
        upstream_addr: tuple[str, int], target: str, proxy_auth: bool, via: str | None,
    ) -> None:
        auth = next((v.split(" ", 1)[0] for k, v in headers if k.lower() == "authorization"), None)
        self.note(method=method, target=target, proxy_auth=proxy_auth, auth_scheme=auth, via=via)
        keep = [(k, v) for k, v in headers if k.lower() not in ("proxy-authorization", "proxy-connection", "connection")]
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in keep) + "Connection: close\r\n\r\n"
        upstream = socket.create_connection(upstream_addr, timeout=30)
        try:
            upstream.sendall(head.encode("latin-1") + rest)
            up = threading.Thread(target=pump, args=(client, upstream), daemon=True)
            up.start()
            pump(upstream, client)
        finally:
            upstream.close()

    def tunnel(self, client: socket.socket, target: str, proxy_auth: bool) -> None:
        upstream_addr = self.address(target)
        self.note(method="CONNECT", target=target, proxy_auth=proxy_auth, auth_scheme=None, via=None)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if self.tls is not None and target in self.mapping:
            # Our own TLS end, in front of the plain-HTTP simulator: read each request inside.
            inner = self.tls.wrap_socket(client, server_side=True)
            while True:
                head, rest = read_head(inner)
                if not head:
                    return
                line, headers = self.headers(head)
                method, path, _ = line.split(" ", 2)
                length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
                while len(rest) < length:
                    chunk = inner.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
                self.relay_once(inner, method, path, headers, rest, upstream_addr, target, proxy_auth)
        upstream = socket.create_connection(upstream_addr, timeout=30)
        try:
            threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
            pump(upstream, client)
        finally:
            upstream.close()

    def relay_once(
        self, inner: Any, method: str, path: str, headers: list[tuple[str, str]], body: bytes,
        upstream_addr: tuple[str, int], target: str, proxy_auth: bool,
    ) -> None:
        """One request inside the TLS tunnel: to the target, its whole answer back (keep-alive kept)."""
        auth = next((v.split(" ", 1)[0] for k, v in headers if k.lower() == "authorization"), None)
        self.note(method=method, target=f"https://{target}{path}", proxy_auth=proxy_auth, auth_scheme=auth, via="CONNECT")
        keep = [(k, v) for k, v in headers if k.lower() != "connection"]
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in keep) + "Connection: close\r\n\r\n"
        with socket.create_connection(upstream_addr, timeout=30) as upstream:
            upstream.sendall(head.encode("latin-1") + body)
            answer = b""
            while chunk := upstream.recv(65536):
                answer += chunk
        top, sep, payload = answer.partition(b"\r\n\r\n")
        lines = [x for x in top.split(b"\r\n") if not x.lower().startswith(b"connection:")]
        inner.sendall(b"\r\n".join(lines) + b"\r\nConnection: keep-alive" + sep + payload)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("record")
    p.add_argument("--map", action="append", default=[])
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    args = p.parse_args()
    mapping = {}
    for m in args.map:
        name, _, to = m.partition("=")
        host, _, port = to.rpartition(":")
        mapping[name] = (host, int(port))
    tls = None
    if args.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    proxy = Proxy(args.record, mapping, tls)
    srv = socket.create_server(("127.0.0.1", 0))
    print(srv.getsockname()[1], flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=proxy.serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
