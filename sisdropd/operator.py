"""What may be done to a file besides its import: hold, release, discard, retry; pause, abort.

This is the one module that knows held/: the worker ``hold``s a file the change guard
stops (its sidecar written there, then the file moved there), an operator ``release``s it
back to the queue or ``discard``s it to failed/, and ``locate`` says where a record's file
is while the worker finishes it. ``retry`` puts a failed file back in the queue, ``pause``
stops the taking of new files, ``abort`` aborts the import in flight in Canvas. Each
changes the file and its record together; start-up completes what a crash interrupted
(``park``, ``complete_requeue``, used by ``recovery``).

Nothing here prints, exits or signals: the operator's commands (``commands.control``) do,
with the ``Result`` each function returns. ``who`` names the asking user in the journal.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from sisdropd import guard
from sisdropd.canvas import CanvasClient, CanvasError, NotFound
from sisdropd.config import Config
from sisdropd.files import move, sha256_or_none, write_atomic
from sisdropd.folders import Folders, pause_flag, stored_name
from sisdropd.journal import FileRecord, Journal, utcnow
from sisdropd.lifecycle import State
from sisdropd.logs import event as log_event
from sisdropd.notify import Notifier
from sisdropd.outcome import sidecar


@dataclass(frozen=True)
class Result:
    """What an operator's request did: ``ok`` (the command's exit status 0), a line saying so,
    and the file it concerned when the request named none (abort)."""

    ok: bool
    message: str
    file: str | None = None


# -- held/: the worker's side --------------------------------------------------------------
def hold(
    cfg: Config, journal: Journal, folders: Folders, rec: FileRecord, verdict: guard.Verdict,
    counts: dict[str, int], notifier: Notifier | None = None, sha256: str | None = None,
) -> None:
    """QUEUED (or POSTING, its body cut) -> HELD: the file waits in held/ for an operator
    (release or discard); logged, alerted. ``sha256`` is that of the bytes judged: a
    release accepts those bytes only."""
    reason = f"held by the change guard: {verdict.why}"
    info = {"dataset": verdict.dataset, "why": verdict.why, "counts": verdict.table()}
    rec = journal.transition(
        rec.id, State.HELD, "change guard", outcome_reason=reason, guard=info, counts=counts,
        sha256=sha256 or sha256_or_none(folders.processing / rec.stored_name),
    )
    park(cfg, folders, rec)
    log = log_event(rec.original_name, rec.import_id)
    log.warning("{}; it waits in held/ (sisdropd release {} / discard {})", reason, rec.original_name, rec.original_name)
    for row in verdict.table():
        log.warning(
            "  {}: last import {} rows, this file {} rows ({}%)", row["type"], row["last_import"], row["this_file"],
            "n/a" if row["change_percent"] is None else f"{row['change_percent']:+g}",
        )
    if notifier is not None:
        notifier.send(
            "held",
            {"file": rec.original_name, "import_id": None, "state": None, "reason": reason,
             "sidecar": str(folders.held / f"{rec.stored_name}.json"), "counts": info["counts"]},
        )


def park(cfg: Config, folders: Folders, rec: FileRecord) -> None:
    """A HELD record's sidecar, then its file's move into held/ (idempotent: start-up finishes a half-done one)."""
    folders.held.mkdir(parents=True, exist_ok=True)
    write_atomic(folders.held / f"{rec.stored_name}.json", sidecar(cfg, rec, None))
    move(folders.processing / rec.stored_name, folders.held / rec.stored_name)


def half_parked(folders: Folders, rec: FileRecord) -> bool:
    """A HELD record whose file is still in processing/: the hold was journaled, the move not done."""
    return os.path.lexists(folders.processing / rec.stored_name) and not os.path.lexists(folders.held / rec.stored_name)


def locate(folders: Folders, rec: FileRecord) -> Path:
    """Where an open record's file is: processing/, or held/ for a file discarded while held."""
    path = folders.processing / rec.stored_name
    held = folders.held / rec.stored_name
    if not os.path.lexists(path) and os.path.lexists(held):
        return held
    return path


