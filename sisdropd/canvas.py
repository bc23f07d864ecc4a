"""The Canvas SIS Import API over HTTP: create, show, list, abort, and the errors file.

``classify`` is the one pure function that turns an HTTP answer or a transport error into
what to do next (``Retryable``/``RateLimited``: try again later; ``TokenRejected``: 401;
``Forbidden``: SIS imports not enabled; ``Refused``: Canvas said no to this request;
``NotFound``). Reads are retried with backoff by ``CanvasClient.call``; a create is sent
exactly once per call (``create_import``) because only the caller can prove, by looking
in Canvas's list, that a lost answer did not create an import.

Uploads stream from disk as ``multipart/form-data`` with a known Content-Length, in
1 MiB blocks: memory does not grow with the file, and the part's file name (unique per
drop) is what Canvas lists in ``csv_attachments``, which is how a crashed daemon finds its
import again.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import HTTPAdapter

from sisdropd import __version__
from sisdropd.crashpoint import crashpoint
from sisdropd.logs import clean

BLOCK = 1 << 20  # bytes per read and per socket send
LOW_QUOTA = 100.0  # X-Rate-Limit-Remaining below this: slow down
REFILL_PER_SECOND = 10.0  # Canvas's default leaky-bucket refill rate


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


def classify(resp: requests.Response | None = None, exc: BaseException | None = None) -> CanvasError:
    """Turn a non-2xx answer, or a transport exception, into the error that says what to do."""
    if exc is not None:
        if isinstance(exc, requests.Timeout):
            return Retryable(f"timed out ({type(exc).__name__})")
        return Retryable(f"network error: {type(exc).__name__}: {exc}")
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


class MultipartBody:
    """A ``multipart/form-data`` body streamed from an open file, with a known length.

    ``fields`` are sent first as plain form fields, then the file as part ``attachment``
    named ``filename``. Reads come in blocks of up to ``BLOCK`` bytes; the file itself is
    never held in memory. ``sent`` counts the file bytes handed to the socket so far.
    """

    def __init__(
        self, f: IO[bytes], size: int, filename: str, fields: Mapping[str, str], content_type: str,
        stop: threading.Event | None = None,
    ) -> None:
        self.stop = stop
        self.boundary = "sisdropd-" + uuid.uuid4().hex
        b = self.boundary
        head = "".join(
            f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()
        )
        head += (
            f'--{b}\r\nContent-Disposition: form-data; name="attachment"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        )
        self._parts: list[bytes | IO[bytes]] = [head.encode("utf-8"), f, f"\r\n--{b}--\r\n".encode()]
        self._len = len(self._parts[0]) + size + len(self._parts[2])  # type: ignore[arg-type]
        self._file = f
        self._file_left = size
        self._half = False
        self._size = size
        self.sent = 0

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self._len

    def read(self, n: int = -1) -> bytes:
        n = BLOCK if n is None or n < 0 else n
        while self._parts:
            part = self._parts[0]
            if isinstance(part, bytes):
                chunk, rest = part[:n], part[n:]
                if rest:
                    self._parts[0] = rest
                else:
                    self._parts.pop(0)
                if chunk:
                    return chunk
                continue
            if self.stop is not None and self.stop.is_set():
                raise Stopped()  # cut the upload off: Canvas creates nothing from half a body
            chunk = part.read(min(n, self._file_left)) if self._file_left > 0 else b""
            if not chunk:
                if self._file_left > 0:
                    raise OSError(f"the file shrank while it was being sent ({self._file_left} bytes missing)")
                self._parts.pop(0)
                continue
            self._file_left -= len(chunk)
            self.sent += len(chunk)
            if not self._half and self.sent * 2 >= self._size:
                self._half = True
                crashpoint("uploading")
            return chunk
        return b""

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(BLOCK):
            yield chunk


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
    ) -> None:
        self.base = base_url.rstrip("/") + "/api/v1"
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
        self._session.headers.update(
            {"Authorization": f"Bearer {token}", "User-Agent": f"sisdropd/{__version__}", "Accept": "application/json"}
        )
        self._session.verify = ca_bundle or True  # TLS verification is never off
        self._session.trust_env = False  # no proxy or netrc surprises; the token goes where we say

    def close(self) -> None:
        self._session.close()

    def set_token(self, token: str) -> None:
        self._session.headers["Authorization"] = f"Bearer {token}"

    # -- one attempt -------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return path if path.startswith("http") else self.base + path

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        """Send one request; return the 2xx answer or raise the classified ``CanvasError``."""
        self._pace()
        kw.setdefault("timeout", self.timeout)
        try:
            resp = self._session.request(method, self._url(path), **kw)
        except requests.RequestException as e:
            raise classify(exc=e) from None
        rem = resp.headers.get("X-Rate-Limit-Remaining")
        if rem is not None:
            try:
                self.remaining, self._remaining_at = float(rem), time.monotonic()
            except ValueError:
                pass
        if resp.status_code >= 300:
            raise classify(resp)
        return resp

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

    # -- retried reads -----------------------------------------------------------------
    def call(self, method: str, path: str, *, log: Any = None, deadline: float | None = None, **kw: Any) -> Any:
        """Send a safe request, retrying transient failures with backoff; return its JSON.

        Retries ``Retryable`` (network, timeouts, 5xx, rate limits) until it succeeds, the
        daemon stops (``Stopped``) or ``deadline`` (time.time()) passes (then re-raises the
        last error). Other ``CanvasError``s are raised at once.
        """
        backoff = Backoff(self.retry_initial, self.retry_max)
        while True:
            try:
                return self.request(method, path, **kw).json()
            except Retryable as e:
                delay = e.retry_after if e.retry_after is not None else backoff.next()
                if deadline is not None and time.time() + delay > deadline:
                    raise
                self.retries[e.cause] += 1
                if log is not None:
                    log.warning("retrying {} {} in {:.1f}s: {}", method, _path_only(path), delay, e.message)
                self.wait(delay)

    # -- the API -----------------------------------------------------------------------
    def whoami(self, **kw: Any) -> dict[str, Any]:
        return self.call("GET", "/users/self", **kw)

    def get_import(self, import_id: int, **kw: Any) -> dict[str, Any]:
        return self.call("GET", f"{self.account}/sis_imports/{import_id}", **kw)

    def list_imports(
        self, *, created_since: str | None = None, per_page: int = 100, log: Any = None, deadline: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every import of the account, newest first, following ``Link: rel="next"``.

        Each page is retried like ``call`` (until ``deadline``, if given).
        """
        params: dict[str, Any] = {"per_page": per_page}
        if created_since:
            params["created_since"] = created_since
        url: str | None = f"{self.account}/sis_imports"
        while url:
            backoff = Backoff(self.retry_initial, self.retry_max)
            while True:
                try:
                    resp = self.request("GET", url, params=params)
                    break
                except Retryable as e:
                    delay = e.retry_after if e.retry_after is not None else backoff.next()
                    if deadline is not None and time.time() + delay > deadline:
                        raise
                    self.retries[e.cause] += 1
                    if log is not None:
                        log.warning("retrying the list of imports in {:.1f}s: {}", delay, e.message)
                    self.wait(delay)
            yield from resp.json().get("sis_imports", [])
            url = resp.links.get("next", {}).get("url")
            params = {}  # the next link carries them

    def abort(self, import_id: int, **kw: Any) -> dict[str, Any]:
        return self.call("PUT", f"{self.account}/sis_imports/{import_id}/abort", **kw)

    def create_import(
        self, path: Path, *, upload_name: str, params: Mapping[str, Any], fd: int | None = None
    ) -> dict[str, Any]:
        """Post one file as a new SIS import, once. Returns Canvas's SisImport object.

        Streams ``path`` (or the already-open descriptor ``fd``) as multipart part
        ``attachment`` named ``upload_name``. Raises a ``CanvasError`` on any failure:
        for a ``Retryable`` one, Canvas may or may not have created the import.
        """
        fields = {k: _form_value(v) for k, v in params.items() if not (k == "multi_term_batch_mode" and v is False)}
        ext = upload_name.rsplit(".", 1)[-1].lower()
        ctype = {"csv": "text/csv", "zip": "application/zip", "xml": "text/xml"}.get(ext, "application/octet-stream")
        f = os.fdopen(os.dup(fd), "rb", buffering=0) if fd is not None else open(path, "rb", buffering=0)  # noqa: SIM115
        with f:
            f.seek(0)
            size = os.fstat(f.fileno()).st_size
            body = MultipartBody(f, size, upload_name, fields, ctype, self.stop)
            resp = self.request(
                "POST",
                f"{self.account}/sis_imports",
                data=body,
                headers={"Content-Type": body.content_type, "Content-Length": str(len(body))},
            )
        return resp.json()

    def download(self, url: str, dest: Path) -> int:
        """Save the file at ``url`` (an errors attachment) to ``dest``; returns its size.

        The token is only sent when the URL is on the Canvas host itself.
        """
        same_host = urlsplit(url).netloc == urlsplit(self.base).netloc
        headers = None if same_host else {"Authorization": None}
        backoff = Backoff(self.retry_initial, self.retry_max)
        for _ in range(5):
            try:
                resp = self.request("GET", url, stream=True, headers=headers)
                break
            except Retryable as e:
                self.retries[e.cause] += 1
                self.wait(backoff.next())
        else:
            raise Retryable("errors file download kept failing")
        # A hidden temporary name: whoever watches done/ sees the errors file whole or not at all.
        tmp = dest.with_name(f".sisdropd-{uuid.uuid4().hex[:16]}.tmp")
        n = 0
        try:
            with resp, open(tmp, "wb") as out:
                for chunk in resp.iter_content(BLOCK):
                    out.write(chunk)
                    n += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return n


def _form_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _path_only(url: str) -> str:
    return urlsplit(url).path
