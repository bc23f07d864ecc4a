"""The body of a create request: one file as ``multipart/form-data``, its last bytes held back.

``MultipartBody`` gives requests a body with a known Content-Length that it reads block
by block: the form fields, then the file's blocks as its ``Blocks`` source hands them out,
then the closing boundary. The source decides when the file has ended: it returns ``b""``
only once everything it must verify holds (``posting``'s sources: the check passed, the
bytes sent hash to the bytes checked), and raises ``Cut`` otherwise. So the closing
boundary, the request's last bytes, reaches the socket only after that verdict; until then
Canvas holds a body shorter than its Content-Length and without its closing boundary,
from which it creates nothing, and a ``Cut`` closes the connection there.

``completed`` says whether the closing boundary was handed to the socket: while it is
False, whatever went wrong, Canvas provably has no complete body (``canvas.NotSent``).

The part's file name (unique per drop) is what Canvas lists in ``csv_attachments``, which
is how a crashed daemon finds its import again (``importer.find_posted``).
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from sisdropd.crashpoint import crashpoint

BLOCK = 1 << 20  # bytes per read and per socket send
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


class Cut(Exception):
    """The body was cut off before its last bytes: Canvas got no complete body.

    ``why`` says why, for the caller to act on: "stopped" (the daemon is stopping),
    "rejected" (the check failed), "held" (the change guard holds the file), "changed"
    (the bytes sent are not the bytes checked). Not an OSError: urllib3 must not take it
    for a network error, only close the connection.
    """

    why = "cut"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.why)


class Cancelled(Cut):
    """The upload was cut off because ``stop`` was set."""

    why = "stopped"


class Blocks(Protocol):
    """A file's bytes as a body reads them: ``size`` bytes in consecutive blocks."""

    size: int

    def read_block(self) -> bytes:
        """The next block (at most ``BLOCK`` bytes); ``b""`` at the end, once the file may
        be completed. Raises ``Cut`` to refuse the end, OSError when the file cannot be read."""
        ...


class PlainFile:
    """A regular file posted as it is, with nothing to verify (tools and tests).

    Opened without following a link; ``sha256`` is that of the bytes handed out. Raises
    OSError from the constructor for a link, a FIFO or another non-regular file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._fd = os.open(path, _OPEN)
        st = os.fstat(self._fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(self._fd)
            raise OSError(f"{os.fspath(path)} is not a regular file")
        self.size = st.st_size
        self._at = 0
        self._hash = hashlib.sha256()

    def read_block(self) -> bytes:
        block = os.pread(self._fd, min(BLOCK, self.size - self._at), self._at) if self._at < self.size else b""
        if not block and self._at < self.size:
            raise OSError(f"the file shrank while it was being sent ({self.size - self._at} bytes missing)")
        self._at += len(block)
        self._hash.update(block)
        return block

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        os.close(self._fd)


class MultipartBody:
    """A ``multipart/form-data`` body streamed from a ``Blocks`` source, with a known length.

    ``fields`` are sent first as plain form fields, then the file as part ``attachment``
    named ``filename``, then the closing boundary, handed out only once the source has
    ended (see the module's docstring). The file is never held in memory. ``sent`` counts
    the file bytes handed to the socket so far and ``on_progress(sent)`` is called after
    each block; ``stop``, once set, cuts the body at the next block (``Cancelled``).
    """

    def __init__(
        self, source: Blocks, filename: str, fields: Mapping[str, str], content_type: str, *,
        stop: threading.Event | None = None, on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.source = source
        self.stop = stop
        self.on_progress = on_progress
        self.boundary = "sisdropd-" + os.urandom(16).hex()  # random, as uuid4 is, without uuid's imports
        b = self.boundary
        head = "".join(
            f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()
        )
        head += (
            f'--{b}\r\nContent-Disposition: form-data; name="attachment"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        )
        self._head: bytes | None = head.encode("utf-8")
        self._tail = f"\r\n--{b}--\r\n".encode()
        self._len = len(self._head) + source.size + len(self._tail)
        self._size = source.size
        self._half = False
        self._ended = False
        self.sent = 0
        self.completed = False  # the closing boundary was handed to the socket

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self._len

    def read(self, n: int = -1) -> bytes:
        """The next piece of the body (urllib3 asks for ``BLOCK`` bytes at a time)."""
        if self._head is not None:
            head, self._head = self._head, None
            return head
        if self._ended:
            return b""
        if self.stop is not None and self.stop.is_set():
            raise Cancelled()  # cut the upload off: Canvas creates nothing from half a body
        chunk = self.source.read_block()
        if chunk:
            self.sent += len(chunk)
            if not self._half and self.sent * 2 >= self._size:
                self._half = True
                crashpoint("uploading")
            if self.on_progress is not None:
                self.on_progress(self.sent)
            return chunk
        if self.sent != self._size:
            raise OSError(f"the file ended after {self.sent} of its {self._size} bytes")
        self._ended = True
        self.completed = True
        return self._tail

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(BLOCK):
            yield chunk
