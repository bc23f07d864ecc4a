"""Libraries that log through the standard ``logging`` (watchdog) reach the daemon's log as its
own lines: formatted, one line, redacted; and watchdog's harmless stop race is not an error."""

from __future__ import annotations

import io
import logging

from sisdropd import logs, watcher  # noqa: F401 - watcher installs its filter on import
from sisdropd.config import LogConfig
from tests.support import TOKEN


def test_a_library_warning_is_one_of_our_lines_and_the_stop_race_is_not_logged() -> None:
    out = io.StringIO()
    logs.setup(LogConfig(), stream=out)
    logs.add_secret(TOKEN)
    try:
        logging.getLogger("watchdog.observers.inotify_c").warning("Inotify queue overflowed; filesystem events were lost")
        logging.getLogger("watchdog.observers.inotify").error("InotifyEmitter.queue_events() called when the thread is inactive")
        logging.getLogger("urllib3.connectionpool").error("bad\nline with %s", TOKEN)
    finally:
        logs.setup(None)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert " WARNING " in lines[0] and lines[0].endswith(
        "watchdog.observers.inotify_c: Inotify queue overflowed; filesystem events were lost"
    ), lines
    assert " ERROR " in lines[1] and "bad\\nline with [REDACTED]" in lines[1] and TOKEN not in out.getvalue(), lines
    bridges = [h for h in logging.getLogger().handlers if type(h).__module__ == logs.__name__]
    assert len(bridges) == 1  # set up twice, one bridge
