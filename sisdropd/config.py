"""The configuration: one TOML file loaded into frozen dataclasses, with every error named.

``load(path)`` is the only way in. It refuses unknown keys and wrong types and names the
key path of each problem (``watch.settle_seconds: expected a number, got "ten"``). All
defaults live in the dataclass fields below. The token is not part of the config object's
repr, and is read by ``read_token`` in the contract's order.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from sisdropd.errors import escape

DEFAULT_PATH = "/etc/sisdropd/sisdropd.toml"


class ConfigError(Exception):
    """The configuration cannot be used. ``problems`` lists each one, key path first."""

    def __init__(self, problems: list[str]) -> None:
        # A key or value may carry a newline or a terminal control (``[import]`` with a key
        # "\n"): each problem stays one visible line, whatever the file held.
        problems = [escape(p) for p in problems]
        super().__init__("; ".join(problems))
        self.problems = problems


# Every dataclass here has a docstring: one without gets a generated one from
# inspect.signature, which costs every command's start-up about 0.15 ms a class.


@dataclass(frozen=True)
class CanvasConfig:
    """``[canvas]``: the Canvas site, the account, and how requests to it are made."""

    base_url: str = ""
    account_id: str = "self"
    token_file: str | None = None
    timeout: float = 60.0
    ca_bundle: str | None = None
    proxy: str | None = None  # "http://host:port": every Canvas request goes through it (else $HTTPS_PROXY...)
    # Backoff for retried requests (network errors, 5xx, rate limits, a rejected token).
    retry_initial: float = 5.0
    retry_max: float = 300.0
    # A download (Canvas's errors file) is cut past this many bytes; real ones are far smaller.
    max_download_bytes: int = 1024**3


@dataclass(frozen=True)
class FoldersConfig:
    """``[folders]``: the root, and any folder placed elsewhere (see ``path``)."""

    root: str = ""
    inbox: str | None = None
    processing: str | None = None
    done: str | None = None
    failed: str | None = None
    held: str | None = None
    state_dir: str | None = None

    def path(self, name: str) -> Path:
        """The folder ``name`` (inbox, processing, done, failed, held, state_dir)."""
        given = getattr(self, name)
        if given:
            return Path(given)
        return Path(self.root) / (".sisdropd" if name == "state_dir" else name)


#: The folders, by name: every field of FoldersConfig but root (the one place they are named).
FOLDER_NAMES = tuple(f.name for f in fields(FoldersConfig) if f.name != "root")


@dataclass(frozen=True)
class WatchConfig:
    """``[watch]``: when a dropped file is taken, how it is checked and followed."""

    settle_seconds: float = 10.0
    poll_interval: float = 10.0
    max_wait: float = 21600.0
    abort_on_timeout: bool = False
    extensions: tuple[str, ...] = ("csv", "xml", "zip")
    polling: bool = False  # watchdog's PollingObserver, for NFS/SMB inboxes inotify cannot see
    rescan_interval: float = 60.0  # a full listing of inbox/ backs up the events
    validate: bool = True  # the pre-flight content check; off for import types it cannot read
    max_bytes: int = 20 * 1024**3
    marker: str | None = None  # e.g. ".ok": take users.csv only once users.csv.ok exists
    truncated_after: float = 3600.0  # a file that looks cut short waits this long, then failed/; 0 = no check


@dataclass(frozen=True)
class LogConfig:
    """``[log]``: level, format, and the log file with its rotation."""

    level: str = "INFO"
    format: str = "text"
    file: str | None = None
    rotation: str = "50 MB"
    retention: int = 10


NOTIFY_EVENTS = ("failed", "held", "stale", "blocked", "warnings", "done", "stuck")


@dataclass(frozen=True)
class NotifyConfig:
    """``[notify]``: who is told of which events, and how."""

    command: tuple[str, ...] = ()  # argv, no shell; the event as JSON on stdin
    webhook: str | None = None  # the same JSON, POSTed
    events: tuple[str, ...] = ("failed", "held", "stale", "blocked")
    stuck_after: float = 7200.0  # seconds an import may run before a "stuck" event
    timeout: float = 30.0  # seconds a notifier may take
    include_rows: bool = False  # true: "warnings"/"failed" events carry Canvas's row messages (student names)


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: the Prometheus textfile, if any."""

    textfile: str | None = None  # Prometheus textfile collector path, rewritten atomically


