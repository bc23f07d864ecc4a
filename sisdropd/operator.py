"""What may be done to a file besides its import: hold, release, discard, retry; pause, abort.

This is the one module that knows held/: the worker ``hold``s a file the change guard
stops (or one found after the journal was lost), an operator ``release``s it back to the
queue or ``discard``s it to failed/ (any file that waits too: in the queue, between
posts, or for a look-alike import; never one on the wire or with a known import), and
``retry`` puts a failed file back in the queue. ``pause`` stops the taking of new files,
``abort`` aborts an import in Canvas (the one in flight, or the one a timed-out file left
running).

Every move of a file goes the same way, so that it is safe whether the daemon runs or
not and a crash anywhere is finished at the next start: the intent is journaled first
(``begin``: the record becomes MOVING, compare-and-set against the state the command saw,
so of two racing commands, or a command and the daemon, one wins and the other changes
nothing), then the file moves (with its sidecar: written beside it at its destination, or
removed from held/ when it leaves), then the final state is journaled (``carry_out``,
which start-up calls for every MOVING record). Names read from the journal are checked
to be plain file names before any path is built from them.

Nothing here prints, exits or signals: the operator's commands (``commands.control``) do,
with the ``Result`` each function returns. ``who`` names the asking user in the journal.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sisdropd import guard, importer
from sisdropd.canvas import CanvasClient, CanvasError, NotFound
from sisdropd.config import Config
from sisdropd.crashpoint import crashpoint
from sisdropd.files import MoveConflict, move, sha256_or_none, write_atomic
from sisdropd.folders import (
    STATE_MODE,
    Folders,
    UnsafeName,
    inside,
    make_dir,
    pause_flag,
    plain,
    stored_name,
)
from sisdropd.journal import FileRecord, Journal, utcnow
from sisdropd.lifecycle import Conflict, State
from sisdropd.logs import event as log_event
from sisdropd.notify import Notifier
from sisdropd.outcome import file_type, sidecar

#: The folders an intent may name (a forged intent names no other place).
_FOLDERS = ("processing", "held", "failed")


@dataclass(frozen=True)
class Result:
    """What an operator's request did: ``ok`` (the command's exit status 0), a line saying so,
    and the file it concerned when the request named none (abort)."""

    ok: bool
    message: str
    file: str | None = None


# -- intents: journal, move, journal ------------------------------------------------------
def _path(folders: Folders, where: list[str] | tuple[str, str]) -> Path:
    folder, name = where
    if folder not in _FOLDERS:
        raise UnsafeName(f"the journal names the folder {folder!r}, which is none of ours: refusing to touch it")
    return inside(getattr(folders, folder), name)


def begin(
    journal: Journal, folders: Folders, rec: FileRecord, *, command: str, expect: State,
    src: tuple[str, str], dst: tuple[str, str], then: State, note: str, sidecar_at_dst: bool = False,
    then_fields: dict[str, Any] | None = None, where: dict[str, Any] | None = None, **fields: Any,
) -> FileRecord:
    """Journal the intent to move ``rec``'s file from ``src`` to ``dst`` (``(folder, name)``)
    and then put it in state ``then`` with ``then_fields``: the record becomes MOVING.

    ``fields`` are set now (what the sidecar written at ``dst`` must say). Raises
    ``Conflict`` when the record is no longer ``expect`` (or no longer holds ``where``),
    ``UnsafeName`` for a name that is not a plain file name.
    """
    _path(folders, src)  # refuse a forged name before anything is journaled
    _path(folders, dst)
    intent = {
        "command": command, "from": list(src), "to": list(dst), "then": str(then), "note": note,
        "sidecar": sidecar_at_dst, "fields": then_fields or {},
    }
    rec = journal.transition(rec.id, State.MOVING, note, expect=expect, where=where, intent=intent, **fields)
    crashpoint("intent")
    return rec


def carry_out(cfg: Config, journal: Journal, folders: Folders, rec: FileRecord) -> FileRecord:
    """Finish a MOVING record's intent: the sidecar, the move, then the final state.

    Idempotent: start-up calls it for a command a crash interrupted, and a command run
    again completes its own half-done request. A file gone from both places closes the
    record as LOST. Raises ``MoveConflict`` (both copies kept), ``UnsafeName``, OSError;
    ``Conflict`` when another writer finished it first.
    """
    intent = rec.intent or {}
    src, dst = _path(folders, intent["from"]), _path(folders, intent["to"])
    then = State(intent["then"])
    if intent.get("sidecar"):
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(dst.parent / f"{dst.name}.json", sidecar(cfg, replace(rec, state=then), None, file_type=file_type(src)))
    try:
        move(src, dst, expect=(rec.size, rec.sha256))
    except FileNotFoundError:
        log_event(rec.original_name).error("{} vanished before it could be moved to {}; record closed", src, dst)
        return journal.transition(rec.id, State.LOST, f"{intent['command']}: the file vanished", expect=State.MOVING, intent=None)
    crashpoint("carried")
    if intent["from"][0] == "held":  # the held sidecar goes with its file
        with contextlib.suppress(FileNotFoundError):
            os.unlink(src.with_name(src.name + ".json"))
    return journal.transition(rec.id, then, intent.get("note") or "", expect=State.MOVING, intent=None, **intent.get("fields", {}))


def _do(cfg: Config, journal: Journal, folders: Folders, rec: FileRecord, done: str) -> Result:
    """Carry out ``rec``'s intent for a command; the Result says what happened."""
    try:
        carry_out(cfg, journal, folders, rec)
    except Conflict:
        return Result(True, f"{done} (completed meanwhile by the daemon)")
    except MoveConflict as e:
        return Result(False, f"cannot finish: {e.strerror}: compare them and remove the wrong one, then run the command again")
    except OSError as e:
        return Result(False, f"cannot move {rec.original_name}: {e.strerror or e}; the request is recorded: run the command again, or it completes at the daemon's next start")
    return Result(True, done)


