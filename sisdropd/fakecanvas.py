"""A faithful Canvas SIS Import API simulator over real HTTP (``sisdropd fake-canvas``).

:class:`FakeCanvas` serves the endpoints of ../shared/reference/canvas-sis-api.md on
127.0.0.1 with the standard library's ThreadingHTTPServer. The pieces, one concern each:
:mod:`~sisdropd.fakecanvas_http` answers requests like Canvas (auth, accounts, create,
show/list/abort/errors, downloads, rate-limit headers, injected faults);
:mod:`~sisdropd.fakecanvas_upload` streams request bodies to disk;
:mod:`~sisdropd.fakecanvas_store` keeps the batches and runs them one at a time;
:mod:`~sisdropd.fakecanvas_content` reads an upload the way Canvas's CSV importer does;
:mod:`~sisdropd.fakecanvas_model` holds the shared records. Tests steer it with
:meth:`FakeCanvas.inject`, :meth:`FakeCanvas.set_outcome` and :meth:`FakeCanvas.set_token`,
in process or through the unauthenticated ``/_sim/`` control endpoints.
"""

from __future__ import annotations

import argparse
import re
import signal
import socket
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from sisdropd.fakecanvas_http import Server
from sisdropd.fakecanvas_store import Store

FAULTS = ("500", "502", "503", "429", "403_rate_limit", "401", "drop", "drop_after", "delay")


@dataclass
class _Fault:
    name: str
    method: str | None
    path: re.Pattern[str] | None
    left: int
    delay: float


class FakeCanvas:
    """The simulator: one root account, one token, its SIS imports.

    Given the constructor options, :meth:`start` binds ``host:port`` (0 = a free port) and
    serves in daemon threads; :meth:`stop` ends serving, closes open connections, joins every
    thread and removes the temporary storage it made. ``url`` is the base URL (API under
    ``/api/v1``). ``sub_accounts`` holds account ids that are sub-accounts (400 on SIS
    imports); other unknown ids are 404. ``known_terms`` (None = any) are the valid
    ``batch_mode_term_id`` values (with or without ``sis_term_id:``).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str = "sim-token",
        account_id: str = "1",
        user_id: int = 17,
        storage_dir: Path | None = None,
        import_seconds: float = 1.0,
        start_delay: float = 0.0,
        errors_attachment_delay: float = 0.3,
        known_terms: set[str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.account_id = str(account_id)
        self.user_id = user_id
        self.known_terms = known_terms
        self.sub_accounts: set[str] = {"2"}
        self.url = ""
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if storage_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fakecanvas-")
            storage_dir = Path(self._tmp.name)
        self.storage_dir = Path(storage_dir)
        self._incoming = self.storage_dir / "incoming"
        self._store = Store(
            self.storage_dir,
            import_seconds=import_seconds,
            start_delay=start_delay,
            errors_attachment_delay=errors_attachment_delay,
            user={
                "id": user_id,
                "name": "SIS Integration",
                "sortable_name": "Integration, SIS",
                "short_name": "SIS Integration",
            },
        )
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._served: Counter[str] = Counter()
        self._log: list[tuple[str, str, int]] = []
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stop_event = threading.Event()
        self._server: Server | None = None
        self._serve_thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeCanvas:
        """Bind and serve in a background thread; returns self."""
        self._incoming.mkdir(parents=True, exist_ok=True)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._server = Server((self.host, self.port), self, family)
        self.port = self._server.server_address[1]
        shown = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        if ":" in shown:
            shown = f"[{shown}]"
        self.url = f"http://{shown}:{self.port}"
        self._store.start()
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fakecanvas-http",
            daemon=True,
        )
        self._serve_thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close client connections, join threads, remove temp storage."""
        self._stop_event.set()
        if self._server is not None:
            self._server.shutdown()
            with self._lock:
                conns = list(self._conns)
            for c in conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                threads = list(self._threads)
            for t in threads:
                t.join(timeout=10)
            self._server.server_close()
            if self._serve_thread is not None:
                self._serve_thread.join(timeout=10)
            self._server = None
        self._store.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> FakeCanvas:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _add_thread(self, t: threading.Thread) -> None:
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    # -- control -------------------------------------------------------------------------------

    def set_token(self, token: str) -> None:
        """Make ``token`` the only valid one; the old one now gets 401 Invalid access token."""
        self.token = token

    def inject(
        self,
        fault: str,
        *,
        method: str | None = None,
        path: str | None = None,
        count: int = 1,
        delay: float = 0.0,
    ) -> None:
        """Queue ``fault`` for the next ``count`` requests matching ``method`` and ``path``.

        ``path`` is a regex searched in the URL path; None matches all (``/_sim/`` control
        requests are never faulted). Faults are consumed in FIFO order; see FAULTS.
        Raises ValueError for an unknown fault name or a count below 1.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
        if count < 1:
            raise ValueError("count must be at least 1")
        rx = re.compile(path) if path is not None else None
        with self._lock:
            self._faults.append(_Fault(fault, method.upper() if method else None, rx, count, delay))

    def faults_served(self) -> dict[str, int]:
        """How many requests each fault kind has been applied to so far."""
        with self._lock:
            return dict(self._served)

    def set_outcome(self, name_pattern: str, state: str, *, seconds: float | None = None) -> None:
        """Uploads whose stored name matches ``name_pattern`` end in ``state``.

        ``state`` is a terminal state or "stuck" (stays ``created`` for ever, others still
        run); ``seconds`` overrides import_seconds for them. The rule is looked up when the
        import is about to start; the latest matching rule wins.
        """
        self._store.set_outcome(name_pattern, state, seconds)

    def imports(self) -> list[dict[str, Any]]:
        """The simulator's own record of every import, oldest first.

        Keys: id, filename (stored name), size, sha256 (of the stored upload), workflow_state,
        created_at, params (the create parameters as received), user_id.
        """
        return self._store.records()

    def request_log(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request, in order; status 0 = no answer sent."""
        with self._lock:
            return list(self._log)

    def wait_all_final(self, timeout: float) -> bool:
        """Wait until no import is pending or running and no errors attachment is due.

        Imports that never move (left ``initializing``, or "stuck" by set_outcome) are
        ignored. Returns False if that did not happen within ``timeout`` seconds.
        """
        return self._store.wait_settled(timeout)

    # -- request handling ----------------------------------------------------------------------

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for f in self._faults:
                if (f.method is None or f.method == method) and (
                    f.path is None or f.path.search(path)
                ):
                    f.left -= 1
                    if f.left <= 0:
                        self._faults.remove(f)
                    self._served[f.name] += 1
                    return f
        return None

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._log.append((method, path, status))


def main(argv: list[str] | None = None) -> int:
    """``sisdropd fake-canvas``: serve the simulator until SIGINT/SIGTERM; returns 0."""
    parser = argparse.ArgumentParser(
        prog="sisdropd fake-canvas", description="Canvas SIS Import API simulator"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token", default="sim-token")
    parser.add_argument("--account-id", default="1")
    parser.add_argument("--import-seconds", type=float, default=1.0)
    parser.add_argument("--start-delay", type=float, default=0.0)
    parser.add_argument("--storage-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    sim = FakeCanvas(
        host=args.host,
        port=args.port,
        token=args.token,
        account_id=args.account_id,
        import_seconds=args.import_seconds,
        start_delay=args.start_delay,
        storage_dir=args.storage_dir,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():  # signals only work there
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        sim.start()
        print(
            f"fake Canvas at {sim.url} (API {sim.url}/api/v1) account_id={sim.account_id} "
            f"token={sim.token}",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
