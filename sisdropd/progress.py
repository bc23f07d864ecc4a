"""One self-rewriting progress line on a terminal: an upload (bytes, MB/s), then Canvas's
progress and state. Nothing of it reaches a pipe, a file, ``--json`` output or a log.

``Progress.on(stream)`` is live only when ``stream`` is a terminal (and ``$TERM`` is not
"dumb"); otherwise every method does nothing. Callers feed it (``upload(sent, total)``
from the upload's read loop, ``canvas(sis_import)`` from each status check,
``restore(progress)`` for a restore job) and ``clear()`` it before printing a line of
their own. ``log_stream(stderr)`` is the stream the log sink should write to while the
line is shown: it takes the line away, writes the log line, and draws it again.

A few lines of our own rather than a library: tqdm or rich would add a dependency (and
tens of milliseconds of import) for one line of text.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from typing import Any, TextIO

ERASE = "\r\x1b[K"  # carriage return, erase to the end of the line
MIN_INTERVAL = 0.1  # seconds between two redraws of the same kind


class Progress:
    """The progress line on ``stream``; inert unless ``live``."""

    def __init__(self, stream: TextIO | None, label: str = "", *, live: bool = False) -> None:
        self.stream = stream
        self.label = label
        self.live = live and stream is not None
        self._text = ""
        self._shown = False
        self._last = 0.0
        self._started: float | None = None
        self._lock = threading.RLock()

    @classmethod
    def on(cls, stream: TextIO, label: str = "", *, enabled: bool = True) -> Progress:
        """A live line on ``stream`` if it is a terminal and ``enabled``, else an inert one."""
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        return cls(stream, label, live=enabled and tty and os.environ.get("TERM") != "dumb")

    # -- what is shown ---------------------------------------------------------------------
    def upload(self, sent: int, total: int) -> None:
        """The upload so far: ``users.csv: uploading 12.0 of 50.0 MB (24%), 8.1 MB/s``."""
        if not self.live:
            return
        now = time.monotonic()
        if self._started is None:
            self._started = now
        rate = sent / max(now - self._started, 1e-3) / 1e6
        pct = 100 * sent // total if total else 100
        speed = f", {rate:.1f} MB/s" if sent and now > self._started else ""
        self._draw(f"uploading {sent / 1e6:.1f} of {total / 1e6:.1f} MB ({pct}%){speed}", force=sent in (0, total))

    def canvas(self, sis_import: dict[str, Any]) -> None:
        """Canvas's view of the import: ``users.csv: import 4821 importing, 40%``."""
        if not self.live:
            return
        state, progress = sis_import.get("workflow_state"), sis_import.get("progress")
        self._draw(f"import {sis_import.get('id')} {state}, {progress or 0}%", force=True)

    def restore(self, job: dict[str, Any]) -> None:
        """A restore_states job's Progress: ``import 4821: restore running, 40%``."""
        if not self.live:
            return
        self._draw(f"restore {job.get('workflow_state')}, {round(float(job.get('completion') or 0))}%", force=True)

    # -- the line itself -------------------------------------------------------------------
    def _draw(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last < MIN_INTERVAL:
                return
            self._last = now
            self._text = f"{self.label}: {text}" if self.label else text
            self._paint()

    def _paint(self) -> None:
        assert self.stream is not None
        width = shutil.get_terminal_size((80, 24)).columns - 1  # never wrap: \r could not undo it
        self.stream.write(ERASE + self._text[:width])
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        """Take the line away (before printing something else); ``canvas``/``upload`` draw it again."""
        with self._lock:
            if self._shown and self.stream is not None:
                self.stream.write(ERASE)
                self.stream.flush()
                self._shown = False

    def log_stream(self, stderr: TextIO) -> Any:
        """What the log sink should write to: ``stderr``, or, while a line may be shown on the
        same terminal, ``stderr`` with the line taken away before each log line and drawn after."""
        try:
            shared = self.live and stderr.isatty()
        except (AttributeError, ValueError):
            shared = False
        return _Around(self, stderr) if shared else None


class _Around:
    """A stream for loguru: each write between a ``clear`` and a redraw of the progress line."""

    def __init__(self, progress: Progress, stream: TextIO) -> None:
        self.progress = progress
        self.stream = stream

    def write(self, text: str) -> None:
        p = self.progress
        with p._lock:
            shown = p._shown
            p.clear()
            self.stream.write(text)
            self.stream.flush()
            if shown:
                p._paint()

    def flush(self) -> None:
        self.stream.flush()
