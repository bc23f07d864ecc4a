"""Records of the Canvas simulator: batches, files, outcome rules, and their JSON pieces.

Plain data shared by the store (:mod:`.store`), the runner (:mod:`.runner`) and the HTTP
side (:mod:`.http`): the workflow states (reference §5), Canvas's timestamp format, the option
keys echoed in the SisImport JSON (§2.1, §3) and the File object (§3).
"""

from __future__ import annotations

import re
import secrets
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sisdropd.simulator.content import Analysis, Message

SUCCESS = frozenset({"imported", "imported_with_messages"})
TERMINAL = SUCCESS | {"failed", "failed_with_messages", "aborted"}
RUNNING = frozenset({"importing", "cleanup_batch"})
ABORTABLE = frozenset({"initializing", "created", "importing", "cleanup_batch"})
WORKFLOW_STATES = frozenset(
    {
        "initializing",
        "created",
        "importing",
        "cleanup_batch",
        "imported",
        "imported_with_messages",
        "aborted",
        "failed",
        "failed_with_messages",
        "restoring",
        "partially_restored",
        "restored",
    }
)
# set_outcome states: a final state; "stuck" (stays created); "failed_early" (the job raises
# before it records the attachments: ``failed`` with data.error_message, nothing imported).
OUTCOME_STATES = TERMINAL | {"stuck", "failed_early"}
PROGRESS_STATES = frozenset({"queued", "running", "completed", "failed"})
_TRUE = {"true", "1", "yes", "on", "t", "y"}


def iso(t: float | None) -> str | None:
    """Epoch seconds as Canvas prints them (``2025-03-04T14:02:11Z``); None stays None."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> float | None:
    """ISO 8601 text as epoch seconds (naive means UTC); None if unparsable."""
    try:
        dt = datetime.fromisoformat(text.strip().replace(" ", "T"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def truthy(value: str | None) -> bool:
    """Rails' value_to_boolean for the values Canvas accepts."""
    return value is not None and value.strip().lower() in _TRUE


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(str(value).strip()) if value not in (None, "") else None
    except ValueError:
        return None


def term_key(term: str) -> str:
    """A term reference without its ``sis_term_id:`` prefix."""
    return term.removeprefix("sis_term_id:")


def build_options(params: dict[str, str]) -> dict[str, Any]:
    """The option keys of the SisImport JSON (§3) from the create parameters, unset = None."""
    multi = "multi_term_batch_mode" in params
    batch = truthy(params.get("batch_mode")) or multi
    term = params.get("batch_mode_term_id") if batch else None
    override = truthy(params.get("override_sis_stickiness"))
    ident = params.get("diffing_data_set_identifier") or None
    return {
        "batch_mode": True if batch else (False if "batch_mode" in params else None),
        "batch_mode_term_id": (int(term) if term and term.isdigit() else term) or None,
        "multi_term_batch_mode": True if multi else None,
        "override_sis_stickiness": True if override else None,
        "add_sis_stickiness": True
        if override and truthy(params.get("add_sis_stickiness"))
        else None,
        "update_sis_id_if_login_claimed": truthy(params.get("update_sis_id_if_login_claimed")),
        "clear_sis_stickiness": True
        if override and truthy(params.get("clear_sis_stickiness"))
        else None,
        "diffing_data_set_identifier": ident,
        "diffing_remaster": truthy(params.get("diffing_remaster_data_set")) if ident else None,
        "diffed_against_import_id": None,
        "diffing_drop_status": params.get("diffing_drop_status") or None,
        "diffing_user_remove_status": params.get("diffing_user_remove_status") or None,
        "skip_deletes": truthy(params.get("skip_deletes")),
        "change_threshold": _int_or_none(params.get("change_threshold")),
        "diff_row_count_threshold": _int_or_none(params.get("diff_row_count_threshold")),
    }


@dataclass
class SimFile:
    """A Canvas File the simulator serves at ``/files/<id>/download?verifier=...``."""

    id: int
    display_name: str
    path: Path
    size: int
    created: float
    verifier: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    uuid: str = field(default_factory=lambda: uuid.uuid4().hex)
    content_type: str = "text/csv"

    @property
    def filename(self) -> str:
        """Canvas stores the file name CGI-escaped; ``display_name`` stays readable."""
        return urllib.parse.quote_plus(self.display_name)

    def json(self, base: str) -> dict[str, Any]:
        """Canvas's File object, with a download URL under ``base``."""
        ts = iso(self.created)
        return {
            "id": self.id,
            "uuid": self.uuid,
            "folder_id": None,
            "display_name": self.display_name,
            "filename": self.filename,
            "upload_status": "success",
            "content-type": self.content_type,
            "url": f"{base}/files/{self.id}/download?download_frd=1&verifier={self.verifier}",
            "size": self.size,
            "created_at": ts,
            "updated_at": ts,
            "unlock_at": None,
            "locked": False,
            "hidden": False,
            "lock_at": None,
            "hidden_for_user": False,
            "thumbnail_url": None,
            "modified_at": ts,
            "mime_class": "file",
            "media_entry_id": None,
            "category": "uncategorized",
            "locked_for_user": False,
            "visibility_level": "inherit",
        }


