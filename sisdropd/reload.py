"""SIGHUP (``systemctl reload``): what changed in the config, and what may change live.

``changes(running, new)`` lists every key whose value differs, one ``Change`` each, marked
live or not; ``merged(running, new)`` is the config the daemon goes on with: ``new``, but
every key that needs a restart as it was. ``describe`` is the change's log line. The
daemon (``Daemon.reload``) reads the file, logs one line per change (or one error for an
invalid file, keeping the running config) and applies ``merged``.

Live: ``[import]``, ``[[rules]]``, ``[watch]`` (but ``polling``: the observer is made at
start), ``[notify]``, ``[guard]``, ``[log]`` level and format. A restart is needed for
``[canvas]`` (the HTTP client, its origin, proxy and CA; the token too, whose source is
read at start), ``[folders]``, ``[log]`` file, rotation and retention, and ``[metrics]``.
A file already posted keeps the parameters it was posted with (the journal's
``import_params``), whatever a reload does to ``[import]`` or ``[[rules]]``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sisdropd.config import Config, mask_url

_SECTIONS = ("canvas", "folders", "watch", "log", "notify", "metrics", "guard")
#: Keys that need a restart: a whole section (None) or some of its keys.
RESTART: dict[str, frozenset[str] | None] = {
    "canvas": None,
    "folders": None,
    "metrics": None,
    "log": frozenset({"file", "rotation", "retention"}),
    "watch": frozenset({"polling"}),
}
_UNSET = object()


@dataclass(frozen=True)
class Change:
    """One key whose value differs: ``key`` as written in the file (``watch.settle_seconds``,
    ``import.batch_mode``, ``rules[1]``), the two values (``_UNSET`` when absent) and
    whether the running daemon takes it (``live``) or keeps the old value until a restart."""

    key: str
    old: Any
    new: Any
    live: bool


def needs_restart(key: str) -> bool:
    section, _, name = key.partition(".")
    if section not in RESTART:
        return False
    keys = RESTART[section]
    return keys is None or name in keys


def _flat(cfg: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section in _SECTIONS:
        part = getattr(cfg, section)
        for f in dataclasses.fields(part):
            out[f"{section}.{f.name}"] = getattr(part, f.name)
    for key, value in cfg.import_params.items():
        out[f"import.{key}"] = value
    for i, rule in enumerate(cfg.rules):
        out[f"rules[{i}]"] = (rule.source, dict(rule.import_params))
    return out


def changes(running: Config, new: Config) -> list[Change]:
    """Every key whose value differs between ``running`` and ``new``, in the file's order of sections."""
    a, b = _flat(running), _flat(new)
    keys = list(a) + [k for k in b if k not in a]
    return [
        Change(k, a.get(k, _UNSET), b.get(k, _UNSET), not needs_restart(k))
        for k in keys
        if a.get(k, _UNSET) != b.get(k, _UNSET)
    ]


def merged(running: Config, new: Config) -> Config:
    """``new`` with every key that needs a restart kept as ``running`` has it."""
    keep_log = {k: getattr(running.log, k) for k in RESTART["log"] or ()}
    keep_watch = {k: getattr(running.watch, k) for k in RESTART["watch"] or ()}
    return dataclasses.replace(
        new,
        canvas=running.canvas,
        folders=running.folders,
        metrics=running.metrics,
        log=dataclasses.replace(new.log, **keep_log),
        watch=dataclasses.replace(new.watch, **keep_watch),
        source=running.source,
    )


def show(key: str, value: Any) -> str:
    """A value for a log line: secrets in URLs hidden (a webhook's path, a proxy's password)."""
    if value is _UNSET or value is None:
        return "unset"
    if key == "notify.webhook":
        parts = urlsplit(str(value))
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…"
    if key == "canvas.proxy":
        return mask_url(str(value))
    if key.startswith("rules["):  # as written in TOML: a literal string, then the table
        pattern, params = value
        quoted = f"'{pattern}'" if "'" not in pattern else json.dumps(pattern)
        return f"match {quoted} import {json.dumps(params, ensure_ascii=False, default=str)}"
    if isinstance(value, tuple):
        return repr(list(value))
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value == int(value):
        return str(int(value))
    return str(value)


def describe(change: Change) -> str:
    """``watch.settle_seconds: 10 -> 2``; a restart-only key says so and what still holds."""
    line = f"{change.key}: {show(change.key, change.old)} -> {show(change.key, change.new)}"
    if change.live:
        return line
    return f"{line} needs a restart (systemctl restart sisdropd); still {show(change.key, change.old)} until then"
