"""Metrics for Prometheus: kept in memory, written as a node-exporter textfile.

Contract (``[metrics]`` in the interface):

* ``Metrics(textfile)``; ``set(name, value, labels)`` makes a sample equal to ``value``.
  Counters are set too: the daemon mirrors totals it keeps elsewhere (the journal's
  outcomes, the client's retries, ``notifier.failures``), so they only ever rise and a
  restart never resets them. Thread-safe. A bad metric or label name raises
  ``ValueError`` (a programming error, caught by the tests).
* ``render()`` is the text exposition format 0.0.4: for each known metric (below) ``# HELP``
  and ``# TYPE`` lines, always, then its samples; a known metric without labels always
  has a sample (its default: 1 for ``sisdropd_up``, else 0), and
  ``sisdropd_files_total`` always has its four outcomes. Unknown names are emitted after
  the known ones with ``# TYPE <name> untyped``. Label values are escaped (``\\``, ``"``,
  newline) and redacted; labels are sorted by name, samples by labels.
* ``write()`` does nothing without a textfile; else it writes ``render()`` to a temporary
  file in the same directory (``.<name>.<random>.tmp``: the textfile collector reads only
  ``*.prom``), mode 0644, fsyncs it, ``os.replace``-s it over the textfile and fsyncs the
  directory. It never raises: a failure is logged at WARNING (once per distinct error, and
  an INFO line when writing works again) and the temporary file is removed.
* On a clean stop the daemon should ``set("sisdropd_up", 0)`` and ``write()``; after a
  crash the file keeps ``sisdropd_up 1``, so alert on node-exporter's
  ``node_textfile_mtime_seconds`` as well.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Mapping
from pathlib import Path

from loguru import logger

from sisdropd.files import write_atomic
from sisdropd.logs import clean, redact

LabelKey = tuple[tuple[str, str], ...]

# name: (type, help). The order here is the order in the file.
KNOWN: dict[str, tuple[str, str]] = {
    "sisdropd_files_total": (
        "counter",
        "Files that reached an outcome (done, failed, held, lost).",
    ),
    "sisdropd_imports_total": (
        "counter",
        "SIS imports that ended, by Canvas workflow_state.",
    ),
    "sisdropd_retries_total": ("counter", "Requests to Canvas retried, by cause."),
    "sisdropd_notifications_failed_total": (
        "counter",
        "Notifications (command or webhook) that could not be delivered.",
    ),
    "sisdropd_queue_length": ("gauge", "Files taken and waiting to be imported."),
    "sisdropd_current_import_seconds": (
        "gauge",
        "Seconds the import in flight has been running; 0 when none is.",
    ),
    "sisdropd_last_success_timestamp_seconds": (
        "gauge",
        "Unix time of the last import that ended in done/; 0 before the first.",
    ),
    "sisdropd_up": ("gauge", "1 while the daemon runs."),
    "sisdropd_paused": ("gauge", "1 while taking new files is paused, else 0."),
    "sisdropd_held_files": ("gauge", "Files waiting in held/ for an operator."),
}
_UNLABELLED_DEFAULTS = {
    "sisdropd_notifications_failed_total": 0.0,
    "sisdropd_queue_length": 0.0,
    "sisdropd_current_import_seconds": 0.0,
    "sisdropd_last_success_timestamp_seconds": 0.0,
    "sisdropd_up": 1.0,
    "sisdropd_paused": 0.0,
    "sisdropd_held_files": 0.0,
}
_SEEDED = {
    "sisdropd_files_total": [(("outcome", o),) for o in ("done", "failed", "held", "lost")],
}

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


def _labels_key(labels: Mapping[str, str] | LabelKey | None) -> LabelKey:
    items = labels.items() if isinstance(labels, Mapping) else (labels or ())
    key = tuple(sorted((str(k), str(v)) for k, v in items))
    for k, _ in key:
        if not _LABEL.match(k) or k.startswith("__"):
            raise ValueError(f"bad label name {k!r}")
    if len({k for k, _ in key}) != len(key):
        raise ValueError(f"duplicate label names in {key!r}")
    return key


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"bad metric name {name!r}")


def escape_label_value(value: str) -> str:
    """A label value as the exposition format wants it: ``\\``, ``"``, newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value: integers without a fraction, ``+Inf``/``-Inf``/``NaN`` spelled out."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class Metrics:
    """The daemon's metrics, rendered for Prometheus and written to ``textfile``."""

    def __init__(self, textfile: str | Path | None) -> None:
        self.textfile = Path(textfile) if textfile else None
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._values: dict[str, dict[LabelKey, float]] = {}
        self._last_error: str | None = None
        for name, value in _UNLABELLED_DEFAULTS.items():
            self._values.setdefault(name, {})[()] = value
        for name, keys in _SEEDED.items():
            for key in keys:
                self._values.setdefault(name, {})[key] = 0.0

    def set(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        """Make the sample ``name{labels}`` equal to ``value``."""
        _check_name(name)
        key = _labels_key(labels)
        with self._lock:
            self._values.setdefault(name, {})[key] = float(value)

    def get(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """The sample's current value (0 when it does not exist)."""
        with self._lock:
            return self._values.get(name, {}).get(_labels_key(labels), 0.0)

    def render(self) -> str:
        """Everything in the Prometheus text exposition format 0.0.4."""
        with self._lock:
            snapshot = {name: dict(samples) for name, samples in self._values.items()}
        lines: list[str] = []
        names = [*KNOWN, *sorted(n for n in snapshot if n not in KNOWN)]
        for name in names:
            if name in KNOWN:
                kind, help_text = KNOWN[name]
                lines.append(f"# HELP {name} {_escape_help(help_text)}")
                lines.append(f"# TYPE {name} {kind}")
            else:
                lines.append(f"# TYPE {name} untyped")
            for key in sorted(snapshot.get(name, {})):
                value = snapshot[name][key]
                if key:
                    inner = ",".join(f'{k}="{escape_label_value(redact(v))}"' for k, v in key)
                    lines.append(f"{name}{{{inner}}} {format_value(value)}")
                else:
                    lines.append(f"{name} {format_value(value)}")
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        """Rewrite the textfile atomically; no-op without one. Never raises."""
        if self.textfile is None:
            return
        with self._write_lock:
            try:
                # 0644: the node exporter runs as another user.
                write_atomic(self.textfile, self.render().encode("utf-8"), mode=0o644)
            except Exception as e:
                why = e.strerror if isinstance(e, OSError) and e.strerror else e
                message = f"cannot write metrics to {clean(self.textfile)}: {clean(why)}"
                if message != self._last_error:
                    logger.warning(message)
                self._last_error = message
            else:
                if self._last_error is not None:
                    logger.info(f"metrics written to {clean(self.textfile)} again")
                self._last_error = None
