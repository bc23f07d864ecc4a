"""The life of a dropped file: every state it can be in, and every move allowed between them.

This is the one place that says what may happen to a file. ``journal.Journal.transition``
refuses any move that is not in ``ALLOWED``. Where the file is on disk follows from its
state: QUEUED, POSTING, RUNNING and FINISHING files are in processing/; DONE in done/;
FAILED in failed/; HELD in held/; a MOVING file is where its record's ``intent`` says it
comes from or goes to (``operator`` carries the intent out, and start-up finishes it).

Every transition names the state it expects (``journal.Journal.transition``'s ``expect``):
two writers (the daemon's threads, or the daemon and an operator's command) can never
both move one record.

Canvas's own ``workflow_state`` values are not ours: they live in ``importer``.
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
    HELD = "held"  # in held/, waiting for an operator (change guard, or a journal that was lost)
    MOVING = "moving"  # being moved as its ``intent`` says (a hold, release, discard or retry)
    LOST = "lost"  # the file vanished from under us; the record is closed


ALLOWED: dict[State, frozenset[State]] = {
    # MOVING: held by the change guard (its file goes to held/).
    State.QUEUED: frozenset({State.POSTING, State.FINISHING, State.MOVING, State.LOST}),
    # Back to QUEUED only once Canvas provably has no import of this post: it is not in
    # Canvas's list, or the body never reached its end (cut, or failed before it).
    # FINISHING and MOVING (to held/): a check run while the file was sent rejected it, or
    # the change guard held it, and the request was cut before its last bytes; MOVING also
    # when an operator discards a file that waits for a look-alike import to decide.
    State.POSTING: frozenset({State.RUNNING, State.QUEUED, State.FINISHING, State.MOVING, State.LOST}),
    State.RUNNING: frozenset({State.FINISHING, State.LOST}),
    State.FINISHING: frozenset({State.DONE, State.FAILED, State.LOST}),
    State.MOVING: frozenset({State.QUEUED, State.HELD, State.FAILED, State.LOST}),
    # An operator's release (to the queue) or discard (to failed/), through MOVING.
    State.HELD: frozenset({State.MOVING, State.LOST}),
    State.FAILED: frozenset({State.MOVING}),  # an operator's retry
    State.DONE: frozenset(),
    State.LOST: frozenset(),
}

#: States whose file is in processing/ and that the worker still owes an outcome.
OPEN = frozenset({State.QUEUED, State.POSTING, State.RUNNING, State.FINISHING})
#: The open states past the queue: the file in flight. At most one record is ACTIVE at a
#: time (one import at a time), and it is worked on before any QUEUED one.
ACTIVE = OPEN - {State.QUEUED}
#: States that end a record.
CLOSED = frozenset({State.DONE, State.FAILED, State.LOST})


class TransitionError(RuntimeError):
    """A move not in ``ALLOWED`` was asked for: a bug, never a user's doing."""


class Conflict(RuntimeError):
    """The record is not in the state (or does not hold the values) the writer expected:
    another writer moved it first. The loser changes nothing and looks again."""


def check(current: State, new: State) -> None:
    """Raise ``TransitionError`` unless ``current -> new`` is allowed."""
    if new not in ALLOWED[current]:
        raise TransitionError(f"{current} -> {new} is not an allowed transition")
