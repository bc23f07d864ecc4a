"""One file's conversation with Canvas: the name it is posted under, finding a post whose
answer was lost, following an import to its final state, and what that state means.

Canvas's ``workflow_state`` values (reference section 5) live here, not in ``lifecycle``
(which holds our own states): which are final, pending or running, and which of our
outcomes (done/ or failed/) a final one sends a file to, with the reason in words.

No folders and no journal here: ``worker`` (the daemon) and ``commands.submit``
(one-shot) both use these functions and keep their own records.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from sisdropd.lifecycle import State

if TYPE_CHECKING:  # only types here: `status` reads outcomes with these functions, without requests
    from sisdropd.canvas import CanvasClient, CanvasError

CLOCK_SKEW = 600.0  # seconds: Canvas's clock may differ from ours by this much
DEAD_INITIALIZING = 600.0  # an import still initializing after this long (plus STORE_RATE) never runs (§2.4)
STORE_RATE = 1e6  # bytes a second Canvas is sure to store an upload at while it is `initializing`
FIRST_CHECK = 0.002  # seconds before the first status check; then x1.5 up to poll_interval
ERRORS_FILE_WAIT = 30.0  # Canvas writes the errors file in a separate job after the end

# Canvas workflow_state values (reference section 5).
SUCCESS_STATES = frozenset({"imported", "imported_with_messages"})
FAILURE_STATES = frozenset({"failed", "failed_with_messages", "aborted"})
# Produced by restore_states on an import that had finished: the import itself ran.
RESTORED_STATES = frozenset({"restored", "partially_restored"})
FINAL_STATES = SUCCESS_STATES | FAILURE_STATES | RESTORED_STATES
PENDING_STATES = frozenset({"initializing", "created"})
RUNNING_STATES = frozenset({"importing", "cleanup_batch", "restoring"})

_REASONS = {
    "imported": "imported",
    "imported_with_messages": "imported with warnings",
    "failed": "Canvas failed the import",
    "failed_with_messages": "Canvas failed the import with errors (some rows may have been applied)",
    "aborted": "the import was aborted in Canvas",
    "restored": "imported, then its changes were restored (undone) in Canvas",
    "partially_restored": "imported, then part of its changes were restored (undone) in Canvas",
}


def is_final(workflow_state: str | None) -> bool:
    """True when Canvas will not change this import any more (decided by state alone)."""
    return workflow_state in FINAL_STATES


def route(workflow_state: str) -> tuple[State, str]:
    """For a final ``workflow_state``: our outcome (DONE or FAILED) and the reason in words.

    Raises ``ValueError`` for a state that is not final.
    """
    if workflow_state in FAILURE_STATES:
        return State.FAILED, _REASONS[workflow_state]
    if workflow_state in SUCCESS_STATES or workflow_state in RESTORED_STATES:
        return State.DONE, _REASONS[workflow_state]
    raise ValueError(f"not a final workflow_state: {workflow_state!r}")


def verdict(sis_import: dict[str, Any]) -> tuple[State, str]:
    """``route`` for a final import, its reason completed with Canvas's first error.

    A change_threshold abort is said in words with Canvas's own message ("1200 enrollments
    would be deleted and exceeds the set threshold of 10%"), and that the file's rows were
    applied: Canvas stops only the batch-mode clean-up. A crash before any file was read
    (``failed`` with ``data.error_message``) gives that message. Raises ``ValueError`` if
    the import is not final.
    """
    state = str(sis_import.get("workflow_state"))
    dest, reason = route(state)
    errors = sis_import.get("processing_errors") or []
    texts = [" ".join(str(x) for x in e if x) if isinstance(e, list) else str(e) for e in errors]
    if state == "aborted" and (threshold := next((t for t in texts if THRESHOLD.search(t)), None)):
        return dest, (
            f"Canvas stopped the batch-mode clean-up: {threshold} (change_threshold). The file's rows "
            "were applied; only the deletion of what the file leaves out was stopped"
        )
    if dest == State.FAILED and texts:
        reason += ": " + texts[0]
    elif dest == State.FAILED and (crash := (sis_import.get("data") or {}).get("error_message")):
        reason += f": {crash}"
    return dest, reason


#: Canvas's words when batch mode would delete more than change_threshold allows (reference
#: section 5, ``aborted``); older Canvas named the parameter instead.
THRESHOLD = re.compile(r"would be deleted and exceeds the set threshold|change_threshold")


def upload_name(original: str) -> str:
    """A name unique to this post, made of safe characters only, ending in .csv/.zip/.xml.

    Canvas lists a posted CSV under this name in ``csv_attachments`` (and keeps it as
    ``filename`` unescaped only if it has no characters CGI-escaping would change), which
    is how a lost answer is found again.
    """
    stem, _, ext = original.rpartition(".")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem or original).strip("._-")[:80] or "upload"
    return f"sisdrop-{os.urandom(8).hex()}-{safe}.{ext.lower() or 'csv'}"  # os.urandom: what secrets uses, without its imports


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(s: str | None) -> float | None:
    if not s:
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def upload_pattern(original: str) -> re.Pattern[str]:
    """Every name ``upload_name(original)`` can give (any random part), for a record that was
    lost with the journal: ``sisdrop-<16 hex>-<safe stem>.<ext>``."""
    stem, _, ext = original.rpartition(".")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem or original).strip("._-")[:80] or "upload"
    return re.compile(rf"sisdrop-[0-9a-f]{{16}}-{re.escape(safe)}\.{re.escape(ext.lower() or 'csv')}")


def attachment_matches(
    sis_import: dict[str, Any], upload: str | re.Pattern[str], members: Sequence[Sequence[Any]] | None,
    size: int | None = None,
) -> bool:
    """Whether this import's ``csv_attachments`` are the ones our post would produce.

    A CSV is listed under our unique upload name (``display_name``, or the CGI-escaped
    ``filename``; a users CSV with passwords as ``<stem>_filtered.csv``), with our size when
    ``size`` is known (a filtered one has another size). ``upload`` may be a pattern of
    such names (``upload_pattern``). A zip is never listed itself: its recognised members
    are, by base name and size (``members``); a member listed filtered matches by name
    alone, every other one by name and size.
    """
    atts = sis_import.get("csv_attachments") or []
    if not atts:
        return False
    if (upload if isinstance(upload, str) else upload.pattern).lower().endswith("zip"):
        return _members_match(atts, members)
    for a in atts:
        for name in (a.get("display_name") or "", unquote_plus(a.get("filename") or "")):
            stem, _, ext = name.rpartition(".")
            filtered = stem.endswith("_filtered")
            plain_name = f"{stem.removesuffix('_filtered')}.{ext}" if filtered else name
            if isinstance(upload, str):
                named = plain_name == upload
            else:
                named = upload.fullmatch(plain_name) is not None
            if named and (filtered or size is None or int(a.get("size") or -1) == size):
                return True
    return False


def _members_match(atts: list[dict[str, Any]], members: Sequence[Sequence[Any]] | None) -> bool:
    if not members:
        return False
    ours = Counter((str(m[0]), int(m[1])) for m in members)
    exact: Counter[tuple[str, int]] = Counter()
    filtered: Counter[str] = Counter()  # a users member with password columns: listed as <stem>_filtered.csv
    for a in atts:
        name = a.get("display_name") or ""
        stem = name.rsplit(".", 1)[0]
        if stem.endswith("_filtered"):
            filtered[stem.removesuffix("_filtered")] += 1
        else:
            exact[(name, int(a.get("size") or 0))] += 1
    if exact - ours or exact.total() + filtered.total() != ours.total():
        return False  # a member we did not send, by name or size, or another number of them
    # Every member not listed by name and size is a filtered one (its size changes).
    return Counter(name.rsplit(".", 1)[0] for name, _ in (ours - exact).elements()) == filtered


def initializing_limit(size: int | None) -> float:
    """How long an import may stay ``initializing`` before it is taken for dead (§2.4): Canvas
    stores the upload in that state, so the time grows with the file's size."""
    return DEAD_INITIALIZING + (size or 0) / STORE_RATE