def unfinished(cfg: Config, journal: Journal, folders: Folders) -> None:
    """Start-up: finish every MOVING record's intent (a hold or a command a crash interrupted)."""
    for rec in journal.in_states({State.MOVING}):
        log = log_event(rec.original_name, rec.import_id)
        command = (rec.intent or {}).get("command") or "move"
        try:
            rec = carry_out(cfg, journal, folders, rec)
        except Conflict:
            continue
        except (UnsafeName, MoveConflict) as e:
            log.error("cannot finish the {} begun before the restart: {}", command, e)
            continue
        except OSError as e:
            log.error("cannot finish the {} begun before the restart: {} (will try at the next start)", command, e.strerror or e)
            continue
        log.info("finished a {} begun before the restart: now {}", command, rec.state)


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
    log = log_event(rec.original_name, rec.import_id)
    try:
        rec = park(
            cfg, journal, folders, rec, reason, note="change guard", expect=rec.state, sha256=sha256,
            guard=info, counts=counts,
        )
    except OSError as e:  # held/ cannot take it now: back in the queue, judged again later
        delay = max(cfg.canvas.retry_initial, min(60.0, cfg.canvas.retry_max))
        log.error("cannot move the file into held/ ({}): it stays in processing/, judged again in {:g}s", e.strerror or e, delay)
        with contextlib.suppress(OSError):
            os.unlink(inside(folders.held, rec.stored_name, ".json"))
        journal.transition(
            rec.id, State.QUEUED, "cannot hold", expect=State.MOVING, intent=None,
            next_attempt=time.time() + delay, last_error=str(e)[:500],
        )
        return
    log.warning("{}; it waits in held/ (sisdropd release {} / discard {})", reason, rec.original_name, rec.original_name)
    for row in verdict.table():
        log.warning(
            "  {}: last import {} rows, this file {} rows ({}%)", row["type"], row["last_import"], row["this_file"],
            "n/a" if row["change_percent"] is None else f"{row['change_percent']:+g}",
        )
    alert_held(folders, rec, reason, notifier, counts=info["counts"])