def user_json(user_id: int, name: str) -> dict[str, Any]:
    """Canvas's short User object (the ``user`` of a SisImport, ``GET /users/self``)."""
    first, _, last = name.partition(" ")
    return {
        "id": user_id,
        "name": name,
        "sortable_name": f"{last}, {first}" if last else name,
        "short_name": name,
    }


@dataclass
class Timing:
    """How long things take in the simulated Canvas (seconds); read afresh at every step.

    ``import_seconds``: the run of one import from ``importing`` to its end, unpacking
    included (batch mode's clean-up takes half as long again).
    ``start_delay``: a created import waits at least this long before it may start.
    ``errors_attachment_delay``: the errors CSV appears this long after a batch ended.
    ``attachments_delay``: a started import stays ``importing`` without ``csv_attachments``
    (Canvas fetching and unpacking the upload) this long, or its whole run time if that is
    shorter (reference §0 fact 7, §9): for a long window, make the run longer too.
    ``restore_seconds``: how long a restore_states job runs.
    """

    import_seconds: float = 1.0
    start_delay: float = 0.0
    errors_attachment_delay: float = 0.3
    attachments_delay: float = 0.3
    restore_seconds: float = 0.5

    def update(self, **changes: float | None) -> None:
        """Set the named timings (None leaves one as it is); ValueError for a bad one."""
        for name, value in changes.items():
            if name not in self.__dataclass_fields__:
                raise ValueError(f"unknown timing {name!r}")
            if value is None:
                continue
            seconds = float(value)
            if not seconds >= 0:  # also refuses NaN
                raise ValueError(f"{name} must be a number of seconds >= 0")
            setattr(self, name, seconds)


@dataclass
class Outcome:
    """A :meth:`Store.set_outcome` rule: for uploads whose stored name matches ``pattern``,
    the final ``state`` (None: what the content gives), the run time ``seconds`` and the
    ``attachments_delay`` (None: the simulator's), and the ``error_message`` of a failure."""

    pattern: re.Pattern[str]
    state: str | None
    seconds: float | None = None
    attachments_delay: float | None = None
    error_message: str | None = None


@dataclass
class Progress:
    """A Canvas Progress object, here for a restore_states job (reference §4)."""

    id: int
    batch_id: int
    created: float
    created_mono: float
    options: dict[str, bool]
    prior_state: str
    fail: bool = False
    workflow_state: str = "queued"
    completion: float = 0.0
    message: str | None = None
    updated: float = 0.0

    def json(self, base: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "context_id": self.batch_id,
            "context_type": "SisBatch",
            "user_id": None,
            "tag": "sis_batch_state_restore",
            "completion": self.completion,
            "workflow_state": self.workflow_state,
            "created_at": iso(self.created),
            "updated_at": iso(self.updated or self.created),
            "message": self.message,
            "results": None,
            "url": f"{base}/api/v1/progress/{self.id}",
        }


@dataclass
class Batch:
    """One SIS import as the simulator records it (times are epoch seconds)."""

    id: int
    stored_name: str
    upload: Path
    dir: Path
    size: int
    kind: str
    params: dict[str, str]
    options: dict[str, Any]
    user: dict[str, Any]
    created: float
    created_mono: float
    updated: float
    workflow_state: str = "initializing"
    progress: int = 0
    started: float | None = None
    ended: float | None = None
    data: dict[str, Any] = field(default_factory=lambda: {"import_type": "instructure_csv"})
    csv_attachments: list[SimFile] = field(default_factory=list)
    errors_attachment: SimFile | None = None
    analysis: Analysis | None = None
    analysed: bool = False
    analysis_error: str | None = None
    forced: Outcome | None = None
    stuck: bool = False
    unpack_from: float = 0.0
    unpacked: bool = False
    run_seconds: float | None = None
    held: bool = False
    phase_start: float = 0.0
    phase_len: float = 0.0
    pending_final: str | None = None
    batch_plan: dict[str, Any] | None = None
    visible: frozenset[str] | None = None
    extra: list[Message] = field(default_factory=list)
    errors_due: float | None = None
    sha256: str | None = None
    processing_errors: list[list[Any]] = field(default_factory=list)
    processing_warnings: list[list[Any]] = field(default_factory=list)

    @property
    def user_id(self) -> int:
        return int(self.user["id"])

    @property
    def batch_mode(self) -> bool:
        return bool(self.options["batch_mode"])

    def touch(self) -> None:
        self.updated = time.time()
