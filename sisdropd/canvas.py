"""The Canvas SIS Import API over HTTP: create, show, list, abort, and the errors file.

``classify`` is the one pure function that turns an HTTP answer or a transport error into
what to do next (``Retryable``/``RateLimited``: try again later; ``TokenRejected``: 401;
``Forbidden``: SIS imports not enabled; ``Refused``: Canvas said no to this request;
``NotFound``). Every safe request goes through one retry loop (``CanvasClient._retrying``):
transient failures are retried with backoff until the request succeeds, the daemon stops
or the caller's deadline passes. A create is sent exactly once per call
(``create_import``) because only the caller can prove, by looking in Canvas's list, that a
lost answer did not create an import; its body streams from disk (``upload``).

``client_for`` builds the client from a ``Config``: the one place where the daemon, the
one-shot ``submit`` and the operator's commands get theirs.

Where the token goes (``request``): only to the configured Canvas origin (scheme, host and
port), over the configured scheme. Redirects are never left to requests: each hop is
judged here. An API request (a ``Link: rel="next"`` page included) to another origin is
refused (``OffOrigin``), never sent; a download (the errors file) may leave the origin
for a files host over https, without the token, and is refused over a weaker scheme than
the configured one (its URL carries a signed ``verifier`` and the file student data).
Downloads are cut at ``max_download`` bytes. Every JSON object Canvas gives back comes
without the ``verifier`` of its file URLs (``strip_verifiers``), so no stored copy keeps one.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, quote, urlencode, urljoin, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from sisdropd import __version__
from sisdropd.logs import clean, logger
from sisdropd.netfail import describe
from sisdropd.proxy import proxy_for
from sisdropd.upload import BLOCK, Blocks, Cancelled, MultipartBody, PlainFile

if TYPE_CHECKING:
    from sisdropd.config import Config

LOW_QUOTA = 100.0  # X-Rate-Limit-Remaining below this: slow down
REFILL_PER_SECOND = 10.0  # Canvas's default leaky-bucket refill rate
DOWNLOAD_ATTEMPTS = 5  # an errors file is worth a few tries, never a file kept waiting
MAX_REDIRECTS = 10  # hops followed for one GET, each one judged by the origin policy
DEFAULT_MAX_DOWNLOAD = 1024**3  # 1 GiB; Canvas's errors files are kilobytes to a few megabytes
_REDIRECTS = (301, 302, 303, 307, 308)
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Stopped(Exception):
    """The daemon is stopping: the wait was cut short. Nothing has been left half done."""


class CanvasError(Exception):
    """Canvas (or the way to it) did not give the answer we needed.

    ``status`` is the HTTP status (None for transport errors); ``message`` Canvas's own
    words, cleaned of secrets; ``cause`` a short label for logs and metrics.
    """

    cause = "error"

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        self.message = clean(message)
        self.status = status
        self.retry_after = retry_after
        super().__init__(self.message)


class Retryable(CanvasError):
    """A transient failure: network, timeout, HTTP 5xx. Try again after a backoff."""

    cause = "network"


class NotSent(Retryable):
    """A create request failed before its body was complete: Canvas provably created
    nothing (the closing boundary never reached the socket), so it may be posted again
    without a look in Canvas's list."""

    cause = "network"


class RateLimited(Retryable):
    """Canvas throttled us (429, or 403 'Rate Limit Exceeded')."""

    cause = "rate_limited"


class TokenRejected(CanvasError):
    """401: the token is invalid, expired, revoked or lacks permission."""

    cause = "token_rejected"


class Forbidden(CanvasError):
    """403 that is not a rate limit: e.g. SIS imports are not enabled for this account."""

    cause = "forbidden"


class Refused(CanvasError):
    """400/422 (or another 4xx): Canvas refused this request; sending it again will not help."""

    cause = "refused"


class NotFound(CanvasError):
    """404: no such account or import (or an abort of a finished import)."""

    cause = "not_found"


