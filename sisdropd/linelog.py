"""One-line logs on stderr for a one-shot command, without loguru's import time.

``one_shot()`` is the logging of the other one-shot commands (``check``, ``release``,
``retry``, ``abort``, ``restore``, ...): their warnings and errors only.

``sisdropd submit`` logs a handful of lines; importing loguru would cost it more than a
third of its start-up. ``for_command(cfg)`` gives such a command what it logs through:
this module's ``LineLogger`` when the config asks for plain text on stderr alone (the
default), else loguru as the daemon has it (``logs.setup``: JSON, a log file, journald).

A ``LineLogger`` writes the line ``logs``' stderr sink writes in text format
(``2026-11-27 08:22:16.123 INFO    users.csv #4821: posted: import 4821``), its message
escaped and redacted by ``logs.clean``. It offers the calls the command's code paths make
(``debug``, ``info``, ``success``, ``warning``, ``error``, ``log(level, ...)``, ``bind``),
with loguru's ``{}`` formatting.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from sisdropd import logs

if TYPE_CHECKING:
    from sisdropd.config import LogConfig

_LEVELS = {"TRACE": 5, "DEBUG": 10, "INFO": 20, "SUCCESS": 25, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


class LineLogger:
    """Lines at ``level`` or above, for ``file`` (and ``import_id``), on ``stream``."""

    def __init__(self, level: str = "INFO", stream: TextIO | None = None, file: str | None = None, import_id: int | None = None) -> None:
        self.level, self.stream, self.file, self.import_id = level.upper(), stream, file, import_id

    def bind(self, *, file: str | None = None, import_id: int | None = None, **_: Any) -> LineLogger:
        return LineLogger(self.level, self.stream, file if file is not None else self.file, import_id if import_id is not None else self.import_id)

    def log(self, level: str, message: str, *args: Any) -> None:
        if _LEVELS.get(level.upper(), 20) < _LEVELS.get(self.level, 20):
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
        prefix = ""
        if self.file:
            prefix = logs.clean(self.file) + (f" #{self.import_id}" if self.import_id else "") + ": "
        elif self.import_id:
            prefix = f"#{self.import_id}: "
        text = logs.clean(message.format(*args) if args else message)
        stream = self.stream or sys.stderr
        stream.write(f"{stamp} {level.upper():<7} {prefix}{text}\n")
        stream.flush()

    def debug(self, message: str, *args: Any) -> None:
        self.log("DEBUG", message, *args)

    def info(self, message: str, *args: Any) -> None:
        self.log("INFO", message, *args)

    def success(self, message: str, *args: Any) -> None:
        self.log("SUCCESS", message, *args)

    def warning(self, message: str, *args: Any) -> None:
        self.log("WARNING", message, *args)

    def error(self, message: str, *args: Any) -> None:
        self.log("ERROR", message, *args)


def for_command(cfg: LogConfig, stream: TextIO | None = None) -> Callable[..., Any]:
    """Set up logging for a one-shot command; returns its ``event(file, import_id)``.

    ``stream`` replaces stderr (submit's progress line clears itself around each line)."""
    if cfg.format == "text" and not cfg.file and not logs.under_journald():
        base = LineLogger(cfg.level, stream)
        return lambda file=None, import_id=None: base.bind(file=file, import_id=import_id)
    logs.setup(cfg, stream=stream)
    return logs.event


def one_shot() -> None:
    """Logging for a one-shot command that sets up none of its own (every command but
    ``run``, ``demo``, ``fake-canvas`` and the quick ones, which never load loguru):
    warnings and errors on stderr, as the daemon writes them, and no log file (the
    daemon's, its user's).

    Such a command's result is the line it prints; the steps of what it calls (each
    journal transition, at DEBUG) are for the daemon's log, which records the request.
    Without this, loguru's default handler would print every one of them, DEBUG
    included, in its own format, whatever ``[log] level`` says.
    """
    from sisdropd.config import LogConfig

    logs.setup(LogConfig(level="WARNING"))