def find_posted(
    client: CanvasClient,
    *,
    upload: str | re.Pattern[str],
    members: list[list[Any]] | None,
    post_started: float,
    post_user_id: int | None,
    exclude: set[int],
    size: int | None = None,
    log: Any = None,
    deadline: float | None = None,
    now: float | None = None,
) -> tuple[str, dict[str, Any] | None]:
    """Look in Canvas's list for the import a post whose answer was lost may have created.

    Candidates are imports created since the post (less the clock margin) by
    ``post_user_id``, the Canvas user of the token that made the post (None: any user),
    not in ``exclude`` (ids known to belong to other files). Returns:

    - ``("found", sis_import)``: one lists our files (by name, or a zip's members, and size);
    - ``("waiting", sis_import)``: none does, but one lists no files yet in a non-final
      state (``created``, ``initializing``, ``importing``, ``cleanup_batch``): it may be
      ours, and nothing can tell until it lists its files or ends (the oldest is returned);
    - ``("absent", None)``: no candidate at all. One that ended without listing any file
      changed nothing in Canvas; one still ``initializing`` after ``initializing_limit``
      (``size``) never runs (§2.4). Neither counts.

    Raises the client's errors (``Retryable`` when Canvas cannot be reached).
    """
    since = iso(post_started - CLOCK_SKEW)
    now = time.time() if now is None else now
    waiting: list[tuple[float, dict[str, Any]]] = []
    for imp in client.list_imports(created_since=since, log=log, deadline=deadline):
        if imp.get("id") in exclude:
            continue
        user = imp.get("user") or {}
        if post_user_id is not None and user.get("id") != post_user_id:
            continue
        if attachment_matches(imp, upload, members, size):
            return "found", imp
        state = imp.get("workflow_state")
        if imp.get("csv_attachments") or is_final(state):
            continue  # another post's files, or an end without files: not this post's doing
        created = _parse_time(imp.get("created_at")) or now
        if state == "initializing" and now - created > initializing_limit(size):
            continue  # a dead batch (§2.4): it will never run
        waiting.append((created, imp))
    if waiting:
        return "waiting", min(waiting, key=lambda c: (c[0], c[1].get("id") or 0))[1]
    return "absent", None


