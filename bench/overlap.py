"""The options of issue 15 for the pre-flight pass and the upload, measured side by side.

A users CSV (and a zip of it) is posted to a plain sink on 127.0.0.1 (a separate process
that reads each body and discards it) with this checkout's ``CanvasClient``, each way:

- ``post alone``: the bytes sent as they are, no check, no hash (the floor);
- ``check, then post``: ``check_path`` (which hashes a CSV), then the upload (the design
  before issue 15: the two add up);
- ``check first, hash while sending``: the up-front path of ``posting.Outgoing`` (the
  check and its hash, then the upload hashing what it sends, compared before the last
  bytes; what a zip always gets);
- ``check while sending``: the streamed path of ``posting.Outgoing`` (each block checked
  and hashed on its way, the last bytes held back until the verdict);
- ``check alone``: ``check_path`` by itself, the "faster pass" option's budget.

    python bench/overlap.py [--sizes 4,64,1024] [--runs 3] [--folder /tmp]

Run it in the project's .venv from the checkout's root; best of ``--runs`` in MB/s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from sisdropd import posting, preflight
from sisdropd.canvas import CanvasClient
from sisdropd.upload import BLOCK

SINK = r'''
import socket, socketserver, sys
class H(socketserver.StreamRequestHandler):
    def handle(self):
        buf = memoryview(bytearray(1 << 20))
        while True:
            line = self.rfile.readline(65537)
            if not line:
                return
            length = 0
            while (h := self.rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
                k, _, v = h.decode("latin-1").partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v)
            while length:
                n = self.rfile.readinto(buf[: min(length, len(buf))])
                if not n:
                    return
                length -= n
            body = b'{"id": 1, "workflow_state": "created"}'
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
class S(socketserver.ThreadingTCPServer):
    daemon_threads = allow_reuse_address = True
s = S(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
'''
PARAMS = {"import_type": "instructure_csv"}


class Raw:
    """The bytes as they are: no check, no hash."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "rb", buffering=0)  # noqa: SIM115
        self.size = path.stat().st_size

    def read_block(self) -> bytes:
        return self.f.read(BLOCK)


def users_csv(path: Path, size: int) -> Path:
    if path.exists() and path.stat().st_size >= size:
        return path
    with path.open("wb") as f:
        f.write(b"user_id,login_id,first_name,last_name,email,status\n")
        i = n = 0
        while n < size:
            block = "".join(
                f"U{j:09d},login{j},First{j % 97},Last{j * 7919 % 1000003},user{j}@example.edu,active\n"
                for j in range(i, i + 20_000)
            ).encode()
            i += 20_000
            f.write(block)
            n += len(block)
    return path


def best(runs: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="4,64,1024")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()))
    args = ap.parse_args()
    sink_py = args.folder / "overlap-sink.py"
    sink_py.write_text(SINK)
    sink = subprocess.Popen([sys.executable, str(sink_py)], stdout=subprocess.PIPE)
    assert sink.stdout is not None
    client = CanvasClient(f"http://127.0.0.1:{int(sink.stdout.readline())}", "1", "bench-token", timeout=600)
    rules = posting.Rules(limits=preflight.Limits(max_bytes=8 << 30))
    try:
        print(f"{'file':<16}{'post alone':>12}{'check,post':>12}{'check,hash':>12}{'streamed':>12}{'check only':>12}  MB/s, best of {args.runs}")
        for mib in (int(s) for s in args.sizes.split(",")):
            csv = users_csv(args.folder / f"overlap-users-{mib}.csv", mib << 20)
            zpath = args.folder / f"overlap-users-{mib}.zip"
            if not zpath.exists():
                with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
                    z.write(csv, "users.csv")
            for path in (csv, zpath):
                size = path.stat().st_size

                def alone(p: Path = path) -> None:
                    client.create_import(Raw(p), upload_name="sisdrop-0-" + p.name, params=PARAMS)

                def check_then_post(p: Path = path) -> None:
                    assert preflight.check_path(p).ok
                    client.create_import(Raw(p), upload_name="sisdrop-0-" + p.name, params=PARAMS)

                def outgoing(p: Path = path, precheck: int = 1 << 62) -> None:
                    old, posting.PRECHECK_BYTES = posting.PRECHECK_BYTES, precheck
                    try:
                        with posting.Outgoing.open(p, name=p.name, rules=rules) as out:
                            assert out.report is None or out.report.ok
                            client.create_import(out.source(), upload_name="sisdrop-0-" + p.name, params=PARAMS)
                    finally:
                        posting.PRECHECK_BYTES = old

                def check_only(p: Path = path) -> None:
                    assert preflight.check_path(p).ok

                times = [best(args.runs, alone), best(args.runs, check_then_post), best(args.runs, outgoing)]
                times.append(best(args.runs, lambda p=path: outgoing(p, 0)) if path.suffix == ".csv" else float("nan"))
                times.append(best(args.runs, check_only))
                label = f"{path.suffix[1:]} {mib} MiB"
                print(f"{label:<16}" + "".join(f"{size / t / 1e6:>12,.0f}" for t in times), flush=True)
    finally:
        client.close()
        sink.terminate()
        sink.wait()


if __name__ == "__main__":
    main()
