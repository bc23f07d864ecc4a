"""A request that got no HTTP answer, said in plain words (``describe``).

requests reports a refused connection as ``HTTPConnectionPool(host=..., port=...): Max
retries exceeded with url: ... (Caused by NewConnectionError(...))``: urllib3's wording, the
query string included, and "Max retries" although no retry was made. ``describe`` walks the
exception's chain to its cause and says where the request went (scheme, host and port; the
path too once connected, never the query or user info) and what went wrong there:
``cannot connect to Canvas at http://127.0.0.1:1: connection refused``, ``... name not
resolved``, ``... timed out after 60 s``, ``TLS: certificate verify failed (...)``, or which
proxy failed (its password masked).
"""

from __future__ import annotations

import re
import socket
import ssl
from http.client import RemoteDisconnected
from typing import TypeVar
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import NewConnectionError

from sisdropd.config import mask_url

_E = TypeVar("_E", bound=BaseException)


def describe(exc: BaseException, *, timeout: float | None = None, proxy: str | None = None) -> str:
    """One line for the transport failure ``exc`` (a ``requests.RequestException``).

    ``timeout`` is the request's, in seconds (else read from urllib3's text); ``proxy`` the
    proxy the request went through, if any.
    """
    causes = _causes(exc)
    url = getattr(getattr(exc, "request", None), "url", None)
    site, page = _site(url), _site(url, path=True)
    why = _reason(causes, timeout)
    if isinstance(exc, requests.exceptions.ProxyError):
        via = f"the proxy {mask_url(proxy)}" if proxy else "the proxy"
        tunnel = next((str(c) for c in causes if str(c).startswith("Tunnel connection failed:")), None)
        if tunnel is not None:
            return f"{via} refused to connect to {site}: {tunnel.removeprefix('Tunnel connection failed:').strip()}"
        return f"cannot connect to {via} (on the way to {site}): {why}"
    through = f" (through the proxy {mask_url(proxy)})" if proxy else ""
    if isinstance(exc, requests.ReadTimeout):
        return f"no answer from {page}: {why}{through}"
    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.SSLError) or _first(causes, NewConnectionError):
        return f"cannot connect to {site}: {why}{through}"
    if isinstance(exc, requests.ConnectionError):  # connected, then the connection went: urllib3's ProtocolError
        return f"connection to {page} lost: {why}{through}"
    return f"request to {page} failed: {type(exc).__name__}: {exc}{through}"  # an invalid URL or header, a bad body


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception behind it (urllib3's ``reason``, exceptions among the
    arguments, ``__cause__``, ``__context__``), nearest first, each once."""
    out: list[BaseException] = []
    todo = [exc]
    while todo and len(out) < 32:
        e = todo.pop(0)
        if any(e is seen for seen in out):
            continue
        out.append(e)
        todo.extend(x for x in (getattr(e, "reason", None), *e.args, e.__cause__, e.__context__) if isinstance(x, BaseException))
    return out


def _first(causes: list[BaseException], kind: type[_E]) -> _E | None:
    return next((c for c in causes if isinstance(c, kind)), None)


def _site(url: str | None, *, path: bool = False) -> str:
    """"Canvas at <scheme>://<host>[:<port>]" as the URL gives them (and its path with
    ``path``): never user info, query or fragment."""
    parts = urlsplit(url or "")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname:
        return "Canvas"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"Canvas at {parts.scheme}://{host}{f':{port}' if port else ''}{parts.path if path else ''}"


def _reason(causes: list[BaseException], timeout: float | None) -> str:
    """What went wrong, from the deepest cause we know the words for."""
    if (dns := _first(causes, socket.gaierror)) is not None:
        return "name not resolved" + (" (temporary DNS failure)" if dns.errno == socket.EAI_AGAIN else "")
    if (cert := _first(causes, ssl.SSLCertVerificationError)) is not None:
        return f"TLS: certificate verify failed ({cert.verify_message or cert.reason}) [CERTIFICATE_VERIFY_FAILED]"
    if (tls := _first(causes, ssl.SSLError)) is not None:
        return f"TLS: {str(tls.reason or '').replace('_', ' ').lower() or tls}"
    if _first(causes, TimeoutError) is not None or any(isinstance(c, requests.Timeout) for c in causes):
        if timeout is None:  # urllib3 says "(read timeout=60)" or "(connect timeout=60)"
            found = re.search(r"timeout=([0-9.]+)\)", " ".join(str(c) for c in causes))
            timeout = float(found.group(1)) if found else None
        return f"timed out after {timeout:g} s" if timeout is not None else "timed out"
    for kind, words in (
        (ConnectionRefusedError, "connection refused"),
        (RemoteDisconnected, "closed without an answer"),  # a ConnectionResetError too: asked first
        (ConnectionResetError, "connection reset"),
        (BrokenPipeError, "closed while the request was sent"),
    ):
        if _first(causes, kind) is not None:
            return words
    strerror = next((c.strerror for c in reversed(causes) if isinstance(c, OSError) and c.strerror), None)
    if strerror:
        return strerror[0].lower() + strerror[1:]  # "network is unreachable"
    return str(causes[-1]) or type(causes[-1]).__name__