def park(
    cfg: Config, journal: Journal, folders: Folders, rec: FileRecord, reason: str, *, note: str,
    expect: State = State.QUEUED, sha256: str | None = None, **fields: Any,
) -> FileRecord:
    """Move a record's file from processing/ into held/ with its sidecar, through MOVING, to HELD.

    ``sha256`` is that of the bytes judged (a release accepts those bytes only); by default
    the record's, else the file's as it is now."""
    name = plain(rec.stored_name)
    rec = begin(
        journal, folders, rec, command="hold", expect=expect, src=("processing", name), dst=("held", name),
        then=State.HELD, note=note, sidecar_at_dst=True, outcome_reason=reason,
        sha256=sha256 or rec.sha256 or sha256_or_none(folders.processing / name), **fields,
    )
    return carry_out(cfg, journal, folders, rec)


def alert_held(folders: Folders, rec: FileRecord, reason: str, notifier: Notifier | None, counts: Any = None) -> None:
    if notifier is not None:
        notifier.send(
            "held",
            {"file": rec.original_name, "import_id": rec.import_id, "state": None, "reason": reason,
             "sidecar": str(inside(folders.held, rec.stored_name, ".json")), "counts": counts},
        )


def half_parked(folders: Folders, rec: FileRecord) -> bool:
    """A HELD record whose file is in processing/ (a journal from before intents): park it again."""
    return os.path.lexists(inside(folders.processing, rec.stored_name)) and not os.path.lexists(inside(folders.held, rec.stored_name))


def locate(folders: Folders, rec: FileRecord) -> Path:
    """Where an open record's file is: processing/, or held/ for a FINISHING record an older
    version's discard left there."""
    path = inside(folders.processing, rec.stored_name)
    held = inside(folders.held, rec.stored_name)
    if not os.path.lexists(path) and os.path.lexists(held):
        return held
    return path


# -- the operator's requests --------------------------------------------------------------
def _find(journal: Journal, name: str, states: set[State], command: str) -> FileRecord | None:
    """The newest record named ``name`` in ``states``, or a half-done ``command`` on it."""
    found = None
    for rec in journal.find_by_name(name, {*states, State.MOVING}):
        if rec.state != State.MOVING or (rec.intent or {}).get("command") == command:
            found = rec
            break
    crashpoint("found")  # from here a rival may move the record first: the compare-and-set decides
    return found


def _settled(cfg: Config, journal: Journal, folders: Folders, rec: FileRecord, done: str) -> Result | None:
    """The Result when the request ends before it begins: names in the record that cannot be
    trusted (a forged row), or this command's own half-done request, finished now. None: go on."""
    try:
        plain(rec.stored_name)
        plain(rec.original_name)
    except UnsafeName as e:
        return Result(False, str(e))
    if rec.state == State.MOVING:
        return _do(cfg, journal, folders, rec, done)
    return None


def release(cfg: Config, journal: Journal, folders: Folders, name: str, who: str) -> Result:
    """A held file goes back to the queue (posted next), its counts accepted."""
    rec = _find(journal, name, {State.HELD}, "release")
    if rec is None:
        return Result(False, f"no held file named {name}")
    done = f"released: {rec.original_name} is queued, its counts accepted"
    if (settled := _settled(cfg, journal, folders, rec, done)) is not None:
        return settled
    try:
        rec = begin(
            journal, folders, rec, command="release", expect=State.HELD, src=("held", rec.stored_name),
            dst=("processing", rec.stored_name), then=State.QUEUED, note=f"released by {who}",
            then_fields={"guard_accepted": 1, "next_attempt": 0},
        )
    except Conflict:
        return Result(False, f"{rec.original_name} is no longer held (another command or the daemon moved it first)")
    return _do(cfg, journal, folders, rec, done)


def between_posts(rec: FileRecord) -> bool:
    """A POSTING record whose post is over (it failed, or its answer was lost) and that waits
    for a look in Canvas's list or its next post: not on the wire. The worker journals
    ``next_attempt`` 0 as it posts and a later time once the post is over."""
    return rec.post_started is not None and rec.next_attempt > rec.post_started


