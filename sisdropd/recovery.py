"""Start-up: reconcile processing/ and held/ with the journal after a stop or a crash.

Every step of a file's life is journaled before its effect, so what a crash can leave
behind is known and finished here, before the worker starts:

- a HELD record whose file is still in processing/ (a hold journaled but not moved, or a
  release moved back but not journaled: the two look alike) is parked in held/ again; an
  operator's release is asked again, and nothing is posted unseen;
- a file in processing/ that a FAILED record (or a HELD one whose file is in held/ as
  well) names by its stored name: a retry (or a release) moved it back and stopped before
  journaling it; it is requeued;
- any other file in processing/ with no record (renamed in, not yet journaled): taken again;
- an open record whose file is gone from processing/: a FINISHING one whose file already
  reached its folder is completed, any other is closed as LOST.
"""

from __future__ import annotations

import os
import stat

from loguru import logger

from sisdropd import operator
from sisdropd.config import Config
from sisdropd.folders import Folders, original_name
from sisdropd.journal import Journal
from sisdropd.lifecycle import State
from sisdropd.logs import event as log_event


def recover(cfg: Config, journal: Journal, folders: Folders) -> None:
    """Bring the journal and the folders back into agreement (see the module's docstring)."""
    records = journal.open_records()
    known = {r.stored_name for r in records}
    proc = folders.processing
    for rec in journal.in_states({State.HELD}):
        if operator.half_parked(folders, rec):
            operator.park(cfg, folders, rec)
            known.add(rec.stored_name)
    for entry in sorted(os.scandir(proc), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.name in known:
            continue
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            continue
        back = journal.find_by_name(entry.name, {State.HELD, State.FAILED})
        if back:
            operator.complete_requeue(journal, back[0])
            continue
        journal.add(original_name=original_name(entry.name), stored_name=entry.name, size=st.st_size, mtime=st.st_mtime)
        log_event(original_name(entry.name)).warning("found in processing/ with no record: taken again")
    for rec in journal.open_records():
        if os.path.lexists(proc / rec.stored_name):
            continue
        log = log_event(rec.original_name, rec.import_id)
        if rec.state == State.FINISHING and rec.outcome:
            dest = (folders.done if rec.outcome == State.DONE else folders.failed) / rec.stored_name
            if os.path.lexists(dest):
                journal.transition(rec.id, State(rec.outcome), "move completed after restart")
                log.info("finished before the restart: {}/{}", rec.outcome, rec.stored_name)
                continue
        journal.transition(rec.id, State.LOST, "file vanished from processing/")
        log.error("the file vanished from processing/ while {}; its record is closed", rec.state)
    active, queued = journal.active(), journal.queued()
    if active or queued:
        logger.info(
            "resuming: {} file(s) queued{}",
            len(queued),
            "".join(f", {r.original_name} #{r.import_id or '?'} {r.state}" for r in active),
        )