@dataclass(frozen=True)
class GuardConfig:
    """``[guard]``: the change guard's limits and the stale-feed alert."""

    max_drop_percent: float | Mapping[str, float] = 10.0  # or per CSV type: {users = 5, default = 10}
    all_imports: bool = False  # true: guard every import, not only batch_mode and diffing ones
    max_silence: float = 0.0  # seconds without a new file before a stale-feed alert; 0 = off
    name_strip: str = r"[0-9]+"  # removed from a file's name to name its data set


@dataclass(frozen=True)
class Rule:
    """One ``[[rules]]`` entry: files whose name matches get ``import_params`` over [import]."""

    pattern: re.Pattern[str]
    import_params: Mapping[str, Any]
    source: str  # the pattern as written, for logs

    def params_for(self, name: str) -> dict[str, Any] | None:
        """The import parameters for ``name``, with {group} filled in; None if no match."""
        m = self.pattern.fullmatch(name)
        if m is None:
            return None
        groups = {k: v or "" for k, v in m.groupdict().items()}
        return {k: (v.format(**groups) if isinstance(v, str) else v) for k, v in self.import_params.items()}


@dataclass(frozen=True)
class Config:
    """The whole configuration: a section each, ``[import]`` as ``import_params``, the
    ``[[rules]]`` in order, and the file it came from (``source``)."""

    canvas: CanvasConfig = field(default_factory=CanvasConfig)
    folders: FoldersConfig = field(default_factory=FoldersConfig)
    import_params: Mapping[str, Any] = field(
        default_factory=lambda: {"import_type": "instructure_csv"}
    )
    watch: WatchConfig = field(default_factory=WatchConfig)
    log: LogConfig = field(default_factory=LogConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    rules: tuple[Rule, ...] = ()
    source: str = "<defaults>"

    def params_for(self, name: str) -> dict[str, Any]:
        """The import parameters for a file: the first matching rule over [import]."""
        for rule in self.rules:
            extra = rule.params_for(name)
            if extra is not None:
                return {**self.import_params, **extra}
        return dict(self.import_params)

    @property
    def import_type(self) -> str:
        return str(self.import_params.get("import_type", "instructure_csv"))


_SECTIONS: dict[str, type] = {
    "canvas": CanvasConfig,
    "folders": FoldersConfig,
    "watch": WatchConfig,
    "log": LogConfig,
    "notify": NotifyConfig,
    "metrics": MetricsConfig,
    "guard": GuardConfig,
}
_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


def resolve_path(given: str | None) -> Path:
    """The config file to use: ``-c``, else ``$SISDROPD_CONFIG``, else the system default."""
    return Path(given or os.environ.get("SISDROPD_CONFIG") or DEFAULT_PATH)


def load(path: str | os.PathLike[str]) -> Config:
    """Read and check the TOML file at ``path``.

    Returns a frozen ``Config``, every relative path in it taken from the config file's
    own folder (``from_dict``'s ``relative_to``). Raises ``ConfigError`` with every
    problem found (file missing or unreadable, TOML syntax, unknown keys, wrong types,
    bad values).
    """
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{p}: no such config file"]) from None
    except PermissionError:
        raise ConfigError([f"{p}: permission denied reading the config file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{p}: is a directory, not a config file"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{p}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{p}: TOML syntax error: {e}"]) from None
    return from_dict(raw, source=str(p), relative_to=p.absolute().parent.resolve())


def from_dict(raw: Mapping[str, Any], *, source: str = "<dict>", relative_to: Path | None = None) -> Config:
    """Build a ``Config`` from parsed TOML. Raises ``ConfigError`` naming each bad key.

    Every path is made absolute (``_absolute``): a relative one is taken from
    ``relative_to`` (the config file's folder, for ``load``), else from the current
    directory (a config with no file behind it).
    """
    problems: list[str] = []
    built: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "import":
            if not isinstance(value, dict):
                problems.append(f"import: expected a table of Canvas's create parameters, got {_got(value)}: write it as [import] with import_type = \"instructure_csv\" and the like under it")
                continue
            built["import_params"] = _import_params(value, problems)
        elif key == "rules":
            imports = raw.get("import")  # checked on its own above; a non-table is no base
            base = {"import_type": "instructure_csv", **(imports if isinstance(imports, dict) else {})}
            built["rules"] = _rules(value, base, problems)
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                problems.append(f"{key}: expected a table, got {_got(value)}: write it as a [{key}] section with its keys under it")
                continue
            built[key] = _section(key, _SECTIONS[key], value, problems)
        else:
            known = ", ".join(sorted([*_SECTIONS, "import"]))
            problems.append(f"{key}: unknown section (known: {known})")
    for required in ("canvas", "folders"):
        if required not in raw:
            problems.append(f"{required}: missing section [{required}]")
    cfg = Config(**built, source=source) if not problems else None
    if cfg is not None:
        problems.extend(_check_values(cfg))
        cfg = _absolute(cfg, relative_to or Path.cwd())
    if problems:
        raise ConfigError(problems)
    assert cfg is not None
    return cfg


def _absolute(cfg: Config, base: Path) -> Config:
    """Every path made absolute now, a relative one (after ``~``) taken from ``base``: the
    folders, token_file, ca_bundle, the log file and the metrics textfile mean the same
    whatever the working directory of whoever reads the config (systemd starts the
    daemon in /, ``--detach`` goes there, an operator runs ``check`` from anywhere)."""

    def fix(value: str | None) -> str | None:
        return str(base / Path(value).expanduser()) if value else value

    f = cfg.folders
    fixed: dict[str, Any] = {n: fix(getattr(f, n)) for n in ("root", *FOLDER_NAMES)}
    folders = replace(f, **fixed)
    return replace(
        cfg,
        folders=folders,
        canvas=replace(cfg.canvas, token_file=fix(cfg.canvas.token_file), ca_bundle=fix(cfg.canvas.ca_bundle)),
        log=replace(cfg.log, file=fix(cfg.log.file)),
        metrics=replace(cfg.metrics, textfile=fix(cfg.metrics.textfile)),
    )


def _rules(value: Any, base: dict[str, Any], problems: list[str]) -> tuple[Rule, ...]:
    from sisdropd import preflight

    if not isinstance(value, list):
        problems.append("rules: expected [[rules]] entries")
        return ()
    out = []
    for i, entry in enumerate(value):
        where = f"rules[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a table")
            continue
        unknown = set(entry) - {"match", "glob", "import"}
        if unknown:
            problems.append(f"{where}.{sorted(unknown)[0]}: unknown key (known: match, glob, import)")
        if ("match" in entry) == ("glob" in entry):
            problems.append(f"{where}: give exactly one of match (a regular expression) or glob")
            continue
        src = entry.get("match") or entry.get("glob")
        if not isinstance(src, str):
            problems.append(f"{where}: the pattern must be a string")
            continue
        try:
            pattern = re.compile(src if "match" in entry else fnmatch.translate(src))
        except re.error as e:
            problems.append(f"{where}.match: not a regular expression: {e}")
            continue
        params = entry.get("import", {})
        if not isinstance(params, dict):
            problems.append(f"{where}.import: expected a table of Canvas's create parameters, got {_got(params)}: write it as import = {{ batch_mode = true }} or the like")
            continue
        # Check the merged parameters with every {group} filled by a placeholder.
        sample = {k: (re.sub(r"\{\w+\}", "X", v) if isinstance(v, str) else v) for k, v in params.items()}
        for msg in preflight.check_import_params({**base, **sample}):
            problems.append(f"{where}: {msg}")
        missing = {g for v in params.values() if isinstance(v, str) for g in re.findall(r"\{(\w+)\}", v)} - set(pattern.groupindex)
        if missing:
            problems.append(f"{where}.import: {{{sorted(missing)[0]}}} is not a named group of the pattern")
        out.append(Rule(pattern, params, src))
    return tuple(out)


def _import_params(value: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    from sisdropd import preflight  # the rules for Canvas's create parameters live there

    params = {"import_type": "instructure_csv", **value}
    problems.extend(preflight.check_import_params(params))
    return params


def _got(value: Any) -> str:
    """What a wrong value was, for a message, without echoing what may be a secret: a value in
    the wrong place is often a webhook URL or a token pasted a line too high. Numbers, booleans
    and short plain words are shown; other strings by their length, lists and tables by kind."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 16 and re.fullmatch(r"[\w .,:-]*", value) else f"a string of {len(value)} characters"
    if isinstance(value, list):
        return "an array of tables" if value and all(isinstance(x, dict) for x in value) else "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a TOML {type(value).__name__}"  # a date or a time


def _section(name: str, cls: type, value: dict[str, Any], problems: list[str]) -> Any:
    kinds = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, v in value.items():
        f = kinds.get(key)
        where = f"{name}.{key}"
        if f is None:
            problems.append(f"{where}: unknown key (known: {', '.join(kinds)})")
            continue
        typ = str(f.type)
        if typ.startswith("float | Mapping"):
            if isinstance(v, dict):
                ok = all(isinstance(x, int | float) and not isinstance(x, bool) and 0 <= x <= 100 for x in v.values())
                v = {str(k): float(x) for k, x in v.items()} if ok else v
            else:
                ok = isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 100
                v = float(v) if ok else v
            if not ok:
                problems.append(f"{where}: expected a percentage 0-100, or a table of them per CSV type, got {_got(v)}")
                continue
            kwargs[key] = v
            continue
        if typ == "bool":
            ok = isinstance(v, bool)
        elif typ == "int":
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif typ == "float":
            ok = isinstance(v, int | float) and not isinstance(v, bool)
            v = float(v) if ok else v
        elif typ.startswith("tuple"):
            ok = isinstance(v, list) and all(isinstance(x, str) for x in v)
            v = tuple(v) if ok else v
        else:  # str or str | None
            ok = isinstance(v, str)
        if not ok:
            expected = {"bool": "true or false", "int": "an integer", "float": "a number"}.get(
                typ, "a list of strings" if typ.startswith("tuple") else "a string"
            )
            problems.append(f"{where}: expected {expected}, got {_got(v)}")
            continue
        kwargs[key] = v
    return cls(**kwargs)


def _check_values(cfg: Config) -> list[str]:
    out: list[str] = []
    url = cfg.canvas.base_url
    if not url:
        out.append("canvas.base_url: missing (e.g. \"https://school.instructure.com\")")
    elif (parts := _split(url)) is None:
        out.append(f"canvas.base_url: not a URL (a bad port or [IPv6] address): {url!r}")
    else:
        if parts.scheme not in ("https", "http") or not parts.hostname:
            out.append(f"canvas.base_url: not an http(s) URL: {url!r}")
        elif parts.scheme == "http" and not is_loopback(parts.hostname):
            out.append(
                f"canvas.base_url: http is accepted for loopback hosts only; use https://{parts.netloc}"
            )
        if parts.path.rstrip("/").endswith("/api/v1"):
            out.append("canvas.base_url: give the site's address without /api/v1")
    if not cfg.canvas.account_id:
        out.append("canvas.account_id: must not be empty")
    if cfg.canvas.timeout <= 0:
        out.append("canvas.timeout: must be greater than 0")
    if cfg.canvas.max_download_bytes <= 0:
        out.append("canvas.max_download_bytes: must be greater than 0")
    if cfg.canvas.retry_initial <= 0 or cfg.canvas.retry_max < cfg.canvas.retry_initial:
        out.append("canvas.retry_initial/retry_max: need 0 < retry_initial <= retry_max")
    if not cfg.folders.root and not all(getattr(cfg.folders, n) for n in FOLDER_NAMES if n != "held"):
        out.append("folders.root: missing (or give inbox, processing, done, failed, state_dir)")
    w = cfg.watch
    if w.marker is not None and (not w.marker.startswith(".") or "/" in w.marker or len(w.marker) < 2):
        out.append(f"watch.marker: a suffix like \".ok\", got {w.marker!r}")
    for key in ("settle_seconds", "rescan_interval", "truncated_after"):
        if getattr(w, key) < 0:
            out.append(f"watch.{key}: must not be negative")
    for key in ("poll_interval", "max_wait"):
        if getattr(w, key) <= 0:
            out.append(f"watch.{key}: must be greater than 0")
    bad_ext = [e for e in w.extensions if not e or "." in e or "/" in e]
    if bad_ext or not w.extensions:
        out.append(f"watch.extensions: give bare extensions like [\"csv\", \"zip\"], got {list(w.extensions)}")
    try:
        re.compile(cfg.guard.name_strip)
    except re.error as e:
        out.append(f"guard.name_strip: not a regular expression: {e}")
    if cfg.guard.max_silence < 0:
        out.append("guard.max_silence: must not be negative")
    bad_events = [e for e in cfg.notify.events if e not in NOTIFY_EVENTS]
    if bad_events:
        out.append(f"notify.events: unknown {bad_events} (known: {', '.join(NOTIFY_EVENTS)})")
    if cfg.notify.webhook:
        # Named by scheme and host only: a webhook's path is often a secret itself.
        hook = _split(cfg.notify.webhook)
        if hook is None or hook.scheme not in ("http", "https") or not hook.hostname:
            scheme = hook.scheme if hook is not None and hook.scheme else "without a scheme"
            out.append(f"notify.webhook: not an https URL (it starts {scheme}:)")
        elif hook.scheme == "http" and not is_loopback(hook.hostname):
            out.append(
                f"notify.webhook: https only (http is accepted for loopback hosts alone): use https://{hook.hostname}/..."
            )
    if cfg.log.level.upper() not in _LEVELS:
        out.append(f"log.level: one of {', '.join(_LEVELS)}, got {cfg.log.level!r}")
    if (why := _rotation_problem(cfg.log.rotation)) is not None:
        out.append(f"log.rotation: {why}")
    if cfg.log.retention < 0:
        out.append("log.retention: must not be negative")
    proxy = cfg.canvas.proxy
    if proxy is not None:
        pp = _split(proxy)
        if pp is None or pp.scheme not in ("http", "https") or not pp.hostname or pp.path not in ("", "/"):
            out.append(f"canvas.proxy: give the proxy as http://host:port (or https://...), got {mask_url(proxy)!r}")
    if cfg.log.format not in ("text", "json"):
        out.append(f"log.format: \"text\" or \"json\", got {cfg.log.format!r}")
    return out


def _split(url: str) -> SplitResult | None:
    """``urlsplit(url)``, or None when it (or its port) cannot be read."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return None
    return parts


def _rotation_problem(value: str) -> str | None:
    """Why loguru would refuse ``value`` as ``[log] rotation`` (None when it is fine).

    Asks loguru's own parser, so what passes here is exactly what the log sink takes; the
    default is not looked at (no loguru import for most commands). Should loguru's
    internals move, the log sink's own refusal (``logs.setup``) still names the key.
    """
    if value == LogConfig.rotation:
        return None
    try:
        from loguru._file_sink import FileSink
    except ImportError:  # pragma: no cover - loguru reorganised
        return None
    try:
        FileSink._make_rotation_function(value)
    except (ValueError, TypeError):
        return f'cannot read {value!r}: give a size ("50 MB"), an interval ("1 week"), "daily" or a time ("00:00")'
    return None


def mask_url(url: str) -> str:
    """``url`` with the password of its user-info (``http://user:pw@host``) replaced by ``****``."""
    parts = _split(url)
    if parts is None:
        return "(not a URL)"
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:****@{netloc}").geturl()


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class TokenError(Exception):
    """No usable token was found; the message says where we looked and why each failed."""


def read_token(cfg: Config, environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Return ``(token, where_it_came_from)``; first found wins.

    Order: ``$SISDROPD_TOKEN``; ``$CREDENTIALS_DIRECTORY/canvas-token`` (systemd
    ``LoadCredential=``); ``canvas.token_file``. A token file readable by all users is
    refused. Raises ``TokenError`` (never with the token in its text).
    """
    env = os.environ if environ is None else environ
    if env.get("SISDROPD_TOKEN", "").strip():
        return _checked_token(env["SISDROPD_TOKEN"], "$SISDROPD_TOKEN"), "$SISDROPD_TOKEN"
    candidates: list[Path] = []
    if env.get("CREDENTIALS_DIRECTORY"):
        candidates.append(Path(env["CREDENTIALS_DIRECTORY"]) / "canvas-token")
    if cfg.canvas.token_file:
        candidates.append(Path(cfg.canvas.token_file))
    tried: list[str] = []
    for path in candidates:
        try:
            st = path.stat()
        except FileNotFoundError:
            tried.append(f"{path}: no such file")
            continue
        except OSError as e:
            tried.append(f"{path}: {e.strerror}")
            continue
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            tried.append(f"{path}: {kind}, not a file holding the token")
            continue
        if st.st_mode & stat.S_IROTH:
            raise TokenError(
                f"{path}: the token file is readable by all users; run: chmod o-r {path}"
            )
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            tried.append(f"{path}: cannot read ({getattr(e, 'strerror', None) or 'not UTF-8'})")
            continue
        if not token:
            tried.append(f"{path}: empty")
            continue
        return _checked_token(token, str(path)), str(path)
    where = "; ".join(tried) if tried else "neither $SISDROPD_TOKEN nor canvas.token_file is set"
    raise TokenError(f"no Canvas token found ({where})")


def _checked_token(raw: str, source: str) -> str:
    """``raw`` without its surrounding whitespace, if it can be one HTTP header value.

    A token is one line of visible ASCII (Canvas's are ``<id>~<64 letters and digits>``).
    Anything else is refused here, naming ``source`` and never the token: a second line
    or a control character would otherwise make requests raise InvalidHeader with the
    whole header value, token included, in its text (a text our redaction cannot match,
    since it shows the newline escaped). Raises ``TokenError``.
    """
    token = raw.strip()
    if "\n" in token or "\r" in token:
        raise TokenError(f"{source}: the token has more than one line; put the token alone on one line")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in token):  # C0, DEL, C1
        raise TokenError(f"{source}: the token contains a control character; put the token alone on one line")
    if any(not (0x21 <= ord(c) <= 0x7E) for c in token):
        raise TokenError(f"{source}: the token contains a space or a character outside printable ASCII")
    return token
