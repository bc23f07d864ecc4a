"""Logging with loguru: one line per event, naming the file and the import id; no secrets.

``setup(log_config)`` installs the sinks: stderr always (without our own timestamp and
with syslog priority prefixes when journald reads it, ``$JOURNAL_STREAM``), a rotated
file when ``[log] file`` is set, ``format = "json"`` for one JSON object a line. A patcher
on every record escapes control characters (a file name cannot forge a log line) and
replaces every registered secret with ``[REDACTED]``, in the message and its fields.

Callers bind the context: ``event(file="users.csv", import_id=4821).info("posted")``.

loguru itself is imported on first use (``logger`` here stands for it): the commands that
log nothing (``status``, ``validate``) never pay for it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import traceback
from typing import TYPE_CHECKING, Any, cast

from sisdropd.errors import StartupError, escape

if TYPE_CHECKING:
    from loguru import Logger, Record

    from sisdropd.config import LogConfig

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_PRIORITY = {
    "TRACE": 7,
    "DEBUG": 7,
    "INFO": 6,
    "SUCCESS": 5,
    "WARNING": 4,
    "ERROR": 3,
    "CRITICAL": 2,
}
_file_sink: dict[str, Any] = {}
_installed: dict[str, Any] = {}  # what setup() was last given, for relevel()


class _Loguru:
    """loguru's logger, imported when first used (its import takes tens of milliseconds)."""

    def __getattr__(self, name: str) -> Any:
        from loguru import logger as loguru_logger

        return getattr(loguru_logger, name)


logger = cast("Logger", _Loguru())  # ``from sisdropd.logs import logger``: loguru's, imported lazily


def add_secret(value: str | None) -> None:
    """Never let ``value`` (a token) reach any sink again, whole or inside a longer text."""
    if value and len(value) >= 4:
        with _secrets_lock:
            # Also as it shows once escaped (our own escape, or an exception's repr): a
            # value with a control character inside must not slip past in that form.
            _secrets.update({value, escape(value), repr(value)[1:-1]})


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``[REDACTED]``."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, "[REDACTED]")
    return text


def clean(text: Any) -> str:
    """A value made safe for a log line or an error message: escaped and redacted."""
    return redact(escape(str(text)))


def event(file: str | None = None, import_id: int | None = None, **extra: Any) -> Logger:
    """A logger bound to one file (and its import id once known)."""
    return logger.bind(file=file, import_id=import_id, **extra)


def _patch(record: Record) -> None:
    exc = record["exception"]
    if exc is not None and exc.type is not None:
        # A traceback is text we did not write: redact it, and keep the event on one line.
        tb = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
        record["message"] = f"{record['message']} | {tb.strip()}"
        record["exception"] = None
    record["message"] = clean(record["message"])
    extra = record["extra"]
    for key, value in list(extra.items()):
        if isinstance(value, str):
            extra[key] = clean(value)
    file, import_id = extra.get("file"), extra.get("import_id")
    prefix = ""
    if file:
        prefix = file + (f" #{import_id}" if import_id else "") + ": "
    elif import_id:
        prefix = f"#{import_id}: "
    extra["prefix"] = prefix
    extra["priority"] = _PRIORITY.get(record["level"].name, 6)
    doc = {
        "time": record["time"].astimezone().isoformat(timespec="milliseconds"),
        "level": record["level"].name,
        "message": record["message"],
        **{k: v for k, v in extra.items() if k not in ("prefix", "priority", "json") and v is not None},
    }
    extra["json"] = json.dumps(doc, ensure_ascii=False, default=str)


def under_journald() -> bool:
    """stderr is journald's stream (``$JOURNAL_STREAM`` names it): lines then carry no time."""
    js = os.environ.get("JOURNAL_STREAM", "")
    if not js:
        return False
    try:
        dev, ino = (int(x) for x in js.split(":"))
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (dev, ino)
    except (ValueError, OSError):
        return False


