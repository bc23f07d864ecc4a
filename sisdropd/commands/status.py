"""``sisdropd status [ID]``: the daemon's queue and outcomes, or one import as Canvas has it.

``status`` reads the daemon's journal (it works while the daemon runs: SQLite in WAL mode
lets readers in). Nothing here prints the token: every line passes ``logs.clean``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

from sisdropd import importer
from sisdropd.commands import EXIT_USAGE, config_of, err, say, token_of, unreadable
from sisdropd.config import Config
from sisdropd.folders import journal_file, pause_flag
from sisdropd.journal import FileRecord, Journal
from sisdropd.lifecycle import State
from sisdropd.logs import redact


def main(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    if args.id is not None:
        return canvas_status(cfg, token_of(cfg), args.id, as_json=args.json)
    return journal_status(cfg, as_json=args.json, limit=args.last)


def _age(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        secs = time.time() - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return "-"
    return _duration(secs)


def _duration(secs: float) -> str:
    secs = max(0, int(secs))
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m{secs % 60:02d}s"
    return f"{secs // 3600}h{(secs % 3600) // 60:02d}m"


def _record_json(r: FileRecord) -> dict[str, Any]:
    counts = ((r.sis_import or {}).get("data") or {}).get("counts") or {}
    return {
        "id": r.id,
        "original_name": r.original_name,
        "stored_name": r.stored_name,
        "state": str(r.state),
        "size": r.size,
        "import_id": r.import_id,
        "workflow_state": r.workflow_state,
        "progress": r.progress,
        "reason": r.outcome_reason,
        "taken_at": r.taken_at,
        "posted_at": r.posted_at,
        "finished_at": r.finished_at,
        "warnings": counts.get("warning_count"),
        "errors": counts.get("error_count"),
        "last_error": r.last_error,
        "waiting_for": r.waiting_for,
        "next_attempt": (
            datetime.fromtimestamp(r.next_attempt, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            if r.next_attempt > time.time()
            else None
        ),
    }


QUEUED_SHOWN = 20  # a backlog of thousands is a count and its head, not a screenful per file


def journal_status(cfg: Config, *, as_json: bool = False, limit: int = 10) -> int:
    """Print the queue, the import in flight and the last outcomes from the journal."""
    state_dir = cfg.folders.path("state_dir")
    path = journal_file(state_dir)
    try:
        exists = path.exists()
    except OSError as e:  # a state folder this user may not enter
        err(unreadable(path, e))
        return EXIT_USAGE
    if not exists:
        if as_json:
            print(json.dumps({"queued": [], "in_flight": None, "held": [], "recent": [], "journal": None}))
        else:
            say(f"no journal yet in {state_dir}: the daemon has not run with this config")
        return 0
    # A file that is no journal (corrupt) raises JournalError: cli says so as run does, exit 2.
    try:
        j = Journal(state_dir, readonly=True)
        j.meta("schema_version")  # touch it: a permission problem shows here
    except sqlite3.Error as e:
        err(unreadable(path, e))
        return EXIT_USAGE
    try:
        queued = j.queued()
        active = j.active()
        held = j.in_states({State.HELD})
        moving = j.in_states({State.MOVING})
        recent = j.recent(limit)
        paused = pause_flag(state_dir).exists()
    finally:
        j.close()
    if as_json:
        doc = {
            "paused": paused,
            "queued": [_record_json(r) for r in queued],
            "in_flight": _record_json(active[0]) if active else None,
            "held": [_record_json(r) for r in held],
            "moving": [{**_record_json(r), "intent": r.intent} for r in moving],
            "recent": [_record_json(r) for r in recent],
        }
        print(redact(json.dumps(doc, indent=2, ensure_ascii=False)))
        return 0
    if paused:
        say("PAUSED: no new files are taken (sisdropd resume)")
    say(f"queued: {len(queued)}")
    for r in queued[:QUEUED_SHOWN]:  # in the order they will be posted
        wait = f" (next try in {_duration(r.next_attempt - time.time())}: {r.last_error})" if r.next_attempt > time.time() else ""
        say(f"  {r.original_name}  {r.size or 0} bytes  waiting {_age(r.taken_at)}{wait}")
    if len(queued) > QUEUED_SHOWN:
        say(f"  ... and {len(queued) - QUEUED_SHOWN} more (sisdropd status --json lists every one)")
    if active:
        r = active[0]
        say(
            f"in flight: {r.original_name}  import {r.import_id or '?'}  {r.workflow_state or r.state}"
            f"  {r.progress or 0}%  running {_age(r.posted_at or r.taken_at)}"
        )
        if r.waiting_for is not None:
            say(
                f"  its post's answer was lost: waiting for import {r.waiting_for}, which Canvas lists without its"
                f" files yet, to show them or end (sisdropd status {r.waiting_for}; sisdropd discard {r.original_name})"
            )
        if r.last_error and r.next_attempt > time.time():
            say(f"  waiting to retry: {r.last_error}")
    else:
        say("in flight: none")
    for r in moving:
        command = (r.intent or {}).get("command", "a move")
        again = f", or run sisdropd {command} {r.original_name} again" if command in ("release", "discard", "retry") else ""
        say(f"moving: {r.original_name} ({command} half-done: the daemon finishes it at its next start{again})")
    if held:
        say(f"held: {len(held)} (sisdropd release NAME / discard NAME)")
        for r in held:
            say(f"  {r.stored_name}: {r.outcome_reason}")
    say(f"last {len(recent)} outcome(s):")
    for r in recent:
        counts = importer.counts_summary(r.sis_import) if r.sis_import else (r.outcome_reason or "")
        took = ""
        if r.posted_at and r.finished_at:
            try:
                t0 = datetime.fromisoformat(r.posted_at.replace("Z", "+00:00"))
                t1 = datetime.fromisoformat(r.finished_at.replace("Z", "+00:00"))
                took = f"  {_duration((t1 - t0).total_seconds())}"
            except ValueError:
                pass
        say(f"  {r.finished_at or '-'}  {r.state:<6} {r.original_name}  import {r.import_id or '-'}  {r.workflow_state or '-'}{took}  {counts}")
    return 0


def canvas_status(cfg: Config, token: str, import_id: int, *, as_json: bool = False) -> int:
    """Print one SIS import as Canvas reports it; 1 if Canvas does not know it."""
    # Imported here: the journal's view needs no HTTP, and requests takes a while to import.
    from sisdropd.canvas import CanvasError, NotFound, client_for

    c = cfg.canvas
    client = client_for(cfg, token, patience="command")
    try:
        imp = client.get_import(import_id, deadline=time.time() + c.timeout)
    except NotFound:
        say(f"import {import_id}: not found in account {c.account_id}")
        return 1
    except CanvasError as e:
        say(f"import {import_id}: cannot ask Canvas: {e.message}")
        return 1
    finally:
        client.close()
    if as_json:
        print(redact(json.dumps(imp, indent=2, ensure_ascii=False)))
        return 0
    say(f"import {imp.get('id')}: {imp.get('workflow_state')}  progress {imp.get('progress')}%")
    say(f"  created {imp.get('created_at')}  started {imp.get('started_at') or '-'}  ended {imp.get('ended_at') or '-'}")
    say(f"  {importer.counts_summary(imp)}")
    for att in imp.get("csv_attachments") or []:
        say(f"  file: {att.get('display_name')} ({att.get('size')} bytes)")
    for key in ("processing_errors", "processing_warnings"):
        for pair in (imp.get(key) or [])[:10]:
            say(f"  {key.split('_')[1][:-1]}: {' '.join(str(x) for x in pair if x)}")
    if (imp.get("errors_attachment") or {}).get("url"):
        say(f"  errors file: {imp['errors_attachment'].get('display_name')}")
    return 0