class OffOrigin(CanvasError):
    """A URL from Canvas (a next-page link, a redirect, a download) that the token must not
    follow: another origin for an API request, or a weaker scheme. Never sent; not retried."""

    cause = "off_origin"


class TooLarge(CanvasError):
    """A download grew past ``max_download`` bytes: cut, and nothing of it kept."""

    cause = "too_large"


Origin = tuple[str, str, int]


def origin_of(url: str) -> Origin | None:
    """``(scheme, host, port)`` of an http(s) URL, the port made explicit; None for any other URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[parts.scheme]


def where(url: str) -> str:
    """A URL for a log line: scheme, host, port and path; never its query (a ``verifier``,
    an ``access_token``), fragment or user info."""
    o = origin_of(url)
    if o is None:
        return f"a non-http(s) URL ({urlsplit(url).scheme or 'no scheme'})"
    host = f"[{o[1]}]" if ":" in o[1] else o[1]
    return f"{o[0]}://{host}:{o[2]}{urlsplit(url).path}"


def strip_verifiers(value: Any) -> Any:
    """``value`` (Canvas's JSON) with the ``verifier`` query parameter removed from every URL.

    A File's ``url`` carries a signed verifier that lets anyone holding it download the file
    (an errors file lists students) for about an hour; sidecars, the journal and status
    output keep the URL without it. Other strings and types are returned as they are.
    """
    if isinstance(value, dict):
        return {k: strip_verifiers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_verifiers(v) for v in value]
    if isinstance(value, str) and "verifier=" in value and "://" in value:
        parts = urlsplit(value)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "verifier"]
        return urlunsplit(parts._replace(query=urlencode(query)))
    return value


def _canvas_message(resp: requests.Response) -> str:
    """Canvas's error text out of its several body shapes (reference section 7)."""
    try:
        body = resp.json()
    except ValueError:
        return (resp.text or resp.reason or "").strip()[:500]
    if isinstance(body, dict):
        if isinstance(body.get("message"), str):
            return body["message"]
        if isinstance(body.get("error_message"), str):
            return body["error_message"]
        if isinstance(body.get("error"), str):
            return body["error"]
        errors = body.get("errors")
        if isinstance(errors, list):
            return "; ".join(e.get("message", str(e)) if isinstance(e, dict) else str(e) for e in errors)
        if isinstance(errors, dict):  # 422: {"field": [{"message": ...}]}
            parts = []
            for field_name, errs in errors.items():
                for e in errs if isinstance(errs, list) else [errs]:
                    msg = e.get("message", str(e)) if isinstance(e, dict) else str(e)
                    parts.append(f"{field_name}: {msg}")
            return "; ".join(parts)
    return str(body)[:500]


def classify(
    resp: requests.Response | None = None, exc: BaseException | None = None, *,
    timeout: float | None = None, proxy: str | None = None,
) -> CanvasError:
    """Turn a non-2xx answer, or a transport exception, into the error that says what to do.

    A transport exception is ``Retryable``, its message one plain line (``netfail.describe``):
    ``timeout`` is the request's (seconds), ``proxy`` the proxy it went through, if any.
    """
    if exc is not None:
        return Retryable(describe(exc, timeout=timeout, proxy=proxy))
    assert resp is not None
    status = resp.status_code
    msg = _canvas_message(resp)
    if status == 429 or (status == 403 and "rate limit" in msg.lower()):
        retry_after = None
        if resp.headers.get("Retry-After", "").strip().isdigit():
            retry_after = float(resp.headers["Retry-After"])
        err: CanvasError = RateLimited(f"HTTP {status}: {msg}", status=status, retry_after=retry_after)
        return err
    if status == 401:
        return TokenRejected(f"HTTP 401: {msg or 'unauthorized'}", status=status)
    if status == 403:
        return Forbidden(f"HTTP 403: {msg}", status=status)
    if status == 404:
        return NotFound(f"HTTP 404: {msg}", status=status)
    if status >= 500 or status in (408, 425):
        return Retryable(f"HTTP {status}: {msg}", status=status)
    return Refused(f"HTTP {status}: {msg}", status=status)


class _BigBlocks(HTTPAdapter):
    """urllib3 sends bodies in 16 KiB blocks by default; 1 MiB keeps up with the wire."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = BLOCK
        super().init_poolmanager(*args, **kwargs)


@dataclass
class Backoff:
    """Exponential backoff with jitter: initial, doubling, capped; ``reset`` after success."""

    initial: float = 5.0
    cap: float = 300.0
    attempt: int = 0

    def next(self) -> float:
        base = min(self.cap, self.initial * (2**self.attempt))
        self.attempt += 1
        return base * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempt = 0


class CanvasClient:
    """One Canvas account's SIS imports, with the token in a header and never in a URL.

    ``stop`` is set when the daemon is stopping: every wait inside the client returns at
    once and raises ``Stopped``.
    """

    def __init__(
        self,
        base_url: str,
        account_id: str,
        token: str,
        *,
        timeout: float = 60.0,
        ca_bundle: str | None = None,
        retry_initial: float = 5.0,
        retry_max: float = 300.0,
        stop: threading.Event | None = None,
        max_download: int = DEFAULT_MAX_DOWNLOAD,
        proxy: str | None = None,
    ) -> None:
        self.base = base_url.rstrip("/") + "/api/v1"
        origin = origin_of(self.base)
        if origin is None:
            raise ValueError("base_url: not an http(s) URL")
        self.origin: Origin = origin
        self.max_download = max_download
        self.account = f"/accounts/{quote(account_id, safe=':')}"
        self.timeout = timeout
        self.stop = stop or threading.Event()
        self.retry_initial, self.retry_max = retry_initial, retry_max
        self.retries: Counter[str] = Counter()  # retries by cause, for logs and metrics
        self.remaining: float | None = None  # X-Rate-Limit-Remaining of the last answer
        self._remaining_at = 0.0
        self._session = requests.Session()
        self._session.mount("https://", _BigBlocks())
        self._session.mount("http://", _BigBlocks())
        # No Authorization among the session's headers: ``request`` adds it to each hop
        # that goes to our origin, and only to those.
        self._session.headers.update({"User-Agent": f"sisdropd/{__version__}", "Accept": "application/json"})
        self._token = token
        self._session.verify = ca_bundle or True  # TLS verification is never off
        # No .netrc, no REQUESTS_CA_BUNDLE over ca_bundle: the proxy is chosen by proxy_for.
        self._session.trust_env = False
        self.proxy = proxy
        self._proxies: dict[tuple[str, str], dict[str, str]] = {}

    def close(self) -> None:
        self._session.close()

    def set_token(self, token: str) -> None:
        self._token = token

    # -- one attempt -------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return path if path.startswith("http") else self.base + path

    def proxies(self, url: str) -> dict[str, str]:
        """requests' ``proxies`` for ``url`` (``proxy_for``; worked out once per origin)."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        if key not in self._proxies:
            proxy, _ = proxy_for(url, self.proxy)
            self._proxies[key] = {parts.scheme: proxy} if proxy else {}
        return self._proxies[key]

    def request(self, method: str, path: str, *, download: bool = False, **kw: Any) -> requests.Response:
        """Send one request; return the 2xx answer or raise the classified ``CanvasError``.

        ``path`` is under the API base, or a whole URL Canvas gave us. Redirects of a GET
        are followed here, at most ``MAX_REDIRECTS``, each hop judged by ``_judge``: the
        token goes with a hop only when it is on our origin. Raises ``OffOrigin`` for a
        URL the policy refuses (nothing is sent to it).
        """
        self._pace()
        kw.setdefault("timeout", self.timeout)
        extra = dict(kw.pop("headers", None) or {})
        url = self._url(path)
        for hop in range(MAX_REDIRECTS + 1):
            headers = dict(extra)
            if self._judge(url, download=download, redirected=hop > 0):
                headers["Authorization"] = f"Bearer {self._token}"
            proxies = self.proxies(url)
            try:
                resp = self._session.request(method, url, headers=headers, allow_redirects=False, proxies=proxies, **kw)
            except requests.RequestException as e:
                timeout = kw["timeout"] if isinstance(kw["timeout"], int | float) else None
                raise classify(exc=e, timeout=timeout, proxy=next(iter(proxies.values()), None)) from None
            rem = resp.headers.get("X-Rate-Limit-Remaining")
            # Pacing follows the quota of answered requests. A refusal (a throttled 403 says
            # 0.0) is met by the caller's backoff, which logs how long it waits: pacing on top
            # of it would stretch "posting again in 0.3s" into ten silent seconds.
            if rem is not None and resp.status_code < 400 and origin_of(url) == self.origin:
                try:
                    self.remaining, self._remaining_at = float(rem), time.monotonic()
                except ValueError:
                    pass
            location = resp.headers.get("Location")
            if resp.status_code in _REDIRECTS and location and method in ("GET", "HEAD"):
                resp.close()
                del resp  # a refusal of the next hop must not keep this answer's socket alive
                url = urljoin(url, location)
                continue
            if resp.status_code >= 300:
                raise classify(resp)
            return resp
        raise Retryable(f"more than {MAX_REDIRECTS} redirects, last to {where(url)}")

    def _judge(self, url: str, *, download: bool, redirected: bool) -> bool:
        """Whether ``url`` gets the token; raises ``OffOrigin`` when it must not be requested.

        Our origin (scheme, host, port): yes. An API request anywhere else: refused. A
        download elsewhere: over https (or the configured scheme, when that is loopback
        http), without the token, and said in the log; over a weaker scheme: refused.
        """
        o = origin_of(url)
        if o == self.origin:
            return True
        what = "a redirect" if redirected else ("a download" if download else "a Canvas URL")
        ours = where(self.base).removesuffix("/api/v1")
        # Refusals are raised, and logged by the caller with the file they concern.
        if not download:
            raise OffOrigin(f"refused {what} to {where(url)}: not the configured Canvas origin {ours}, the token goes nowhere else")
        if o is None or o[0] not in ("https", self.origin[0]):
            raise OffOrigin(f"refused {what} to {where(url)}: not over {self.origin[0]}, the configured scheme")
        logger.info("{} to {}, another origin than Canvas's: fetched without the token", what, where(url))
        return False

    def _pace(self) -> None:
        """Slow down while Canvas says the quota is low (it refills about 10 units a second)."""
        if self.remaining is not None and self.remaining < LOW_QUOTA:
            # Time already spent since that answer (a backoff, polling) counts as refill.
            needed = min(10.0, (LOW_QUOTA - self.remaining) / REFILL_PER_SECOND)
            self.wait(needed - (time.monotonic() - self._remaining_at))

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds`` unless stopping; raises ``Stopped`` if the daemon stops."""
        if self.stop.wait(max(0.0, seconds)):
            raise Stopped()

    # -- the one retry loop ----------------------------------------------------------------
    def _retrying(
        self, method: str, url: str, *, what: str, log: Any = None, deadline: float | None = None,
        attempts: int | None = None, **kw: Any,
    ) -> requests.Response:
        """Send a safe request until it succeeds; return the 2xx answer.

        ``Retryable`` failures (network, timeouts, 5xx, rate limits) are retried after
        Canvas's Retry-After, else a growing backoff, each logged as "retrying ``what``".
        Re-raises the last one when the next try would start after ``deadline``
        (time.time()) or after ``attempts`` tries; raises ``Stopped`` if the daemon stops
        meanwhile. Other ``CanvasError``s are raised at once.
        """
        backoff = Backoff(self.retry_initial, self.retry_max)
        tries = 0
        while True:
            tries += 1
            try:
                return self.request(method, url, **kw)
            except Retryable as e:
                # A Retry-After (a proxy's 429; Canvas sends none) is a floor, never a reason to
                # hammer: "Retry-After: 0" still waits the growing backoff.
                delay = max(e.retry_after or 0.0, backoff.next())
                if (deadline is not None and time.time() + delay > deadline) or (attempts is not None and tries >= attempts):
                    raise
                self.retries[e.cause] += 1
                if log is not None:
                    log.warning("retrying {} in {:.1f}s: {}", what, delay, e.message)
                self.wait(delay)

    def call(self, method: str, path: str, *, log: Any = None, deadline: float | None = None, **kw: Any) -> Any:
        """Send a safe request through the retry loop (see ``_retrying``); return its JSON."""
        what = f"{method} {_path_only(path)}"
        return strip_verifiers(self._retrying(method, path, what=what, log=log, deadline=deadline, **kw).json())

    # -- the API -----------------------------------------------------------------------
    def whoami(self, **kw: Any) -> dict[str, Any]:
        return self.call("GET", "/users/self", **kw)

    def get_import(self, import_id: int, **kw: Any) -> dict[str, Any]:
        return self.call("GET", f"{self.account}/sis_imports/{import_id}", **kw)

    def list_imports(
        self, *, created_since: str | None = None, per_page: int = 100, log: Any = None, deadline: float | None = None,
        states: Sequence[str] = (),
    ) -> Iterator[dict[str, Any]]:
        """Every import of the account (only those in ``states``, if given), newest first,
        following ``Link: rel="next"``.

        Each page goes through the retry loop (until ``deadline``, if given).
        """
        params: dict[str, Any] = {"per_page": per_page}
        if created_since:
            params["created_since"] = created_since
        if states:
            params["workflow_state[]"] = list(states)
        url: str | None = f"{self.account}/sis_imports"
        while url:
            resp = self._retrying("GET", url, what="the list of imports", log=log, deadline=deadline, params=params)
            page = strip_verifiers(resp.json().get("sis_imports", []))
            url = resp.links.get("next", {}).get("url")
            resp.close()
            del resp  # its connection goes back to the pool, whatever the caller keeps
            yield from page
            if url and origin_of(url) != self.origin:
                # Refused before anything is sent, and raised, never taken as the end of the
                # list: a caller looking for a lost post must not conclude it is absent.
                self._judge(url, download=False, redirected=False)
            params = {}  # the next link carries them

    def abort(self, import_id: int, **kw: Any) -> dict[str, Any]:
        return self.call("PUT", f"{self.account}/sis_imports/{import_id}/abort", **kw)

    def create_import(
        self, source: Blocks | Path, *, upload_name: str, params: Mapping[str, Any],
        on_progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Post one file as a new SIS import, once. Returns Canvas's SisImport object.

        Streams ``source`` (``posting``'s sources: each block checked or hashed on its way
        and the last bytes held back until they may go; a path is posted as it is) as
        multipart part ``attachment`` named ``upload_name``; ``on_progress(bytes_sent)``
        after each block. Raises a ``CanvasError`` on any failure: ``NotSent`` when the
        request failed before its body was complete (Canvas provably created nothing),
        another ``Retryable`` when Canvas may or may not have created the import.
        Raises ``Stopped`` when the daemon stops during the upload, and the source's
        ``Cut`` when it refused the end of the file (both before the body was complete).
        """
        fields = {k: _form_value(v) for k, v in params.items() if not (k == "multi_term_batch_mode" and v is False)}
        ext = upload_name.rsplit(".", 1)[-1].lower()
        ctype = {"csv": "text/csv", "zip": "application/zip", "xml": "text/xml"}.get(ext, "application/octet-stream")
        plain: PlainFile | None = None
        if isinstance(source, Path):
            source = plain = PlainFile(source)
        body = MultipartBody(source, upload_name, fields, ctype, stop=self.stop, on_progress=on_progress)
        try:
            resp = self.request(
                "POST",
                f"{self.account}/sis_imports",
                data=body,
                headers={"Content-Type": body.content_type, "Content-Length": str(len(body))},
            )
        except Cancelled:
            raise Stopped() from None
        except Retryable as e:
            if body.completed or isinstance(e, RateLimited):
                raise  # Canvas may have the import; or throttled, which says so itself
            raise NotSent(e.message, status=e.status, retry_after=e.retry_after) from None
        finally:
            if plain is not None:
                plain.close()
        return strip_verifiers(resp.json())

    def download_errors_file(self, import_id: int, dest: Path) -> int | None:
        """Save import ``import_id``'s errors file to ``dest``; its size, or None if it has none.

        The URL is asked of Canvas now: what was stored has no ``verifier``, and a verifier
        lives about an hour (a restart may come later). Raises as ``download``.
        """
        what = f"GET {_path_only(self.account)}/sis_imports/{import_id}"
        imp = self._retrying("GET", f"{self.account}/sis_imports/{import_id}", what=what, attempts=DOWNLOAD_ATTEMPTS).json()
        url = ((imp or {}).get("errors_attachment") or {}).get("url")
        return self.download(url, dest) if url else None

    def download(self, url: str, dest: Path) -> int:
        """Save the file at ``url`` (an errors attachment) to ``dest``; returns its size.

        The token goes only to our origin (see ``_judge``; a files host gets the request
        without it). Tried at most ``DOWNLOAD_ATTEMPTS`` times. More than ``max_download``
        bytes (announced, or counted as they come) raise ``TooLarge``, and nothing is left
        behind. Raises the last ``CanvasError`` (``OffOrigin`` for a refused URL), or OSError.
        """
        resp = self._retrying("GET", url, what="the errors file", attempts=DOWNLOAD_ATTEMPTS, stream=True, download=True)
        limit = self.max_download
        too_large = TooLarge(
            f"the file at {where(url)} is larger than canvas.max_download_bytes ({limit} bytes): cut off, nothing kept"
        )
        announced = resp.headers.get("Content-Length", "")
        if announced.isdigit() and int(announced) > limit:
            resp.close()
            raise too_large
        # A hidden temporary name: whoever watches done/ sees the errors file whole or not at all.
        tmp = dest.with_name(f".sisdropd-{os.urandom(8).hex()}.tmp")  # random, as uuid4 is, without its imports
        n = 0
        try:
            with resp, open(tmp, "wb") as out:
                for chunk in resp.iter_content(BLOCK):
                    n += len(chunk)
                    if n > limit:  # counted after decoding: a gzip bomb is cut too
                        raise too_large
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return n


def client_for(
    cfg: Config, token: str, *, stop: threading.Event | None = None,
    patience: Literal["daemon", "submit", "command"] = "daemon",
) -> CanvasClient:
    """The client for ``cfg``'s Canvas account.

    ``patience`` says how long a retry may wait: "daemon" as configured (retry_initial up
    to retry_max); "submit" the same, capped at a minute (someone runs it from a script);
    "command" 1 to 5 seconds (an operator waits at a shell).
    """
    c = cfg.canvas
    initial, cap = c.retry_initial, c.retry_max
    if patience == "submit":
        cap = min(cap, 60.0)
    elif patience == "command":
        initial, cap = 1.0, 5.0
    return CanvasClient(
        c.base_url, c.account_id, token, timeout=c.timeout, ca_bundle=c.ca_bundle,
        retry_initial=initial, retry_max=cap, stop=stop, max_download=c.max_download_bytes,
        proxy=c.proxy,
    )


def _form_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _path_only(url: str) -> str:
    return urlsplit(url).path
