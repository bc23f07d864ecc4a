"""Start-up: reconcile processing/ and held/ with the journal after a stop or a crash.

Every step of a file's life is journaled before its effect, so what a crash can leave
behind is known and finished here, before the worker starts:

- a MOVING record (a hold, or an operator's release, discard or retry, journaled but not
  finished): its intent is carried out (``operator.unfinished``);
- a HELD record whose file is still in processing/ (a journal from before intents): it is
  parked in held/ again, and nothing is posted unseen;
- a file in processing/ with no record, taken while this journal existed (renamed in, not
  yet journaled): taken again (a name that is not UTF-8, left by an older version, is
  first renamed to its ``folders.readable`` form; an entry that cannot be looked at is
  named in the log and left there, and the start goes on);
- a file in processing/ with no record, taken *before* this journal existed (the journal
  was lost: absent, or new): never posted blind. It is matched against our Canvas user's
  recent imports (its upload name's ending and size, or a zip's members): followed if
  found, else held for an operator with the reason;
- an open record whose file is gone: a FINISHING one whose file already reached its
  folder is completed, any other is closed as LOST.

Names read from the journal are checked to be plain file names before a path is built.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

from loguru import logger

from sisdropd import importer, operator, preflight
from sisdropd.canvas import CanvasClient, CanvasError
from sisdropd.config import Config
from sisdropd.files import move, sha256_or_none
from sisdropd.folders import Folders, UnsafeName, inside, original_name, plain, readable, taken_at
from sisdropd.journal import FileRecord, Journal
from sisdropd.lifecycle import ALLOWED, State
from sisdropd.logs import event as log_event
from sisdropd.notify import Notifier

CLAIM_SLACK = 2.0  # seconds: a stored name's time has whole seconds


def recover(
    cfg: Config, journal: Journal, folders: Folders, client: CanvasClient | None = None,
    notifier: Notifier | None = None,
) -> None:
    """Bring the journal and the folders back into agreement (see the module's docstring).

    ``client`` is used to look for the files a lost journal knew (without it they are
    held); ``notifier`` gets a "held" alert for each such file.
    """
    operator.unfinished(cfg, journal, folders)
    for rec in journal.in_states({State.HELD}):
        if _safe(journal, rec) and operator.half_parked(folders, rec):
            operator.park(cfg, journal, folders, rec, rec.outcome_reason or "held", note="parked again", expect=State.HELD)
    known = {r.stored_name for r in journal.open_records()}
    created = journal.created()
    orphans: list[tuple[str, os.stat_result, float]] = []
    for entry in sorted(os.scandir(folders.processing), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.name in known:
            continue
        try:
            found = _unrecorded(folders, entry)
        except (OSError, UnicodeError) as e:  # this entry's trouble, not the journal's: the others go on
            log_event(readable(original_name(entry.name))).error(
                "found in processing/ with no record, but cannot take it: {}; it stays there and is looked at again at the next start",
                getattr(e, "strerror", None) or e,
            )
            continue
        if found is None:
            continue
        name, st = found
        if name in known:  # renamed onto a name already taken here (one file, two names after a crash)
            continue
        known.add(name)
        claimed = taken_at(name) or st.st_ctime
        if claimed < created - CLAIM_SLACK:
            orphans.append((name, st, claimed))
            continue
        journal.add(original_name=original_name(name), stored_name=name, size=st.st_size, mtime=st.st_mtime)
        log_event(original_name(name)).warning("found in processing/ with no record: taken again")
    if orphans:
        _journal_lost(cfg, journal, folders, client, notifier, orphans)
    for rec in journal.open_records():
        if not _safe(journal, rec):
            continue
        if os.path.lexists(operator.locate(folders, rec)):
            continue
        log = log_event(rec.original_name, rec.import_id)
        if rec.state == State.FINISHING and rec.outcome:
            dest = inside(folders.done if rec.outcome == State.DONE else folders.failed, rec.stored_name)
            if os.path.lexists(dest) or _special_carried(dest):
                journal.transition(rec.id, State(rec.outcome), "move completed after restart", expect=State.FINISHING)
                log.info("finished before the restart: {}/{}", rec.outcome, rec.stored_name)
                continue
        journal.transition(rec.id, State.LOST, "file vanished from processing/", expect=rec.state)
        log.error("the file vanished from processing/ while {}; its record is closed", rec.state)
    active, queued = journal.active(), journal.queued()
    if active or queued:
        logger.info(
            "resuming: {} file(s) queued{}",
            len(queued),
            "".join(f", {r.original_name} #{r.import_id or '?'} {r.state}" for r in active),
        )


def _unrecorded(folders: Folders, entry: os.DirEntry[str]) -> tuple[str, os.stat_result] | None:
    """A file in processing/ that no open record names: its name and lstat (None for a folder).

    A name that is not UTF-8 (left by a version that took such a name as it was; the
    journal cannot hold it) is first renamed to its ``readable`` form, its time and tag
    kept, so it is taken, or looked for in Canvas, like any other. Raises OSError when
    it cannot be looked at or renamed."""
    st = entry.stat(follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        return None
    name = readable(entry.name)
    if name != entry.name:
        src = folders.processing / entry.name
        # A copy left at the new name by a crash mid-move is the same bytes: finish the move.
        expect = (st.st_size, sha256_or_none(src)) if stat.S_ISREG(st.st_mode) else None
        move(src, folders.processing / name, expect=expect)
        log_event(original_name(name)).warning("its name in processing/ was not UTF-8: renamed to {}", name)
    return name, st


def _safe(journal: Journal, rec: FileRecord) -> bool:
    """False (and the record closed) when the journal names no plain file name: a forged row."""
    try:
        plain(rec.stored_name)
    except UnsafeName as e:
        log_event(rec.original_name, rec.import_id).error("{}; its record is closed", e)
        if State.LOST in ALLOWED[rec.state]:
            journal.transition(rec.id, State.LOST, "not a plain file name", expect=rec.state)
        return False
    return True


def _special_carried(dest: Path) -> bool:
    """A socket or device finished across filesystems leaves only its sidecar (no bytes to carry)."""
    try:
        with open(dest.with_name(dest.name + ".json"), "rb") as f:
            return json.load(f).get("file_type") in ("socket", "device")
    except (OSError, ValueError, AttributeError):
        return False


def _journal_lost(
    cfg: Config, journal: Journal, folders: Folders, client: CanvasClient | None, notifier: Notifier | None,
    orphans: list[tuple[str, os.stat_result, float]],
) -> None:
    """Files a lost journal knew: followed when Canvas has them, else held for an operator."""
    logger.warning(
        "the journal {} is newer than {} file(s) in processing/: the journal that knew them was lost; "
        "each is looked for in Canvas before anything is posted", journal.path, len(orphans),
    )
    trouble, user_id = None, None
    patience = 2 * cfg.canvas.timeout
    if client is None:
        trouble = "no Canvas client at start-up"
    else:
        try:
            user_id = int(client.whoami(deadline=time.time() + patience)["id"])
        except CanvasError as e:
            trouble = e.message
    for name, st, claimed in orphans:
        original = original_name(name)
        log = log_event(original)
        fid = journal.add(original_name=original, stored_name=name, size=st.st_size, mtime=st.st_mtime)
        rec = journal.get(fid)
        path = folders.processing / name
        report = preflight.check_path(path, name=original)
        members = [[m.basename, m.size] for m in report.members] if report.kind == "zip" else None
        verdict, imp = "absent", None
        if trouble is None and client is not None:
            try:
                verdict, imp = importer.find_posted(
                    client, upload=importer.upload_pattern(original), members=members, size=st.st_size,
                    post_started=claimed, post_user_id=user_id, exclude=journal.known_import_ids(),
                    deadline=time.time() + patience,
                )
            except CanvasError as e:
                trouble = e.message
        if verdict == "found" and imp is not None:
            journal.transition(
                fid, State.POSTING, "journal lost: found in Canvas", expect=State.QUEUED, post_started=claimed,
                post_user_id=user_id, members=members, sha256=report.sha256 or sha256_or_none(path), size=report.size,
            )
            journal.transition(
                fid, State.RUNNING, "found in Canvas's list (journal lost)", expect=State.POSTING, import_id=int(imp["id"]),
                workflow_state=imp.get("workflow_state"), progress=imp.get("progress"), posted_at=imp.get("created_at"),
            )
            log.warning("found in processing/ after the journal was lost; Canvas has it as import {}: following it, not posting it again", imp["id"])
            continue
        if trouble is not None:
            why = f"Canvas could not be asked ({trouble})"
        elif verdict == "waiting" and imp is not None:
            why = f"Canvas lists import {imp['id']} ({imp.get('workflow_state')}) without its files yet, which may be it"
        else:
            why = f"Canvas shows no import of it by our user since {importer.iso(claimed - importer.CLOCK_SKEW)}"
        reason = (
            f"held: the journal was lost while this file was in processing/, so it may have been posted already; {why}. "
            f"Look in Canvas, then `sisdropd release {original}` posts it, `sisdropd discard {original}` sends it to failed/"
        )
        rec = operator.park(cfg, journal, folders, rec, reason, note="journal lost", size=st.st_size)
        log.error("{}", reason)
        operator.alert_held(folders, rec, reason, notifier)
