"""The simulator's upload side: big bodies streamed to disk, the multipart and chunked parsers.

A 50 MB chunked upload goes through real HTTP while the test samples its own memory; the
parsers are also checked directly against randomly split bodies (hypothesis).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sisdropd.simulator import FakeCanvas
from sisdropd.simulator.upload import BodyReader, receive_multipart

from .simclient import Client, client_fixture, sim_fixture  # noqa: F401 - the fixtures


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_50mb_chunked_multipart_upload_is_streamed(sim: FakeCanvas, client: Client) -> None:
    sim.set_outcome(".", "stuck")
    block = os.urandom(1 << 20)
    boundary = "----sisdropdtestboundary7e3f"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="attachment"; '
        f'filename="big.zip"\r\nContent-Type: application/zip\r\n\r\n'
    ).encode()
    tail = f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="skip_deletes"\r\n\r\ntrue\r\n--{boundary}--\r\n'.encode()
    expected = hashlib.sha256()

    def body() -> Iterator[bytes]:
        yield head
        for i in range(50):
            piece = block[i:] + block[:i]
            expected.update(piece)
            yield piece
        yield tail

    peak = baseline = _rss_kib()
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _rss_kib())
            stop.wait(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        r = client.s.post(
            client.url("/sis_imports"),
            data=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
    finally:
        stop.set()
        sampler.join()
    assert r.status_code == 200, r.text
    assert r.json()["skip_deletes"] is True
    (rec,) = sim.imports()
    assert rec["size"] == 50 << 20
    assert rec["sha256"] == expected.hexdigest()
    assert (peak - baseline) < 30 * 1024, f"RSS grew by {(peak - baseline) // 1024} MiB"


class _Pieces:
    """A request body handed over in the given pieces (what BodyReader.read returns)."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._data = data
        self._sizes = sizes or [7]
        self._pos = 0
        self._n = 0

    def read(self) -> bytes:
        size = self._sizes[self._n % len(self._sizes)]
        self._n += 1
        piece = self._data[self._pos : self._pos + size]
        self._pos += len(piece)
        return piece


MULTIPART_HEAD = (
    b'preamble\r\n--Bnd\r\nContent-Disposition: form-data; name="extension"\r\n\r\ncsv'
    b'\r\n--Bnd\r\nContent-Disposition: form-data; name="attachment"; filename="d/a%20b.csv"'
    b"\r\n\r\n"
)


@settings(max_examples=150, deadline=None)
@given(
    payload=st.binary(max_size=2000),
    noise=st.sampled_from([b"", b"\r", b"\r\n", b"\r\n-", b"\r\n--", b"\r\n--Bn", b"--Bnd"]),
    sizes=st.lists(st.integers(min_value=1, max_value=40), max_size=6),
)
def test_multipart_parser_survives_any_split(
    tmp_path_factory: pytest.TempPathFactory, payload: bytes, noise: bytes, sizes: list[int]
) -> None:
    content = noise + payload + noise
    assume(b"\r\n--Bnd" not in content)  # a client picks a boundary its data does not hold
    body = MULTIPART_HEAD + content + b"\r\n--Bnd--\r\nepilogue"
    dest = tmp_path_factory.mktemp("mp") / "out"
    result = receive_multipart(_Pieces(body, sizes), "Bnd", dest)  # type: ignore[arg-type]
    assert result.file_name == "a b.csv"
    assert result.params == {"extension": "csv"}
    assert dest.read_bytes() == content
    assert result.size == len(content)


class _Trickle(io.RawIOBase):
    """A socket-like raw reader that returns at most ``n`` bytes per read."""

    def __init__(self, data: bytes, n: int) -> None:
        self._buf = io.BytesIO(data)
        self._n = n

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._buf.read(min(len(b), self._n))
        b[: len(data)] = data
        return len(data)


@settings(max_examples=50, deadline=None)
@given(
    payload=st.binary(max_size=5000),
    chunk=st.integers(min_value=1, max_value=900),
    trickle=st.integers(min_value=1, max_value=100),
)
def test_chunked_body_is_decoded_exactly(payload: bytes, chunk: int, trickle: int) -> None:
    encoded = b"".join(
        b"%x;ext=1\r\n" % len(payload[i : i + chunk]) + payload[i : i + chunk] + b"\r\n"
        for i in range(0, len(payload), chunk)
    )
    rfile = io.BufferedReader(_Trickle(encoded + b"0\r\nX-Trailer: 1\r\n\r\nNEXT", trickle))
    reader = BodyReader(rfile, length=None, chunked=True)
    got = b"".join(iter(reader.read, b""))
    assert got == payload
    assert reader.done and rfile.read() == b"NEXT"  # the next request is left untouched


