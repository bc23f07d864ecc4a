"""The body of a create request: one file streamed as ``multipart/form-data``.

``MultipartBody`` gives requests a body with a known Content-Length that it reads in
blocks of up to ``BLOCK`` bytes: memory does not grow with the file. The part's file name
(unique per drop) is what Canvas lists in ``csv_attachments``, which is how a crashed
daemon finds its import again (``importer.find_posted``).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import IO

from sisdropd.crashpoint import crashpoint

BLOCK = 1 << 20  # bytes per read and per socket send


class Cancelled(Exception):
    """The upload was cut off because ``stop`` was set; Canvas got no complete body."""


class MultipartBody:
    """A ``multipart/form-data`` body streamed from an open file, with a known length.

    ``fields`` are sent first as plain form fields, then the file as part ``attachment``
    named ``filename``. Reads come in blocks of up to ``BLOCK`` bytes; the file itself is
    never held in memory. ``sent`` counts the file bytes handed to the socket so far.
    """

    def __init__(
        self, f: IO[bytes], size: int, filename: str, fields: Mapping[str, str], content_type: str,
        stop: threading.Event | None = None, on_sent: Callable[[int, int], None] | None = None,
    ) -> None:
        self.stop = stop
        self.on_sent = on_sent  # (file bytes sent, file size) after each block: a progress display
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
                raise Cancelled()  # cut the upload off: Canvas creates nothing from half a body
            chunk = part.read(min(n, self._file_left)) if self._file_left > 0 else b""
            if not chunk:
                if self._file_left > 0:
                    raise OSError(f"the file shrank while it was being sent ({self._file_left} bytes missing)")
                self._parts.pop(0)
                continue
            self._file_left -= len(chunk)
            self.sent += len(chunk)
            if self.on_sent is not None:
                self.on_sent(self.sent, self._size)
            if not self._half and self.sent * 2 >= self._size:
                self._half = True
                crashpoint("uploading")
            return chunk
        return b""

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(BLOCK):
            yield chunk