def complete_requeue(journal: Journal, rec: FileRecord) -> None:
    """A release or retry moved ``rec``'s file back into processing/, then stopped before
    journaling it: journal it now (start-up)."""
    accepted = 1 if rec.state == State.HELD else rec.guard_accepted
    journal.transition(rec.id, State.QUEUED, "requeued (completed after restart)", guard_accepted=accepted, next_attempt=0)


# -- the operator's requests --------------------------------------------------------------
def _find(journal: Journal, name: str, state: State) -> FileRecord | None:
    recs = journal.find_by_name(name, {state})
    return recs[0] if recs else None


def release(journal: Journal, folders: Folders, name: str, who: str) -> Result:
    """A held file goes back to the queue (posted next), its counts accepted."""
    rec = _find(journal, name, State.HELD)
    if rec is None:
        return Result(False, f"no held file named {name}")
    held, proc = folders.held / rec.stored_name, folders.processing / rec.stored_name
    try:
        move(held, proc)
    except OSError as e:
        return Result(False, f"cannot move {held} back: {e.strerror or e}")
    journal.transition(rec.id, State.QUEUED, f"released by {who}", guard_accepted=1, next_attempt=0)
    return Result(True, f"released: {rec.original_name} is queued, its counts accepted")


def discard(journal: Journal, name: str, who: str) -> Result:
    """A held file goes to failed/ with the reason "discarded by operator" (the worker moves it)."""
    rec = _find(journal, name, State.HELD)
    if rec is None:
        return Result(False, f"no held file named {name}")
    journal.transition(
        rec.id, State.FINISHING, f"discarded by {who}", outcome="failed",
        outcome_reason=f"discarded by operator ({rec.outcome_reason})", finished_at=utcnow(),
    )
    return Result(True, f"discarded: {rec.original_name} goes to failed/")


def retry(journal: Journal, folders: Folders, name: str, who: str) -> Result:
    """A file in failed/ goes back to the queue under a new name; its old sidecar stays."""
    rec = _find(journal, name, State.FAILED)
    if rec is None:
        return Result(False, f"no file named {name} in failed/")
    src = folders.failed / rec.stored_name
    new = stored_name(rec.original_name)
    try:
        move(src, folders.processing / new)
    except OSError as e:
        return Result(False, f"cannot move {src} back: {e.strerror or e}")
    if rec.import_id:
        journal.retire_import_id(rec.import_id)  # never mistaken for the new post's import
    journal.transition(
        rec.id, State.QUEUED, f"retried by {who} (was failed/{rec.stored_name})", stored_name=new,
        import_id=None, workflow_state=None, progress=None, sis_import=None, upload_name=None, members=None,
        outcome=None, outcome_reason=None, problems=None, errors_file=None, posted_at=None, post_started=None,
        finished_at=None, next_attempt=0, last_error=None,
    )
    return Result(True, f"retrying: {rec.original_name} is queued (its old sidecar stays in failed/)")


def pause(folders: Folders, on: bool, who: str) -> Result:
    """Stop (or restart) the taking of new files; an import in flight finishes."""
    folders.state_dir.mkdir(parents=True, exist_ok=True)
    flag = pause_flag(folders.state_dir)
    if on:
        flag.write_text(f"{who} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        return Result(True, "paused: no new files are taken until `sisdropd resume`")
    flag.unlink(missing_ok=True)
    return Result(True, "resumed: new files are taken again")


def in_flight(journal: Journal) -> FileRecord | None:
    """The record whose import runs in Canvas now, if any."""
    running = [r for r in journal.in_states({State.RUNNING}) if r.import_id]
    return running[0] if running else None


def abort(journal: Journal, client: CanvasClient, timeout: float) -> Result:
    """Abort the import in flight in Canvas (the worker then sends its file to failed/)."""
    rec = in_flight(journal)
    if rec is None or rec.import_id is None:
        return Result(False, "nothing in flight to abort")
    try:
        imp = client.abort(rec.import_id, deadline=time.time() + timeout)
    except NotFound:
        return Result(False, f"import {rec.import_id} ({rec.original_name}) had already finished", rec.original_name)
    except CanvasError as e:
        return Result(False, f"could not abort import {rec.import_id}: {e.message}", rec.original_name)
    return Result(True, f"aborted import {rec.import_id} ({rec.original_name}): now {imp.get('workflow_state')}", rec.original_name)