def discard(cfg: Config, journal: Journal, folders: Folders, name: str, who: str) -> Result:
    """A file that waits goes to failed/ without being posted again: one held, one queued
    to be posted again (Canvas's list had no import of its posts), one whose post failed
    and that waits between posts, or one whose lost post waits for a look-alike import.
    A file queued and never posted is not one of them: ``release`` and ``discard`` racing
    for a held file must have one winner, not both run one after the other.

    Never one whose post may be on the wire now, nor one with a known import (RUNNING,
    FINISHING: ``abort`` is for those): the intent's compare-and-set against the state and
    the post (``post_started``) the command saw makes the worker's next post, or its
    discovery of the import, win over the discard, or lose to it. The reason says
    "discarded by operator" and what the file waited for.
    """
    rec = _find(journal, name, {State.HELD, State.QUEUED, State.POSTING}, "discard")
    if rec is None:
        busy = next(iter(journal.find_by_name(name, {State.RUNNING, State.FINISHING})), None)
        if busy is not None and busy.import_id is not None:
            return Result(False, (
                f"{busy.original_name} has import {busy.import_id} in Canvas (it is {busy.state}): not discarded; "
                f"`sisdropd abort {busy.original_name}` stops that import, and the file then goes to failed/"
            ))
        return Result(False, f"no held or waiting file named {name}")
    posting = rec.state == State.POSTING and rec.waiting_for is None
    if rec.state == State.QUEUED and not rec.attempts:
        return Result(False, (
            f"{rec.original_name} is queued and was never posted: discard takes out a held file or one waiting to be "
            "posted again, not this one"
        ))
    if posting and not between_posts(rec):
        return Result(False, (
            f"{rec.original_name} is being posted now, not waiting: nothing to discard (once Canvas answers or the "
            "post fails, it may be discarded)"
        ))
    done = f"discarded: {rec.original_name} is in failed/"
    if (settled := _settled(cfg, journal, folders, rec, done)) is not None:
        return settled
    where: dict[str, Any] | None = None
    src = ("processing", rec.stored_name)
    last = f" ({rec.last_error})" if rec.last_error else ""
    if rec.state == State.HELD:
        reason, src = f"discarded by operator ({rec.outcome_reason})", ("held", rec.stored_name)
    elif rec.state == State.QUEUED:
        reason = (
            f"discarded by operator while it waited to be posted again after {rec.attempts} post(s){last}: "
            "Canvas's list showed no import of them"
        )
        done += " (it waited to be posted again; Canvas has no import of it)"
    elif posting:
        looked = "showed no import of it so far" if rec.absent_since is not None else "was not yet looked at for it"
        reason = (
            f"discarded by operator while it waited to be posted again: its last post failed{last} and Canvas's list "
            f"{looked}; should an import of that post show up there after all, Canvas runs it"
        )
        done += f" (its last post failed{last}; Canvas's list {looked})"
        where = {"waiting_for": None, "post_started": rec.post_started}
    else:
        reason = (
            f"discarded by operator while waiting for import {rec.waiting_for}: Canvas listed it without its files, "
            f"so it may be this file's post, and Canvas may still run it (sisdropd status {rec.waiting_for})"
        )
        where = {"waiting_for": rec.waiting_for}
    try:
        rec = begin(
            journal, folders, rec, command="discard", expect=rec.state, where=where, src=src,
            dst=("failed", rec.stored_name), then=State.FAILED, note=f"discarded by {who}", sidecar_at_dst=True,
            outcome="failed", outcome_reason=reason, finished_at=utcnow(),
        )
    except Conflict:
        return Result(False, f"{rec.original_name} changed meanwhile (another command or the daemon moved it first): look again")
    return _do(cfg, journal, folders, rec, done)


def may_still_run(rec: FileRecord) -> bool:
    """The record's import was left unfinished in Canvas (a timeout without an abort)."""
    return rec.import_id is not None and not importer.is_final(rec.workflow_state)


