"""The request and reply records passed between the simulator's server and its endpoints.

:class:`Request` is one parsed HTTP request with its body still unread (a streaming
:class:`~.upload.BodyReader`); :class:`Reply` is one answer. Canvas's canned error bodies
(reference §7) live here so every endpoint answers with the same words.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

from sisdropd.simulator.upload import BodyReader

NOT_FOUND = {"errors": [{"message": "The specified resource does not exist."}]}
UNAUTHENTICATED = {
    "status": "unauthenticated",
    "errors": [{"message": "user authorization required"}],
}
INVALID_TOKEN = {"errors": [{"message": "Invalid access token."}]}
UNAUTHORIZED = {
    "status": "unauthorized",
    "errors": [{"message": "user not authorized to perform that action"}],
}
WWW_AUTH = ("WWW-Authenticate", 'Bearer realm="canvas-lms"')


@dataclass
class Request:
    """One request: ``path`` without the query, ``query`` as ordered pairs, ``base`` the
    scheme and host the client used (for URLs in answers)."""

    method: str
    target: str
    path: str
    query: list[tuple[str, str]]
    headers: Message[str, str]
    body: BodyReader
    base: str

    def header(self, name: str) -> str:
        """A header's value, "" when absent (names are case-insensitive)."""
        return self.headers.get(name) or ""

    def bearer(self) -> str:
        """The token of ``Authorization: Bearer ...``, else of ``access_token=``, else ""."""
        scheme, _, value = self.header("Authorization").strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return next((v for k, v in self.query if k == "access_token"), "")

    def read_small(self, limit: int = 1 << 20) -> bytes:
        """The body (up to ``limit`` bytes; the rest is left for the server to drain)."""
        raw = b""
        while len(raw) < limit and (block := self.body.read()):
            raw += block
        return raw


def parse_query(qs: str) -> list[tuple[str, str]]:
    return urllib.parse.parse_qsl(qs, keep_blank_values=True)


@dataclass
class Reply:
    """One HTTP answer; ``rate`` adds Canvas's rate-limit headers."""

    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    file: Path | None = None
    rate: bool = False


def json_reply(
    status: int, obj: Any, *, rate: bool = True, headers: list[tuple[str, str]] | None = None
) -> Reply:
    """A JSON answer; API answers carry rate-limit headers unless ``rate`` is False."""
    return Reply(status, json.dumps(obj).encode(), rate=rate, headers=headers or [])
