"""Notifications: an event as JSON to a command and/or a webhook, off the daemon's thread.

Contract (``[notify]`` in the interface):

* ``Notifier(cfg, ca_bundle=...)``; ``wants(event)`` is true when ``event`` is in
  ``cfg.events`` and a command or a webhook is configured. ``send(event, payload)`` never
  blocks and never raises: it builds the event document, queues it and returns; one
  background thread (started on the first ``send``, ``daemon=True``) delivers the queue in
  order. ``send`` of an event not wanted is a no-op, so callers may skip ``wants``.
* The document is ``{"event", "time" (ISO 8601 UTC, ``Z``), "host"}`` followed by the
  payload's keys (the three above are never overridden by the payload). Every string in
  it, and the serialized JSON as a whole, goes through ``sisdropd.logs.redact``: no
  registered secret leaves the process. Values JSON cannot hold are sent as ``str()``.
* ``send(event, payload, rows=...)``: ``rows`` are Canvas's row messages (``{"errors":
  [...], "warnings": [...]}``, pairs of file and text), which name students. They go out
  only with ``cfg.include_rows``; otherwise every one of their texts is cut out of the
  payload's ``reason`` too, and the event carries counts, the reason and the sidecar path.
* command: the argv (no shell) gets the JSON on stdin and ``os.environ`` plus
  ``SISDROPD_EVENT``, ``SISDROPD_FILE``, ``SISDROPD_IMPORT_ID``, ``SISDROPD_STATE`` (empty
  strings for missing/None values). No credential reaches it: ``SISDROPD_TOKEN``,
  ``CREDENTIALS_DIRECTORY``, any variable whose value holds a registered secret and any
  that names the credentials directory are removed from its environment. (It still runs as
  the service user and can read what that user reads: INSTALL.md says what follows.) It runs in its own process group
  and the whole group is killed after ``cfg.timeout`` seconds. stdout/stderr are captured.
  A non-zero exit, a signal, a missing executable or a timeout is logged at ERROR with the
  exit status and the first line of stderr (cleaned), and counted in ``failures``.
* webhook: the same JSON POSTed (``Content-Type: application/json``, no redirects
  followed; https only, loopback aside, as the config insists), ``timeout=cfg.timeout``, ``verify=ca_bundle or True``. Any non-2xx answer or
  exception is logged at ERROR and counted; a connection error or a 5xx is retried once
  after ``retry_delay`` (2 s). Log lines name the webhook by scheme and host only: the
  path of a webhook URL is often itself a secret.
* Both run (command first) when both are configured. ``delivered`` and ``failures`` count
  per channel: one event to both a command and a webhook counts twice. Each delivery logs
  one INFO line ``notified <event> for <file> via command|webhook``.
* ``close(timeout)`` delivers what is queued until ``timeout`` seconds have passed, then
  kills a command still running, drops (logs and counts as failures) what is left, and
  stops the thread. Idempotent; ``send`` after ``close`` logs a warning and drops.
* The queue holds at most ``MAX_QUEUED`` events; beyond that an event is dropped, logged
  and counted as a failure (a hung notifier cannot grow memory without bound).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from loguru import logger

from sisdropd import __version__
from sisdropd.config import NotifyConfig, is_loopback
from sisdropd.logs import clean, redact

MAX_QUEUED = 1000
WITHHELD = "[Canvas's row message: in the sidecar]"  # stands for a row text cut out of a reason
_CREDENTIAL_VARS = ("SISDROPD_TOKEN", "CREDENTIALS_DIRECTORY")
_SYSTEMD_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def without_rows(reason: str, rows: dict[str, Any]) -> str:
    """``reason`` with the text of every row message in ``rows`` replaced by ``WITHHELD``.

    A failed import's reason ends with Canvas's first error ("users.csv Unknown status
    for user Ada Lovelace..."), a row text with a student in it; the batch-level
    change_threshold message names no one and stays.
    """
    from sisdropd.importer import THRESHOLD

    texts: list[str] = []
    for pairs in rows.values():
        for pair in pairs or []:
            parts = [str(x) for x in (pair if isinstance(pair, list | tuple) else [pair]) if x]
            if parts and not THRESHOLD.search(parts[-1]):
                texts += [" ".join(parts), parts[-1]]  # as verdict() joins them, then the text alone
    for text in sorted(set(texts), key=len, reverse=True):
        if len(text) >= 3:
            reason = reason.replace(text, WITHHELD)
    return reason


class _Job:
    """One queued event: the redacted JSON text and what the log line and env need."""

    __slots__ = ("event", "text", "file", "import_id", "state")

    def __init__(self, event: str, text: str, file: str, import_id: str, state: str) -> None:
        self.event = event
        self.text = text
        self.file = file
        self.import_id = import_id
        self.state = state


_STOP = object()


def _redact_obj(value: Any) -> Any:
    """``value`` with every string (keys included) redacted; other JSON types as they are."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)): _redact_obj(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_obj(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


def _env_text(value: Any) -> str:
    return "" if value is None else redact(str(value))


def _first_line(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return clean(text.splitlines()[0]) if text else ""


class Notifier:
    """Delivers events to ``cfg.command`` and/or ``cfg.webhook`` on one background thread."""

    retry_delay: float = 2.0  # seconds before the single webhook retry

    def __init__(self, cfg: NotifyConfig, *, ca_bundle: str | None = None) -> None:
        self.cfg = cfg
        self.ca_bundle = ca_bundle
        self.delivered = 0
        self.failures = 0
        self._counts_lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=MAX_QUEUED)
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._deadline: float | None = None  # set by close(): deliver until then
        self._stopping = threading.Event()  # interrupts the retry wait on close
        self._proc: subprocess.Popen[bytes] | None = None
        self._proc_lock = threading.Lock()
        self._session: requests.Session | None = None
        self._host = socket.gethostname()
        self.reconfigure(cfg)

    def reconfigure(self, cfg: NotifyConfig) -> None:
        """Deliver with ``cfg`` from the next event on (SIGHUP); the counts go on."""
        self.cfg = cfg
        if cfg.webhook:
            parts = urlsplit(cfg.webhook)
            self._webhook_name = f"{parts.scheme}://{parts.hostname or ''}" + (
                f":{parts.port}" if parts.port else ""
            )
        else:
            self._webhook_name = ""

    # -- the caller's side -------------------------------------------------------------

    @property
    def configured(self) -> bool:
        """True when a command or a webhook is configured."""
        return bool(self.cfg.command or self.cfg.webhook)

    def wants(self, event: str) -> bool:
        """True when ``event`` is in ``cfg.events`` and some notifier is configured."""
        return self.configured and event in self.cfg.events

    def send(self, event: str, payload: dict[str, Any], rows: dict[str, Any] | None = None) -> None:
        """Queue ``event`` for delivery and return at once. Never blocks, never raises.

        ``rows``: Canvas's row messages by kind; sent only with ``include_rows``, else cut
        out of ``payload["reason"]`` (see ``without_rows``).
        """
        try:
            if not self.wants(event):
                return
            if rows is not None:
                if self.cfg.include_rows:
                    payload = {**payload, **{k: list(v or [])[:25] for k, v in rows.items()}}
                elif isinstance(payload.get("reason"), str):
                    payload = {**payload, "reason": without_rows(payload["reason"], rows)}
            job = self._build(event, payload)
            if not self._ensure_thread():
                logger.warning(f"notifier closed; {clean(event)} event not sent")
                return
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                self._count(False)
                logger.bind(file=job.file or None).error(
                    f"notification queue full ({MAX_QUEUED}); {clean(event)} event dropped"
                )
        except Exception as e:  # never let a notification take the daemon down
            self._count(False)
            logger.error(f"cannot queue {clean(event)} notification: {clean(repr(e))}")

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued for at most ``timeout`` seconds, then stop the thread."""
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        self._deadline = time.monotonic() + max(0.0, timeout)
        self._put_stop()
        thread.join(max(0.0, timeout))
        if thread.is_alive():
            # A command outlived the deadline: kill it; the worker then drops the rest.
            self._stopping.set()
            self._kill_running()
            thread.join(2.0)
            if thread.is_alive():
                logger.warning("notifier thread did not stop; leaving it (daemon thread)")

    # -- the worker's side -------------------------------------------------------------

    def _build(self, event: str, payload: dict[str, Any]) -> _Job:
        doc: dict[str, Any] = {
            "event": event,
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "host": self._host,
        }
        for key, value in payload.items():
            doc.setdefault(str(key), value)
        text = redact(json.dumps(_redact_obj(doc), default=str, ensure_ascii=True))
        return _Job(
            event=redact(event),
            text=text,
            file=_env_text(payload.get("file")),
            import_id=_env_text(payload.get("import_id")),
            state=_env_text(payload.get("state")),
        )

    def _ensure_thread(self) -> bool:
        """Start the worker once; False after close()."""
        with self._start_lock:
            if self._closed:
                return False
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sisdropd-notify", daemon=True
                )
                self._thread.start()
            return True

    def _put_stop(self) -> None:
        while True:
            try:
                self._queue.put(_STOP, timeout=0.1)
                return
            except queue.Full:  # make room: the oldest job is dropped (and counted)
                try:
                    dropped = self._queue.get_nowait()
                except queue.Empty:
                    continue
                if dropped is not _STOP:
                    self._count(False)
                    logger.bind(file=dropped.file or None).error(
                        f"could not notify {dropped.event}: queue full at shutdown, dropped"
                    )

    def _remaining(self) -> float | None:
        """Seconds left before close()'s deadline; None while not closing."""
        if self._deadline is None:
            return None
        return self._deadline - time.monotonic()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                break
            try:
                self._deliver(job)
            except Exception as e:  # a bug here must not end the thread
                self._count(False)
                logger.error(f"notifier error for {job.event}: {clean(repr(e))}")
        if self._session is not None:
            self._session.close()

    def _deliver(self, job: _Job) -> None:
        log = logger.bind(file=job.file or None, import_id=job.import_id or None)
        what = job.event + (f" for {clean(job.file)}" if job.file else "")
        channels: list[tuple[str, Any]] = []
        if self.cfg.command:
            channels.append(("command", self._run_command))
        if self.cfg.webhook:
            channels.append(("webhook", self._post_webhook))
        for name, fn in channels:
            left = self._remaining()
            if self._stopping.is_set() or (left is not None and left <= 0):
                self._count(False)
                log.error(f"could not notify {what} via {name}: shutting down")
                continue
            error = fn(job)
            self._count(error is None)
            if error is None:
                log.info(f"notified {what} via {name}")
            else:
                log.error(f"could not notify {what} via {name}: {error}")

    def _count(self, ok: bool) -> None:
        with self._counts_lock:
            if ok:
                self.delivered += 1
            else:
                self.failures += 1

    def _timeout(self) -> float:
        left = self._remaining()
        return self.cfg.timeout if left is None else max(0.01, min(self.cfg.timeout, left))

    # -- command -------------------------------------------------------------------------

    def _child_env(self, job: _Job) -> dict[str, str]:
        creds = os.environ.get("CREDENTIALS_DIRECTORY", "").rstrip("/")
        env = {
            k: v
            for k, v in os.environ.items()
            # systemd's NOTIFY_SOCKET/WATCHDOG_* are the daemon's: an alert must not speak for it.
            if k not in _CREDENTIAL_VARS and k not in _SYSTEMD_VARS
            and redact(v) == v and redact(k) == k and not (creds and creds in v)
        }
        env.update(
            SISDROPD_EVENT=job.event,
            SISDROPD_FILE=job.file,
            SISDROPD_IMPORT_ID=job.import_id,
            SISDROPD_STATE=job.state,
        )
        return env

    def _run_command(self, job: _Job) -> str | None:
        """Run the command once; None on success, else the reason (already cleaned)."""
        argv = list(self.cfg.command)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._child_env(job),
                start_new_session=True,  # its own process group: a timeout kills it all
                close_fds=True,
            )
        except OSError as e:
            return f"cannot run {clean(argv[0])}: {clean(e.strerror or e)}"
        with self._proc_lock:
            self._proc = proc
        timeout = self._timeout()
        try:
            try:
                _out, err = proc.communicate(job.text.encode("ascii"), timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill_group(proc)
                try:
                    _out, err = proc.communicate(timeout=5)
                except subprocess.TimeoutExpired:
                    err = b""
                    proc.kill()
                    proc.wait()
                line = _first_line(err)
                return f"timed out after {timeout:g} s, killed" + (
                    f"; stderr: {line}" if line else ""
                )
        finally:
            with self._proc_lock:
                self._proc = None
        if proc.returncode == 0:
            return None
        if proc.returncode < 0:
            try:
                status = f"killed by signal {signal.Signals(-proc.returncode).name}"
            except ValueError:
                status = f"killed by signal {-proc.returncode}"
        else:
            status = f"exit status {proc.returncode}"
        line = _first_line(err)
        return status + (f"; stderr: {line}" if line else "")

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            try:
                proc.kill()
            except ProcessLookupError:
                pass

    def _kill_running(self) -> None:
        with self._proc_lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            self._kill_group(proc)

    # -- webhook -------------------------------------------------------------------------

    def _describe(self, e: Exception) -> str:
        """An exception's text without the webhook URL's path (it may be a secret)."""
        text = f"{type(e).__name__}: {e}"
        url = self.cfg.webhook or ""
        parts = urlsplit(url)
        for piece in (url, parts.path + (f"?{parts.query}" if parts.query else ""), parts.path):
            if piece and piece != "/":
                text = text.replace(piece, "/…")
        return clean(text)

    def _post_webhook(self, job: _Job) -> str | None:
        """POST once, retry once on a connection error or 5xx; None on success."""
        where = self._webhook_name
        parts = urlsplit(self.cfg.webhook or "")
        if parts.scheme != "https" and not is_loopback(parts.hostname or ""):
            return f"{where}: refused, a webhook must be https (the event holds file names and reasons)"
        if self._session is None:
            self._session = requests.Session()
            # No .netrc credentials and no REQUESTS_CA_BUNDLE over ca_bundle; the proxy, if
            # any, is the environment's for a webhook off this host (as for Canvas).
            self._session.trust_env = False
            from sisdropd.proxy import proxy_for

            proxy, _ = proxy_for(self.cfg.webhook or "", None)
            if proxy:
                self._session.proxies = {parts.scheme: proxy}
        for attempt in (1, 2):
            retry = False
            try:
                r = self._session.post(
                    self.cfg.webhook or "",
                    data=job.text.encode("ascii"),
                    headers={
                        "Content-Type": "application/json",
                        "User-Agent": f"sisdropd/{__version__}",
                    },
                    timeout=self._timeout(),
                    verify=self.ca_bundle or True,
                    allow_redirects=False,
                )
                r.close()
                if 200 <= r.status_code < 300:
                    return None
                error = f"{where} answered HTTP {r.status_code}"
                retry = r.status_code >= 500
            except requests.ConnectionError as e:
                error = f"{where}: {self._describe(e)}"
                retry = True
            except Exception as e:
                error = f"{where}: {self._describe(e)}"
            left = self._remaining()
            if not retry or attempt == 2 or (left is not None and left < self.retry_delay + 0.1):
                return error
            logger.bind(file=job.file or None).warning(
                f"notifying {job.event} via webhook: {error}; retrying in {self.retry_delay:g} s"
            )
            if self._stopping.wait(self.retry_delay):
                return error
        return error  # pragma: no cover - the loop always returns
