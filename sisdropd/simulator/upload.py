"""Streaming request bodies for the Canvas simulator: Content-Length, chunked, multipart.

Uploads go straight to disk in blocks of about 1 MiB and are never held whole in memory.
The multipart parser looks for the boundary with ``bytes.find`` on each block plus a short
carried-over tail, so there is no per-byte Python work on the hot path.

Contract: :class:`BodyReader` turns the socket's buffered reader into a sequence of blocks
(``read()`` returns ``b""`` once the body is complete); :func:`receive_raw` and
:func:`receive_multipart` consume a reader completely and store what they find. Both raise
:class:`ClientGone` when the peer closes early and :class:`BadBody` when the framing is broken.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20
_COALESCE = 256 * 1024
_MAX_PART_HEADER = 16 * 1024
_MAX_FIELD = 1 << 20


class ClientGone(Exception):
    """The client closed the connection before the whole body arrived."""


class BadBody(Exception):
    """The body's framing (chunk sizes, multipart structure) is broken."""


class BodyReader:
    """Read a request body from ``rfile`` in large blocks.

    Given ``length`` (Content-Length) or ``chunked=True`` (Transfer-Encoding: chunked); with
    neither the body is empty. ``read()`` returns the next block, ``b""`` at the end.
    """

    def __init__(self, rfile: BinaryIO, *, length: int | None, chunked: bool) -> None:
        self._rfile = rfile
        self._left = 0 if length is None else max(0, length)
        self._chunked = chunked
        self._chunk_left = 0
        self._need_crlf = False
        self.done = not chunked and self._left == 0
        self.received = 0

    def read(self) -> bytes:
        """Return the next block of the body (up to about 1 MiB), or ``b""`` when complete."""
        if self.done:
            return b""
        if not self._chunked:
            data = self._rfile.read(min(CHUNK, self._left))
            if not data:
                raise ClientGone("body ended early")
            self._left -= len(data)
            self.received += len(data)
            self.done = self._left == 0
            return data
        first = self._read_chunk_piece()
        if len(first) >= _COALESCE or self.done:
            return first
        # Clients that send tiny chunks: gather them so the parser works on big blocks.
        pieces = [first]
        total = len(first)
        while total < _COALESCE and not self.done:
            piece = self._read_chunk_piece()
            if not piece:
                break
            pieces.append(piece)
            total += len(piece)
        return b"".join(pieces)

    def drain(self) -> None:
        """Read and discard whatever is left of the body."""
        while self.read():
            pass

    def _read_chunk_piece(self) -> bytes:
        if self._chunk_left == 0:
            if self._need_crlf:
                line = self._rfile.readline(66)
                if not line:
                    raise ClientGone("body ended early")
                if line.strip():
                    raise BadBody("chunk not followed by CRLF")
                self._need_crlf = False
            line = self._rfile.readline(1024)
            if not line:
                raise ClientGone("body ended early")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise BadBody("bad chunk size line") from exc
            if size < 0:
                raise BadBody("bad chunk size line")
            if size == 0:
                while True:  # trailers, up to the blank line
                    trailer = self._rfile.readline(8192)
                    if not trailer:
                        raise ClientGone("body ended early")
                    if not trailer.strip():
                        break
                self.done = True
                return b""
            self._chunk_left = size
        data = self._rfile.read(min(CHUNK, self._chunk_left))
        if not data:
            raise ClientGone("body ended early")
        self._chunk_left -= len(data)
        self.received += len(data)
        if self._chunk_left == 0:
            self._need_crlf = True
        return data


def receive_raw(body: BodyReader, dest: Path) -> int:
    """Write the whole body to ``dest``; return its size in bytes."""
    size = 0
    with open(dest, "wb") as out:
        while data := body.read():
            out.write(data)
            size += len(data)
    return size


@dataclass
class MultipartResult:
    """What a multipart/form-data body held.

    ``params``: the plain form fields (UTF-8 text; later fields win). ``file_name``: the
    normalised file name of the first part named ``attachment`` that carried a non-empty
    file name, or None. ``size``: bytes of that file, stored at the ``dest`` path given.
    """

    params: dict[str, str] = field(default_factory=dict)
    file_name: str | None = None
    content_type: str | None = None
    size: int = 0