def probe_account(client: CanvasClient, *, log: Any = None, patience: float = 60.0) -> CanvasError | None:
    """Canvas's word on the account itself, for a refusal that may or may not be about one file.

    ``GET .../sis_imports?per_page=1`` runs the checks a create runs first (the account,
    the token's permission, SIS imports enabled). Returns None when the account answers,
    else the refusal (401, 403, 404, 400...). Raises ``Retryable`` when Canvas cannot be
    reached within ``patience`` seconds.
    """
    from sisdropd.canvas import CanvasError, Retryable  # the client's module: loaded with it

    try:
        client.call("GET", f"{client.account}/sis_imports", params={"per_page": 1}, log=log, deadline=time.time() + patience)
    except Retryable:
        raise
    except CanvasError as e:
        return e
    return None


def account_refusal(e: CanvasError, account_id: str) -> str:
    """An account-wide refusal in words: what Canvas said, and what to look at."""
    from sisdropd.canvas import Forbidden, NotFound, TokenRejected

    if isinstance(e, TokenRejected):
        return f"Canvas rejected the token ({e.message}): a valid token of a user with the SIS import permission is needed"
    if isinstance(e, Forbidden):
        return f"Canvas refuses SIS imports on account {account_id} ({e.message}): they must be enabled for it"
    if isinstance(e, NotFound):
        return f"Canvas has no account {account_id} for this token ({e.message}): check canvas.account_id"
    return f"Canvas refuses account {account_id} ({e.message}): canvas.account_id must be a root account"


