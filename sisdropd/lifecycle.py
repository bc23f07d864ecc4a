"""The life of a dropped file: every state it can be in, and every move allowed between them.

This is the one place that says what may happen to a file. ``journal.Journal.transition``
refuses any move that is not in ``ALLOWED``. Where the file is on disk follows from its
state: QUEUED, POSTING, RUNNING and FINISHING files are in processing/; DONE in done/;
FAILED in failed/; HELD in held/.

Canvas's own ``workflow_state`` values, and which folder each final one sends a file to,
are here too (``route``).
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    QUEUED = "queued"  # taken: in processing/, waiting for its turn
    POSTING = "posting"  # about to post / posted with no answer recorded: Canvas may have it
    RUNNING = "running"  # Canvas's import id is known; followed until its final state
    FINISHING = "finishing"  # the outcome is decided; moving the file, writing its sidecar
    DONE = "done"  # in done/ with its sidecar
    FAILED = "failed"  # in failed/ with its sidecar
    HELD = "held"  # in held/, waiting for an operator (change guard)
    LOST = "lost"  # the file vanished from under us; the record is closed


ALLOWED: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.POSTING, State.FINISHING, State.HELD, State.LOST}),
    # Back to QUEUED only once Canvas provably has no import of this post.
    State.POSTING: frozenset({State.RUNNING, State.QUEUED, State.FINISHING, State.LOST}),
    State.RUNNING: frozenset({State.FINISHING, State.LOST}),
    State.FINISHING: frozenset({State.DONE, State.FAILED, State.LOST}),
    State.HELD: frozenset({State.QUEUED, State.FINISHING, State.LOST}),
    State.FAILED: frozenset({State.QUEUED}),  # an operator's retry
    State.DONE: frozenset(),
    State.LOST: frozenset(),
}

#: States whose file is in processing/ and that the worker still owes an outcome.
OPEN = frozenset({State.QUEUED, State.POSTING, State.RUNNING, State.FINISHING})
#: States that end a record.
CLOSED = frozenset({State.DONE, State.FAILED, State.LOST})


class TransitionError(RuntimeError):
    """A move not in ``ALLOWED`` was asked for: a bug, never a user's doing."""


def check(current: State, new: State) -> None:
    """Raise ``TransitionError`` unless ``current -> new`` is allowed."""
    if new not in ALLOWED[current]:
        raise TransitionError(f"{current} -> {new} is not an allowed transition")


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
    """For a final ``workflow_state``: the state (DONE or FAILED) and the reason in words."""
    if workflow_state in FAILURE_STATES:
        return State.FAILED, _REASONS[workflow_state]
    if workflow_state in SUCCESS_STATES or workflow_state in RESTORED_STATES:
        return State.DONE, _REASONS[workflow_state]
    raise ValueError(f"not a final workflow_state: {workflow_state!r}")
