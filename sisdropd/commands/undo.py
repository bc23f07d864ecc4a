"""Undo and emergency stop: ``sisdropd restore ID`` and ``sisdropd abort --all-pending``.

``restore`` asks Canvas to undo an import's changes (``PUT .../sis_imports/:id/restore_states``,
with Canvas's ``undelete_only``, ``unconclude_only`` and ``batch_mode``) and follows the job's
Progress (``GET /api/v1/progress/:id``) to its end: exit 0 when it completed, 1 when it
failed or Canvas does not know the import, 3 when Canvas could not be asked or the job
outlasted ``[watch] max_wait``.

``abort --all-pending`` stops every ``initializing`` and ``created`` import of the account,
other integrations' included (Canvas's ``abort_all_pending`` has no filter): so it first
pauses the daemon (its own next file would otherwise be posted into the emptied queue),
lists what it is about to abort with each import's user, asks on a terminal (or takes
``--yes``; without either it refuses before doing anything), aborts, and leaves the daemon
paused: also when Canvas cannot be asked or does not abort (exit 3 when it stayed
unreachable, 1 when it refused), and the last line says so. A "no" at the prompt puts the
pause back as it was. ``abort`` without ``--all-pending`` is ``commands.control``'s (the
import in flight).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from sisdropd import operator
from sisdropd.canvas import CanvasClient, CanvasError, NotFound, Retryable, client_for
from sisdropd.commands import (
    EXIT_FAILED,
    EXIT_GAVE_UP,
    EXIT_OK,
    EXIT_USAGE,
    as_state_owner,
    config_of,
    say,
    token_of,
)
from sisdropd.commands.control import poke, who
from sisdropd.config import Config
from sisdropd.folders import Folders, pause_flag
from sisdropd.importer import RESTORED_STATES
from sisdropd.journal import Journal
from sisdropd.progress import Progress

PENDING = ("initializing", "created")
DONE_JOB = ("completed", "failed")  # a Progress's final workflow_states
STAYS_PAUSED = "the daemon stays paused: sisdropd resume to take new files again"


def restore(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    options = {"undelete_only": args.undelete_only, "unconclude_only": args.unconclude_only, "batch_mode": args.batch_mode}
    shown = Progress.on(sys.stdout, f"import {args.id}")
    client = client_for(cfg, token_of(cfg), patience="command")
    try:
        return run_restore(cfg, client, args.id, options, shown)
    finally:
        shown.clear()
        client.close()


def run_restore(cfg: Config, client: CanvasClient, import_id: int, options: dict[str, bool], shown: Progress) -> int:
    """Start the restore job, follow it, print the outcome; the exit status."""
    asked = {k: "true" for k, v in options.items() if v}
    try:
        job = client.request("PUT", f"{client.account}/sis_imports/{import_id}/restore_states", data=asked).json()
    except NotFound:
        say(f"import {import_id}: not found in account {cfg.canvas.account_id}")
        return EXIT_FAILED
    except CanvasError as e:
        say(f"import {import_id}: Canvas did not start the restore: {e.message}")
        return EXIT_FAILED if e.status and e.status < 500 else EXIT_GAVE_UP
    what = ", ".join(k for k in asked) or "everything it changed"
    say(f"import {import_id}: restore started ({what}), job {job.get('id')}")
    deadline = time.time() + cfg.watch.max_wait
    interval = 0.2
    try:
        while job.get("workflow_state") not in DONE_JOB:
            shown.restore(job)
            if time.time() + interval > deadline:
                shown.clear()
                say(f"gave up waiting: the restore of import {import_id} is still {job.get('workflow_state')} after {cfg.watch.max_wait:g}s")
                return EXIT_GAVE_UP
            client.wait(interval)
            interval = min(cfg.watch.poll_interval, interval * 1.5)
            job = client.call("GET", f"/progress/{int(job['id'])}", deadline=deadline)
        shown.restore(job)
        imp = client.get_import(import_id, deadline=deadline)
    except CanvasError as e:
        shown.clear()
        say(f"gave up: Canvas unreachable ({e.message}); the restore job may still run (sisdropd status {import_id})")
        return EXIT_GAVE_UP
    shown.clear()
    state = imp.get("workflow_state")
    if job.get("workflow_state") == "completed" and state in RESTORED_STATES:
        say(f"{state}: import {import_id}")
        return EXIT_OK
    why = f": {job['message']}" if job.get("message") else ""
    say(f"restore failed: import {import_id} is {state} (job {job.get('workflow_state')}{why})")
    return EXIT_FAILED


def _describe(imp: dict[str, Any], our_user: Any) -> str:
    user = imp.get("user") or {}
    owner = f"{user.get('name') or '?'} (user {user.get('id')})" + (", this token's user" if user.get("id") == our_user else "")
    files = ", ".join(a.get("display_name") or "?" for a in imp.get("csv_attachments") or []) or "files not listed yet"
    return f"  import {imp.get('id')}  {imp.get('workflow_state')}  created {imp.get('created_at')}  by {owner}  [{files}]"


def _confirm(count: int) -> bool:
    try:
        answer = input(f"Abort these {count} import(s), other integrations' included? Type yes to go on: ")
    except EOFError:
        return False
    return answer.strip().lower() == "yes"


def abort(args: argparse.Namespace) -> int:
    """``sisdropd abort``: the import in flight (``commands.control``), or ``--all-pending``."""
    if args.all_pending and args.name:
        say("abort --all-pending takes no NAME (it aborts every pending import of the account)")
        return EXIT_USAGE
    if not args.all_pending:
        if args.yes:
            say("--yes goes with --all-pending (abort alone asks nothing)")
        from sisdropd.commands import control

        return control.main(args)
    cfg = config_of(args)
    if not args.yes and not sys.stdin.isatty():
        say("not confirmed: abort --all-pending asks on a terminal; add --yes to run it without one. Nothing done.")
        return EXIT_FAILED
    as_state_owner(cfg)  # it pauses the daemon: the pause flag and the journal
    token = token_of(cfg)
    folders = Folders.of(cfg)
    was_paused = pause_flag(folders.state_dir).exists()
    _request(folders, "pause", operator.pause(folders, True, who()).message)
    say("paused: the daemon takes no new file (it stays paused; sisdropd resume when ready)")
    client = client_for(cfg, token, patience="command")
    try:
        return _abort_pending(cfg, client, folders, args.yes, was_paused)
    finally:
        client.close()


def _abort_pending(cfg: Config, client: CanvasClient, folders: Folders, yes: bool, was_paused: bool) -> int:
    deadline = time.time() + cfg.canvas.timeout
    try:
        me = client.whoami(deadline=deadline).get("id")
        pending = list(client.list_imports(states=PENDING, deadline=deadline))
    except CanvasError as e:
        say(f"cannot ask Canvas: {e.message}; nothing aborted; {STAYS_PAUSED}")
        return EXIT_GAVE_UP if isinstance(e, Retryable) else EXIT_FAILED
    pending = [imp for imp in pending if imp.get("workflow_state") in PENDING]
    if not pending:
        say(f"no pending import in account {cfg.canvas.account_id}; nothing to abort")
        return EXIT_OK
    say(f"pending imports in account {cfg.canvas.account_id} (abort_all_pending stops every one of them):")
    for imp in pending:
        say(_describe(imp, me))
    if not yes and not _confirm(len(pending)):
        if not was_paused:
            operator.pause(folders, False, who())
            _request(folders, "resume", "abort --all-pending not confirmed: resumed as before")
        say("not confirmed: nothing aborted" + ("" if was_paused else "; the daemon takes new files again"))
        return EXIT_FAILED
    try:
        client.request("PUT", f"{client.account}/sis_imports/abort_all_pending")
    except CanvasError as e:
        say(f"Canvas did not abort them: {e.message}; {STAYS_PAUSED}")
        return EXIT_GAVE_UP if isinstance(e, Retryable) else EXIT_FAILED
    ids = ", ".join(str(imp.get("id")) for imp in pending)
    _request(folders, "abort --all-pending", f"aborted the account's pending imports ({ids})")
    say(f"aborted: every pending import of account {cfg.canvas.account_id} (listed: {ids})")
    say(STAYS_PAUSED)
    return EXIT_OK


def _request(folders: Folders, command: str, result: str) -> None:
    """Record the request for the running daemon to log, and wake it."""
    journal = Journal(folders.state_dir)
    try:
        journal.add_request(command, None, who(), result)
    finally:
        journal.close()
    poke(folders)
