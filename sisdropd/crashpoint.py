"""Named points where a test can have the daemon killed for real (SIGKILL, no cleanup), or
a command stopped (SIGSTOP) while a rival runs.

``crashpoint("posted")`` does nothing unless ``$SISDROPD_CRASH_AT`` names that point
(optionally ``posted:2`` for its second passage). The crash-safety tests use it to
put a SIGKILL exactly in the windows that matter (a post whose answer is not yet
journaled, a sidecar written but the file not yet moved), which random kills hit only
by luck. In production the variable is unset and each call is one dict lookup.
"""

from __future__ import annotations

import os
from collections import Counter

_passes: Counter[str] = Counter()

POINTS = (
    "claimed",  # renamed into processing/, not yet journaled
    "before_post",  # POSTING journaled, nothing sent
    "uploading",  # half of the file's bytes sent
    "posted",  # Canvas answered the post, the id not yet journaled
    "running",  # RUNNING journaled
    "decided",  # FINISHING journaled, nothing moved
    "sidecar",  # sidecar written, file not yet moved
    "moved",  # file moved, DONE/FAILED not yet journaled
)

# Points outside the worker's straight path (tested on their own).
MORE_POINTS = (
    "found",  # an operator's command found its record, nothing journaled yet
    "copied",  # across filesystems: the verified copy is in place, the source not yet unlinked
    "intent",  # a hold or an operator's command journaled its intent (MOVING), nothing moved
    "carried",  # the intent's move is done, its final state not yet journaled
)


def crashpoint(name: str) -> None:
    """SIGKILL this process if ``$SISDROPD_CRASH_AT`` is ``name`` (or ``name:N`` on pass N);
    SIGSTOP it if ``$SISDROPD_PAUSE_AT`` is ``name`` (a test then runs a rival, and SIGCONTs it)."""
    if os.environ.get("SISDROPD_PAUSE_AT") == name:
        import signal  # here: a test's hook; signal's enums cost every command's start-up

        os.kill(os.getpid(), signal.SIGSTOP)
    want = os.environ.get("SISDROPD_CRASH_AT")
    if not want:
        return
    point, _, nth = want.partition(":")
    if point != name:
        return
    _passes[name] += 1
    if _passes[name] == int(nth or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