class _Source:
    """The body as a stream of blocks with push-back of unconsumed bytes."""

    def __init__(self, body: BodyReader) -> None:
        self._body = body
        self._pending = b""

    def next(self) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        return self._body.read()

    def push(self, data: bytes) -> None:
        if data:
            self._pending = data + self._pending

    def stream_until(self, delim: bytes, sink: Callable[[memoryview | bytes], object]) -> bool:
        """Feed everything before ``delim`` to ``sink`` and consume ``delim``.

        Returns False if the body ended without ``delim`` (everything was fed to ``sink``).
        """
        length = len(delim)
        tail = b""  # never holds a whole delimiter; at most len(delim) - 1 bytes
        while True:
            data = self.next()
            if not data:
                if tail:
                    sink(tail)
                return False
            if tail:
                if len(data) < length:
                    data = tail + data
                else:
                    joint = tail + data[: length - 1]
                    i = joint.find(delim)
                    if i != -1:  # starts inside the tail, ends inside data
                        sink(tail[:i])
                        self.push(data[i + length - len(tail) :])
                        return True
                    sink(tail)
                tail = b""
            i = data.find(delim)
            view = memoryview(data)
            if i != -1:
                if i:
                    sink(view[:i])
                self.push(data[i + length :])
                return True
            keep = min(length - 1, len(data))
            if len(data) > keep:
                sink(view[: len(data) - keep])
            tail = data[len(data) - keep :]

    def read_exact(self, n: int) -> bytes:
        """Return the next ``n`` bytes (fewer only at the end of the body)."""
        got = b""
        while len(got) < n:
            data = self.next()
            if not data:
                break
            got += data
        self.push(got[n:])
        return got[:n]

    def read_small_until(self, delim: bytes, limit: int) -> bytes | None:
        """Return the bytes before ``delim`` (consumed); None at end of body; BadBody if > limit."""
        parts: list[bytes] = []
        total = 0

        def collect(chunk: memoryview | bytes) -> None:
            nonlocal total
            total += len(chunk)
            if total > limit:
                raise BadBody("multipart header too long")
            parts.append(bytes(chunk))

        if not self.stream_until(delim, collect):
            return None
        return b"".join(parts)


def _discard(_: memoryview | bytes) -> None:
    return None


_PARAM_RE = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)', re.DOTALL)


def parse_header_params(value: str) -> tuple[str, dict[str, str]]:
    """Split ``type; a=1; b="x y"`` into (lower-cased main value, {lower-cased name: raw value}).

    Quoted values lose their quotes but keep backslashes, as Rack does for file names.
    """
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for m in _PARAM_RE.finditer(";" + rest):
        name, raw = m.group(1).lower(), m.group(2).strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1]
        params.setdefault(name, raw)
    return main.strip().lower(), params


_PCT_ANY = re.compile(r"%.?.?", re.DOTALL)
_PCT_OK = re.compile(r"%[0-9a-fA-F]{2}")


def rack_filename(params: dict[str, str]) -> str | None:
    """The upload's file name as Rack hands it to Canvas.

    ``filename*`` (RFC 5987) wins over ``filename``; %XX escapes are decoded when every %
    starts a valid escape; folders are stripped (``a/b\\c.csv`` -> ``c.csv``). None when the
    part carries no file name (Rack then treats it as a plain field).
    """
    if "filename*" in params:
        name = params["filename*"].split("'", 2)[-1]
    elif "filename" in params:
        name = params["filename"]
    else:
        return None
    if all(_PCT_OK.fullmatch(s) for s in _PCT_ANY.findall(name)):
        name = urllib.parse.unquote(name, errors="replace")
    parts = re.split(r"[/\\]", name)
    return parts[-1] if parts else ""


def _collector(value: bytearray) -> Callable[[memoryview | bytes], None]:
    """A sink keeping the first _MAX_FIELD bytes of a plain form field in ``value``."""

    def collect(chunk: memoryview | bytes) -> None:
        if len(value) < _MAX_FIELD:
            value.extend(chunk[: _MAX_FIELD - len(value)])

    return collect


def _part_headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def receive_multipart(body: BodyReader, boundary: str, dest: Path) -> MultipartResult:
    """Parse a multipart/form-data body, writing the ``attachment`` file part to ``dest``.

    Returns the form fields and the attachment's name and size (``file_name`` None when there
    was no usable attachment; ``dest`` may then exist, empty). Raises BadBody on a body that
    ends before its closing boundary or has an oversized part header; ClientGone if the
    client disconnects.
    """
    src = _Source(body)
    src.push(b"\r\n")  # so the first boundary is found like every later one
    delim = b"\r\n--" + boundary.encode("latin-1")
    result = MultipartResult()
    if not src.stream_until(delim, _discard):
        raise BadBody("no multipart boundary found")
    with open(dest, "wb") as out:
        while True:
            after = src.read_exact(2)
            if after == b"--":
                break  # closing delimiter; the epilogue is drained below
            src.push(after)
            if src.read_small_until(b"\r\n", 1024) is None:  # transport padding
                raise BadBody("multipart body ended early")
            raw = src.read_small_until(b"\r\n\r\n", _MAX_PART_HEADER)
            if raw is None:
                raise BadBody("multipart body ended early")
            headers = _part_headers(raw)
            _, disp = parse_header_params(headers.get("content-disposition", ""))
            name = disp.get("name", "")
            filename = rack_filename(disp)
            if filename is not None and filename != "":
                if name == "attachment" and result.file_name is None:
                    result.file_name = filename
                    result.content_type = headers.get("content-type")
                    size = 0

                    def write(chunk: memoryview | bytes) -> None:
                        nonlocal size
                        out.write(chunk)
                        size += len(chunk)

                    found = src.stream_until(delim, write)
                    result.size = size
                else:
                    found = src.stream_until(delim, _discard)
            else:
                value = bytearray()
                found = src.stream_until(delim, _collector(value))
                if filename is None and name:
                    result.params[name] = value.decode("utf-8", "replace")
            if not found:
                raise BadBody("multipart body ended before its closing boundary")
    while src.next():  # the epilogue, ignored
        pass
    return result
