"""How a file's life ends: its final state and reason decided, then the file finished.

``decide`` journals Canvas's final answer (FINISHING, with ``importer.verdict``'s outcome
and reason); ``fail`` journals any other way to failed/ (rejected, refused, timeout...).
Neither moves anything: ``Finisher.finish`` does, for a FINISHING record, in an order a
crash can resume at any instant: Canvas's errors file, the sidecar, the move into done/
or failed/, then DONE or FAILED in the journal. After that come the data set's row counts
(the change guard's memory), the outcome's log line and its alerts.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from sisdropd import __version__, guard, importer
from sisdropd.canvas import Backoff, CanvasClient, CanvasError
from sisdropd.config import Config
from sisdropd.crashpoint import crashpoint
from sisdropd.files import MoveConflict, move, write_atomic
from sisdropd.folders import Folders, inside
from sisdropd.journal import FileRecord, Journal, utcnow
from sisdropd.lifecycle import State
from sisdropd.logs import event as log_event
from sisdropd.notify import Notifier


def decide(journal: Journal, rec: FileRecord, imp: dict[str, Any], extra: str = "") -> None:
    """RUNNING -> FINISHING for an import Canvas has finished: done/ or failed/, and why.

    ``extra`` is added to the reason. Logs Canvas's errors and warnings.
    """
    state = str(imp.get("workflow_state"))
    dest, reason = importer.verdict(imp)
    journal.transition(
        rec.id, State.FINISHING, state, expect=State.RUNNING, outcome=str(dest), outcome_reason=reason + extra,
        sis_import=imp, workflow_state=state, progress=imp.get("progress"), finished_at=utcnow(),
    )
    importer.canvas_messages(imp, log_event(rec.original_name, rec.import_id))
    crashpoint("decided")


def fail(journal: Journal, file_id: int, note: str, reason: str, *, expect: State, **fields: Any) -> None:
    """``expect`` -> FINISHING on the way to failed/, with ``reason`` for the sidecar (the caller logs)."""
    journal.transition(
        file_id, State.FINISHING, note, expect=expect, outcome="failed", outcome_reason=reason, finished_at=utcnow(), **fields
    )


def file_type(path: Path) -> str | None:
    """What a non-regular file at ``path`` is ("fifo", "socket", "symlink", "device"), else None.

    A sidecar says it: across filesystems such a file is not copied (it holds no bytes).
    """
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    for test, kind in ((stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"), (stat.S_ISLNK, "symlink"), (stat.S_ISDIR, "directory")):
        if test(mode):
            return kind
    return "device"


def sidecar(cfg: Config, rec: FileRecord, errors_file: str | None, *, file_type: str | None = None) -> bytes:
    """The ``<name>.json`` written beside a finished (or held) file: the contract's point 6.

    ``file_type`` names a file that is not a regular one (a FIFO, a socket...).
    """
    doc = {
        "original_name": rec.original_name,
        "stored_name": rec.stored_name,
        "size": rec.size,
        "sha256": rec.sha256,
        "import_id": rec.import_id,
        "workflow_state": rec.workflow_state,
        "outcome": rec.outcome,
        "reason": rec.outcome_reason,
        "problems": rec.problems or [],
        "taken_at": rec.taken_at,
        "posted_at": rec.posted_at,
        "finished_at": rec.finished_at or utcnow(),
        "upload_name": rec.upload_name,
        "import_params": rec.import_params if rec.import_params is not None else cfg.params_for(rec.original_name),
        "guard": rec.guard,
        "local_counts": rec.counts,
        "canvas_counts": ((rec.sis_import or {}).get("data") or {}).get("counts"),
        "errors_file": errors_file,
        "canvas_url": cfg.canvas.base_url,
        "sisdropd_version": __version__,
        "sis_import": rec.sis_import,
    }
    if file_type:
        doc["file_type"] = file_type
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


class Finisher:
    """Finishes FINISHING records: the worker's last step for every file."""

    def __init__(
        self, cfg: Config, journal: Journal, client: CanvasClient, folders: Folders, notifier: Notifier | None = None
    ) -> None:
        self.cfg = cfg
        self.journal = journal
        self.client = client
        self.folders = folders
        self.notifier = notifier
        self.backoff = Backoff(cfg.canvas.retry_initial, cfg.canvas.retry_max)  # a full disk, a bad folder
        self._conflicts: set[int] = set()  # records whose two copies were alerted

    def finish(self, rec: FileRecord, src: Path) -> None:
        """Move the file at ``src`` into done/ or failed/ as ``rec.outcome`` says, with its sidecar.

        Idempotent (a restart resumes it). A file gone from ``src`` closes the record as
        LOST; a move that fails (disk full, a folder that cannot be written) keeps the file
        where it is and sets ``next_attempt``. A separate file already at the destination
        that is not verifiably this one (size and SHA-256 of the journal) keeps both: an
        error line and one "blocked" alert name them, and the move is tried again later.
        """
        log = log_event(rec.original_name, rec.import_id)
        dest_state = State(rec.outcome or "failed")
        dest_dir = self.folders.done if dest_state == State.DONE else self.folders.failed
        dst = inside(dest_dir, rec.stored_name)
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
            errors_file = rec.errors_file or self._save_errors_file(rec, dest_dir)
            write_atomic(inside(dest_dir, rec.stored_name, ".json"), sidecar(self.cfg, rec, errors_file, file_type=file_type(src)))
            crashpoint("sidecar")
            move(src, dst, expect=(rec.size, rec.sha256))
            crashpoint("moved")
        except FileNotFoundError:
            if not os.path.lexists(dst):
                self.journal.transition(rec.id, State.LOST, "vanished while finishing", expect=State.FINISHING)
                log.error("the file vanished from processing/ before it could be moved; record closed")
                return
        except MoveConflict as e:
            delay = self.backoff.next()
            log.error("cannot move the file into {}/: {}: remove the wrong one and the move completes (trying again in {:.0f}s)", dest_state, e.strerror, delay)
            self.journal.update(rec.id, expect=State.FINISHING, next_attempt=time.time() + delay, last_error=str(e.strerror)[:500])
            if self.notifier is not None and rec.id not in self._conflicts:
                self._conflicts.add(rec.id)
                self.notifier.send("blocked", {
                    "file": rec.original_name, "import_id": rec.import_id, "state": rec.workflow_state,
                    "reason": f"two different files: {e.src} and {e.dst} ({e.why}); both kept, the queue waits",
                    "paths": [str(e.src), str(e.dst)],
                })
            return
        except OSError as e:
            delay = self.backoff.next()
            log.error("cannot move the file into {}/ ({}): it stays in processing/, retrying in {:.0f}s", dest_state, e.strerror or e, delay)
            self.journal.update(rec.id, expect=State.FINISHING, next_attempt=time.time() + delay, last_error=str(e)[:500])
            return
        self.backoff.reset()
        rec = self.journal.transition(rec.id, dest_state, "moved", expect=State.FINISHING, errors_file=errors_file)
        if dest_state == State.DONE and rec.counts:
            params = rec.import_params or self.cfg.params_for(rec.original_name)
            self.journal.set_dataset_counts(guard.dataset_key(self.cfg.guard, rec.original_name, params), rec.counts, rec.id)
        took = ""
        if rec.post_started and rec.sis_import:
            took = f" in {time.time() - rec.post_started:.1f}s"
        summary = importer.counts_summary(rec.sis_import) if rec.sis_import else ""
        line = f"{rec.workflow_state or 'not imported'}{took}: {rec.outcome_reason}"
        line += f" ({summary})" if summary else ""
        line += f" -> {dest_state}/{rec.stored_name}"
        if dest_state == State.DONE:
            log.success("{}", line)
        else:
            log.error("{}", line)
        self._alert(rec, dest_state, dest_dir)

    def _alert(self, rec: FileRecord, dest_state: State, dest_dir: Path) -> None:
        if self.notifier is None:
            return
        imp = rec.sis_import or {}
        counts = (imp.get("data") or {}).get("counts") or {}
        # Canvas's row messages name students: the notifier sends them only on request.
        rows = {"errors": imp.get("processing_errors") or [], "warnings": imp.get("processing_warnings") or []}
        payload = {
            "file": rec.original_name,
            "import_id": rec.import_id,
            "state": rec.workflow_state,
            "reason": rec.outcome_reason,
            "sidecar": str(inside(dest_dir, rec.stored_name, ".json")),
            "path": str(inside(dest_dir, rec.stored_name)),
            "counts": counts,
        }
        if dest_state == State.FAILED:
            self.notifier.send("failed", payload, rows=rows)
            return
        self.notifier.send("done", payload, rows=rows)
        if counts.get("warning_count") or counts.get("error_count") or rec.workflow_state == "imported_with_messages":
            self.notifier.send("warnings", payload, rows=rows)

    def _save_errors_file(self, rec: FileRecord, dest_dir: Path) -> str | None:
        """Canvas's errors file beside the file, if Canvas offers one; None when it could not be saved."""
        att = (rec.sis_import or {}).get("errors_attachment") or {}
        if not att.get("url") or rec.import_id is None:
            return None
        path = inside(dest_dir, rec.stored_name, ".errors.csv")
        log = log_event(rec.original_name, rec.import_id)
        try:
            # Asked again of Canvas: the stored URL has no verifier (canvas.strip_verifiers).
            if self.client.download_errors_file(rec.import_id, path) is None:
                return None
        except CanvasError as e:
            log.warning("could not save Canvas's errors file: {}", e.message)
            return None
        except OSError as e:  # never let the errors file keep the import's own file waiting
            log.warning("could not save Canvas's errors file: {}", e.strerror or e)
            return None
        self.journal.update(rec.id, errors_file=path.name)
        return path.name