def _ask_final(journal: Journal, rec: FileRecord, client: CanvasClient, timeout: float) -> str | None:
    """None when Canvas says ``rec``'s import is final (recorded), else why not, in words."""
    assert rec.import_id is not None
    try:
        imp = client.get_import(rec.import_id, deadline=time.time() + timeout)
    except NotFound:
        return None  # Canvas no longer has it: it cannot run
    except CanvasError as e:
        return f"cannot ask Canvas whether import {rec.import_id} has ended ({e.message}): not retried"
    state = imp.get("workflow_state")
    if importer.is_final(state):
        journal.update(rec.id, expect=State.FAILED, workflow_state=state)
        return None
    return (
        f"import {rec.import_id} of {rec.original_name} is still running in Canvas (state {state!r}): posting the file again now "
        f"could apply it twice, out of order. Wait until it ends (sisdropd status {rec.import_id}), "
        f"or stop it with `sisdropd abort {rec.original_name}`"
    )


def post_unclear(rec: FileRecord) -> bool:
    """The record made a post whose import Canvas may hold without our knowing it: discarded
    while its answer was unclear or while it waited for a look-alike import, or failed after
    Canvas's server errors. Its post details (``upload_name``, ``post_started``) are kept."""
    return rec.import_id is None and bool(rec.upload_name) and rec.post_started is not None


def _ask_posted(journal: Journal, rec: FileRecord, client: CanvasClient, timeout: float) -> str | None:
    """None when Canvas's list shows no import of ``rec``'s last post (or one that has ended,
    recorded), else why the file must not be posted again now, in words."""
    assert rec.post_started is not None
    try:
        verdict, imp = importer.find_posted(
            client, upload=rec.upload_name or "", members=rec.members, size=rec.size,
            post_started=rec.post_started, post_user_id=rec.post_user_id,
            exclude=journal.known_import_ids(), deadline=time.time() + timeout,
        )
    except CanvasError as e:
        return f"cannot ask Canvas whether the last post of {rec.original_name} made an import ({e.message}): not retried"
    if verdict == "absent" or imp is None:
        return None
    if verdict == "found":
        journal.update(rec.id, expect=State.FAILED, import_id=int(imp["id"]), workflow_state=imp.get("workflow_state"))
        rec = journal.get(rec.id)
        if importer.is_final(rec.workflow_state):
            return None  # ended: retry judges it by its state, as any other import of the record
        return (
            f"the last post of {rec.original_name} reached Canvas as import {rec.import_id}, still running (state "
            f"{rec.workflow_state!r}): posting the file again now could apply it twice. Wait until it ends "
            f"(sisdropd status {rec.import_id}), or stop it with `sisdropd abort {rec.original_name}`"
        )
    return (
        f"Canvas lists import {imp.get('id')} without its files yet ({imp.get('workflow_state')}): it may be the last "
        f"post of {rec.original_name}, so the file is not posted again until it lists them or ends "
        f"(sisdropd status {imp.get('id')})"
    )