def file_refusal(e: CanvasError, params: dict[str, Any]) -> str:
    """A refusal Canvas gave this file alone (the account answers), in words."""
    from sisdropd.canvas import NotFound, Refused

    term = params.get("batch_mode_term_id")
    if term and (isinstance(e, NotFound) or "batch_mode_term_id" in e.message):
        return f"Canvas has no term {term} (batch_mode_term_id; Canvas answered {e.message})"
    if isinstance(e, Refused | NotFound):
        return f"Canvas refused the file: {e.message}"
    return f"Canvas refused the file ({e.message})"


def counts_summary(sis_import: dict[str, Any]) -> str:
    """``users 1250, enrollments 4380; 2 warnings, 0 errors`` from Canvas's data.counts."""
    counts = ((sis_import.get("data") or {}).get("counts")) or {}
    parts = [f"{k} {v}" for k, v in counts.items() if k not in ("error_count", "warning_count") and v]
    tail = f"{counts.get('warning_count', 0)} warnings, {counts.get('error_count', 0)} errors"
    return (", ".join(parts) or "nothing imported") + "; " + tail


def needs_errors_file(sis_import: dict[str, Any]) -> bool:
    """Canvas has (or is about to have) an errors file for this import."""
    counts = ((sis_import.get("data") or {}).get("counts")) or {}
    had = (counts.get("error_count") or 0) + (counts.get("warning_count") or 0) > 0
    had = had or bool(sis_import.get("processing_errors") or sis_import.get("processing_warnings"))
    return had and not sis_import.get("errors_attachment")


def follow(
    client: CanvasClient,
    import_id: int,
    *,
    deadline: float,
    poll_interval: float,
    log: Any,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    first_check: float = FIRST_CHECK,
    patience: float = 60.0,
) -> tuple[dict[str, Any], bool]:
    """Poll one import until its ``workflow_state`` is final (progress is never trusted).

    The first check comes after ``first_check`` seconds and the interval grows by half
    each time up to ``poll_interval``, so a fast import is not made to wait. Returns
    ``(sis_import, True)`` when final, ``(sis_import, False)`` when an answer asked for at
    or after ``deadline`` (epoch seconds) says it is not: no verdict without Canvas's word,
    so a restart past the deadline asks first. Raises ``Retryable`` when Canvas cannot be
    reached (retried until the deadline, and at least ``patience`` seconds), ``Stopped``
    when the daemon stops, and the client's other errors (401, 404...).
    """
    interval = min(first_check, poll_interval)
    seen: tuple[Any, Any] | None = None
    while True:
        client.wait(min(interval, max(0.0, deadline - time.time())))
        interval = min(poll_interval, interval * 1.5)
        asked = time.time()
        last = client.get_import(import_id, log=log, deadline=max(deadline, asked + patience))
        state, progress = last.get("workflow_state"), last.get("progress")
        if (state, progress) != seen:
            if seen is None or state != seen[0]:
                log.info("state {} (progress {}%)", state, progress)
            else:
                log.debug("progress {}%", progress)
            seen = (state, progress)
            if on_update:
                on_update(last)
        if is_final(state):
            break
        if asked >= deadline:
            return last, False
    # The errors file is written by a separate job after the end: give it a moment.
    end = time.time() + ERRORS_FILE_WAIT
    while needs_errors_file(last) and time.time() < end:
        client.wait(min(poll_interval, 1.0))
        last = client.get_import(import_id, log=log, deadline=end)
    return last, True


def canvas_messages(sis_import: dict[str, Any], log: Any, limit: int = 5) -> None:
    """Log Canvas's processing errors and warnings, one line each: the first few, then a count."""
    for key, level in (("processing_errors", "ERROR"), ("processing_warnings", "WARNING")):
        items = sis_import.get(key) or []
        kind = "error" if key == "processing_errors" else "warning"
        for pair in items[:limit]:
            file, msg = (pair + [None, None])[:2] if isinstance(pair, list) else (None, pair)
            log.log(level, "Canvas {}: {}{}", kind, f"{file}: " if file else "", msg)
        if len(items) > limit:
            log.log(level, "Canvas {}s: {} more not shown (see the sidecar and errors file)", kind, len(items) - limit)