def _text_format(with_time: bool, journald: bool) -> str:
    head = "<{extra[priority]}>" if journald else ""
    when = "{time:YYYY-MM-DD HH:mm:ss.SSS} " if with_time else ""
    return head + when + "{level:<7} {extra[prefix]}{message}"  # loguru appends "\n{exception}"


def _json_format(_record: Record) -> str:
    # A callable format gets no "\n{exception}" appended: the exception is inside the JSON.
    return "{extra[json]}\n"


def _json_journald_format(_record: Record) -> str:
    # journald reads the "<N>" prefix as the priority (journalctl -p err) and strips it.
    return "<{extra[priority]}>{extra[json]}\n"


def _bridge_logging() -> None:
    """Warnings and errors of libraries that use the standard ``logging`` (watchdog: "Inotify
    queue overflowed; filesystem events were lost") become our own lines: formatted, escaped,
    redacted and leveled like every other, instead of bare text on stderr (``lastResort``).
    Imported here, not at the top: the quick commands' start-up does without ``logging``."""
    import logging

    class FromLogging(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                level: str | int = logger.level(record.levelname).name
            except ValueError:
                level = record.levelno
            logger.log(level, "{}: {}", record.name, record.getMessage())

    root = logging.getLogger()
    if not any(type(h).__name__ == "FromLogging" and type(h).__module__ == __name__ for h in root.handlers):
        root.addHandler(FromLogging(logging.WARNING))


def setup(cfg: LogConfig | None = None, *, stream: Any = None) -> None:
    """Install the sinks for ``cfg`` (defaults: INFO, text, stderr only). Idempotent."""
    _bridge_logging()
    logger.remove()
    _file_sink.clear()
    _installed.update(cfg=cfg, stream=stream)
    level = (cfg.level if cfg else "INFO").upper()
    fmt = cfg.format if cfg else "text"
    logger.configure(patcher=_patch, extra={"file": None, "import_id": None})
    journald = stream is None and under_journald()
    json_fmt = _json_journald_format if journald else _json_format
    stream_fmt: Any = json_fmt if fmt == "json" else _text_format(not journald, journald)
    logger.add(
        stream or sys.stderr,
        level=level,
        format=stream_fmt,
        backtrace=False,
        diagnose=False,  # never print local variables: they may hold the token
        colorize=False,
    )
    if cfg and cfg.file:
        _file_sink.update(
            path=cfg.file,
            kwargs=dict(
                level=level,
                format=_json_format if fmt == "json" else _text_format(True, False),
                rotation=cfg.rotation,
                retention=cfg.retention,
                compression="gz",
                backtrace=False,
                diagnose=False,
                enqueue=False,
                encoding="utf-8",
            ),
        )
        try:
            _file_sink["id"] = logger.add(cfg.file, **_file_sink["kwargs"])
        except OSError as e:
            _file_sink.clear()
            raise StartupError(
                f"log.file: cannot open {cfg.file} ({e.strerror or e}): make its folder writable by "
                "the daemon's user, or change [log] file"
            ) from None
        except (ValueError, TypeError) as e:  # config.load checks rotation; this is the backstop
            _file_sink.clear()
            raise StartupError(f"log.rotation/log.retention: {e}") from None


def relevel(level: str, fmt: str) -> None:
    """The sinks of the last ``setup`` again, with a new level and format (SIGHUP)."""
    cfg = _installed.get("cfg")
    if cfg is None:
        return
    setup(dataclasses.replace(cfg, level=level, format=fmt), stream=_installed.get("stream"))


def reopen() -> None:
    """Reopen the log file (SIGHUP, after an external logrotate moved it)."""
    if "id" in _file_sink:
        logger.remove(_file_sink["id"])
        _file_sink["id"] = logger.add(_file_sink["path"], **_file_sink["kwargs"])
        logger.info("log file reopened")
