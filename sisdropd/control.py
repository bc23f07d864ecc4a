"""Operator commands from another shell: release, discard, retry, pause, resume, abort.

They work whether or not the daemon runs. Each changes the journal (and moves a file)
itself, records the request for the daemon to log ("who asked for what"), and pokes a
running daemon with SIGUSR1 so it acts at once instead of at its next tick.
"""

from __future__ import annotations

import getpass
import os
import signal
import time

from sisdropd.canvas import CanvasError, NotFound, client_for
from sisdropd.config import Config
from sisdropd.files import move
from sisdropd.folders import lock_holder, pause_flag, stored_name
from sisdropd.journal import FileRecord, Journal
from sisdropd.lifecycle import State
from sisdropd.logs import clean


def _say(line: str) -> None:
    print(clean(line), flush=True)


def who() -> str:
    """The asking user and process, for the daemon's log."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    via = os.environ.get("SUDO_USER")
    return f"{user}{f' (via sudo from {via})' if via else ''}, pid {os.getpid()}"


def poke(cfg: Config) -> None:
    """Wake a running daemon (SIGUSR1 to the pid in its lock file); quiet if none runs."""
    pid = lock_holder(cfg.folders.path("state_dir"))
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError:
        pass


def _find(j: Journal, name: str, state: State) -> FileRecord | None:
    recs = j.find_by_name(name, {state})
    return recs[0] if recs else None


def _finish(cfg: Config, j: Journal, command: str, name: str | None, result: str, code: int) -> int:
    j.add_request(command, name, who(), result)
    j.close()
    poke(cfg)
    _say(result)
    return code


def release(cfg: Config, name: str) -> int:
    """A held file goes back to the queue (posted next), its counts accepted."""
    j = Journal(cfg.folders.path("state_dir"))
    rec = _find(j, name, State.HELD)
    if rec is None:
        return _finish(cfg, j, "release", name, f"no held file named {name}", 1)
    held, proc = cfg.folders.path("held") / rec.stored_name, cfg.folders.path("processing") / rec.stored_name
    try:
        move(held, proc)
    except OSError as e:
        return _finish(cfg, j, "release", name, f"cannot move {held} back: {e.strerror or e}", 1)
    j.transition(rec.id, State.QUEUED, f"released by {who()}", guard_accepted=1, next_attempt=0)
    return _finish(cfg, j, "release", name, f"released: {rec.original_name} is queued, its counts accepted", 0)


def discard(cfg: Config, name: str) -> int:
    """A held file goes to failed/ with the reason "discarded by operator"."""
    j = Journal(cfg.folders.path("state_dir"))
    rec = _find(j, name, State.HELD)
    if rec is None:
        return _finish(cfg, j, "discard", name, f"no held file named {name}", 1)
    from sisdropd.journal import utcnow

    j.transition(
        rec.id, State.FINISHING, f"discarded by {who()}", outcome="failed",
        outcome_reason=f"discarded by operator ({rec.outcome_reason})", finished_at=utcnow(),
    )
    return _finish(cfg, j, "discard", name, f"discarded: {rec.original_name} goes to failed/", 0)


def retry(cfg: Config, name: str) -> int:
    """A file in failed/ goes back to the queue under a new name; its old sidecar stays."""
    j = Journal(cfg.folders.path("state_dir"))
    rec = _find(j, name, State.FAILED)
    if rec is None:
        return _finish(cfg, j, "retry", name, f"no file named {name} in failed/", 1)
    src = cfg.folders.path("failed") / rec.stored_name
    new = stored_name(rec.original_name)
    try:
        move(src, cfg.folders.path("processing") / new)
    except OSError as e:
        return _finish(cfg, j, "retry", name, f"cannot move {src} back: {e.strerror or e}", 1)
    if rec.import_id:
        j.retire_import_id(rec.import_id)  # never mistaken for the new post's import
    j.transition(
        rec.id, State.QUEUED, f"retried by {who()} (was failed/{rec.stored_name})", stored_name=new,
        import_id=None, workflow_state=None, progress=None, sis_import=None, upload_name=None, members=None,
        outcome=None, outcome_reason=None, problems=None, errors_file=None, posted_at=None, post_started=None,
        finished_at=None, next_attempt=0, last_error=None,
    )
    return _finish(cfg, j, "retry", name, f"retrying: {rec.original_name} is queued (its old sidecar stays in failed/)", 0)


def pause(cfg: Config, on: bool) -> int:
    """Stop (or restart) the taking of new files; an import in flight finishes."""
    state_dir = cfg.folders.path("state_dir")
    state_dir.mkdir(parents=True, exist_ok=True)
    flag = pause_flag(state_dir)
    if on:
        flag.write_text(f"{who()} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
    else:
        flag.unlink(missing_ok=True)
    j = Journal(state_dir)
    word = "paused: no new files are taken until `sisdropd resume`" if on else "resumed: new files are taken again"
    return _finish(cfg, j, "pause" if on else "resume", None, word, 0)


def abort(cfg: Config, token: str) -> int:
    """Abort the import in flight in Canvas (the daemon then sends its file to failed/)."""
    j = Journal(cfg.folders.path("state_dir"))
    running = [r for r in j.in_states({State.RUNNING}) if r.import_id]
    if not running:
        return _finish(cfg, j, "abort", None, "nothing in flight to abort", 1)
    rec = running[0]
    c = cfg.canvas
    client = client_for(cfg, token, patience="command")
    try:
        assert rec.import_id is not None
        imp = client.abort(rec.import_id, deadline=time.time() + c.timeout)
        result, code = f"aborted import {rec.import_id} ({rec.original_name}): now {imp.get('workflow_state')}", 0
    except NotFound:
        result, code = f"import {rec.import_id} ({rec.original_name}) had already finished", 1
    except CanvasError as e:
        result, code = f"could not abort import {rec.import_id}: {e.message}", 1
    finally:
        client.close()
    return _finish(cfg, j, "abort", rec.original_name, result, code)