def retry(
    cfg: Config, journal: Journal, folders: Folders, name: str, who: str,
    client: Callable[[], CanvasClient] | None = None,
) -> Result:
    """A file in failed/ goes back to the queue under a new name; its old sidecar stays.

    A file whose import Canvas may still run (a timeout without an abort) is retried only
    once Canvas says that import has ended; one whose last post may have reached Canvas
    unseen (``post_unclear``) only once Canvas's list shows no running import of it.
    ``client`` makes the client to ask with.
    """
    rec = _find(journal, name, {State.FAILED}, "retry")
    if rec is None:
        return Result(False, f"no file named {name} in failed/")
    done = f"retrying: {rec.original_name} is queued (its old sidecar stays in failed/)"
    if (settled := _settled(cfg, journal, folders, rec, done)) is not None:
        return settled
    # Canvas is asked first, with one client, whether posting again could apply the file twice:
    # an import of its last post that nobody saw (the list), then one known still to run.
    canvas: CanvasClient | None = None
    for unclear, ask, unsure in (
        (post_unclear, _ask_posted, "the last post of {r.original_name} may have reached Canvas"),
        (may_still_run, _ask_final, "import {r.import_id} of {r.original_name} may still run in Canvas"),
    ):
        if not unclear(rec):
            continue
        if client is None:
            return Result(False, f"{unsure.format(r=rec)}: not retried")
        canvas = canvas or client()
        why = ask(journal, rec, canvas, cfg.canvas.timeout)
        if why is not None:
            return Result(False, why)
        rec = journal.get(rec.id)  # what the answer recorded (the import found, its final state)
    if rec.import_id is not None and importer.is_final(rec.workflow_state) and importer.route(rec.workflow_state or "")[0] == State.DONE:
        # Discarded or timed out while Canvas went on, and Canvas imported it: the operator
        # asks for it again knowingly, and is told.
        done = (
            f"retrying: {rec.original_name} is queued, though its import {rec.import_id} ended {rec.workflow_state} "
            "in Canvas: this posts the file again (its old sidecar stays in failed/)"
        )
    new = stored_name(rec.original_name)
    if rec.import_id:
        journal.retire_import_id(rec.import_id)  # never mistaken for the new post's import
    then = {
        "stored_name": new, "import_id": None, "workflow_state": None, "progress": None, "sis_import": None,
        "upload_name": None, "members": None, "outcome": None, "outcome_reason": None, "problems": None,
        "errors_file": None, "posted_at": None, "post_started": None, "finished_at": None, "next_attempt": 0,
        "last_error": None, "import_params": None, "post_user_id": None, "waiting_for": None, "absent_since": None, "refusals": 0,
    }
    try:
        rec = begin(
            journal, folders, rec, command="retry", expect=State.FAILED, src=("failed", rec.stored_name),
            dst=("processing", new), then=State.QUEUED, note=f"retried by {who} (was failed/{rec.stored_name})",
            then_fields=then,
        )
    except Conflict:
        return Result(False, f"{rec.original_name} is no longer in failed/ (another command moved it first)")
    return _do(cfg, journal, folders, rec, done)


def pause(folders: Folders, on: bool, who: str) -> Result:
    """Stop (or restart) the taking of new files; an import in flight finishes."""
    make_dir(folders.state_dir, STATE_MODE)  # 0700 whatever the umask (issue 12)
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


def abort(journal: Journal, client: CanvasClient, timeout: float, name: str | None = None) -> Result:
    """Abort an import in Canvas: the one in flight (the worker then sends its file to
    failed/), or, with ``name``, that file's: in flight, or left running by a timeout (then
    recorded as aborted, so ``retry`` may post the file again)."""
    if name is None:
        rec = in_flight(journal)
        if rec is None or rec.import_id is None:
            return Result(False, "nothing in flight to abort")
    else:
        recs = [r for r in journal.find_by_name(name, {State.RUNNING, State.FAILED}) if r.import_id]
        rec = next((r for r in recs if r.state == State.RUNNING or may_still_run(r)), None)
        if rec is None:
            return Result(False, f"{name} has no import that may still run in Canvas: nothing to abort", name)
    assert rec.import_id is not None
    deadline = time.time() + timeout
    try:
        imp = client.abort(rec.import_id, deadline=deadline)
    except NotFound:
        ended = ""
        if rec.state == State.FAILED:
            with contextlib.suppress(CanvasError):
                state = client.get_import(rec.import_id, deadline=deadline).get("workflow_state")
                journal.update(rec.id, expect=State.FAILED, workflow_state=state)
                ended = f" ({state})"
        return Result(False, f"import {rec.import_id} ({rec.original_name}) had already finished{ended}", rec.original_name)
    except CanvasError as e:
        return Result(False, f"could not abort import {rec.import_id}: {e.message}", rec.original_name)
    state = imp.get("workflow_state")
    if rec.state == State.FAILED:
        journal.update(rec.id, expect=State.FAILED, workflow_state=state)
        tail = f"; `sisdropd retry {rec.original_name}` posts the file again"
    else:
        tail = ""
    return Result(True, f"aborted import {rec.import_id} ({rec.original_name}): now {state}{tail}", rec.original_name)
