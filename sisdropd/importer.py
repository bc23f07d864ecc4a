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

if TYPE_CHECKING:  # only a type here: `status` reads outcomes with these functions, without requests
    from sisdropd.canvas import CanvasClient

CLOCK_SKEW = 600.0  # seconds: Canvas's clock may differ from ours by this much
DEAD_INITIALIZING = 600.0  # an import still initializing after this long never runs (§2.4)
FIRST_CHECK = 0.005  # seconds before the first status check; then x1.5 up to poll_interval
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


def attachment_matches(sis_import: dict[str, Any], upload: str, members: Sequence[Sequence[Any]] | None) -> bool:
    """Whether this import's ``csv_attachments`` are the ones our post would produce.

    A CSV is listed under our unique upload name (``display_name``, or the CGI-escaped
    ``filename``; a users CSV with passwords as ``<stem>_filtered.csv``). A zip is never
    listed itself: its recognised members are, by base name and size (``members``); a
    member listed filtered matches by name alone, every other one by name and size.
    """
    atts = sis_import.get("csv_attachments") or []
    if not atts:
        return False
    names = [(a.get("display_name") or "", unquote_plus(a.get("filename") or "")) for a in atts]
    if not upload.lower().endswith(".zip"):
        stem = upload.rsplit(".", 1)[0]
        wanted = {upload, f"{stem}_filtered.csv"}
        return any(d in wanted or f in wanted for d, f in names)
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


def find_posted(
    client: CanvasClient,
    *,
    upload: str,
    members: list[list[Any]] | None,
    post_started: float,
    our_user_id: int | None,
    exclude: set[int],
    log: Any = None,
    deadline: float | None = None,
) -> tuple[str, dict[str, Any] | None]:
    """Look in Canvas's list for the import a post whose answer was lost may have created.

    Returns ``("found", sis_import)``; ``("unsure", None)`` while one of our user's
    imports created since the post is still pending without attachments (it cannot be
    told apart yet: wait and ask again); or ``("absent", None)`` when Canvas provably has
    no import of this post and posting again is safe. ``exclude`` holds import ids that
    belong to other files.
    """
    unsure = False
    since = iso(post_started - CLOCK_SKEW)
    now = time.time()
    for imp in client.list_imports(created_since=since, log=log, deadline=deadline):
        if imp.get("id") in exclude:
            continue
        user = imp.get("user") or {}
        if our_user_id is not None and user.get("id") not in (None, our_user_id):
            continue
        if attachment_matches(imp, upload, members):
            return "found", imp
        state = imp.get("workflow_state")
        if state in PENDING_STATES and not imp.get("csv_attachments"):
            created = _parse_time(imp.get("created_at")) or now
            if state == "initializing" and now - created > DEAD_INITIALIZING:
                continue  # a dead batch (§2.4): it will never run
            unsure = True
    return ("unsure", None) if unsure else ("absent", None)


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
) -> tuple[dict[str, Any] | None, bool]:
    """Poll one import until its ``workflow_state`` is final (progress is never trusted).

    The first check comes after ``first_check`` seconds and the interval grows by half
    each time up to ``poll_interval``, so a fast import is not made to wait. Returns
    ``(sis_import, True)`` when final, ``(last_seen, False)`` when ``deadline`` (epoch
    seconds) passed first. Raises ``Stopped`` when the daemon stops, and the client's
    non-retryable errors (401, 404...).
    """
    interval = min(first_check, poll_interval)
    last: dict[str, Any] | None = None
    seen: tuple[Any, Any] | None = None
    while True:
        wait = min(interval, max(0.0, deadline - time.time()))
        client.wait(wait)
        interval = min(poll_interval, interval * 1.5)
        if time.time() >= deadline:
            return last, False
        last = client.get_import(import_id, log=log, deadline=deadline)
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
    # The errors file is written by a separate job after the end: give it a moment.
    end = min(deadline, time.time() + ERRORS_FILE_WAIT)
    while needs_errors_file(last) and time.time() < end:
        client.wait(min(poll_interval, 1.0))
        last = client.get_import(import_id, log=log, deadline=deadline)
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
