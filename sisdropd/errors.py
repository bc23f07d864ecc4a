"""Why sisdropd cannot start (or a command cannot go on), as one line and an exit status.

``cli.main`` (and ``commands.run`` for a detached daemon, which logs it too) prints
``str(error)`` as one line on stderr and exits with ``error.status``; no traceback. Any
module may raise these: they import nothing of sisdropd. ``escape`` lives here for the same
reason: the log and the config's messages both make text one visible line with it.

* ``StartupError`` (exit 2): a problem only an admin can fix (a key of the config, a
  folder, the log file, the journal). systemd does not restart on 2
  (``RestartPreventExitStatus=2``). The message names the key or file and what to do,
  e.g. ``log.file: cannot open /var/log/x.log (Permission denied): ...``.
* ``Busy`` (exit 1): a passing condition (another daemon holds the lock, the journal is
  busy). systemd restarts on 1, within the units' start limit.
"""

from __future__ import annotations

import re

# What a file name must not bring into a log line as it is: C0 and C1 controls (a newline
# forges a line; ESC, CSI U+009B and friends drive terminals), DEL, the Unicode line and
# paragraph separators, and the bidirectional controls (the overrides and embeddings
# U+202A-U+202E, the isolates U+2066-U+2069, the marks U+200E/U+200F and U+061C), which
# reorder how a line is shown: "users\u202ecsv.exe" would read as another name.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def escape(text: str) -> str:
    """Control and bidi characters (newlines included) as visible escapes (``\\n``,
    ``\\x9b``, ``\\u202e``), so one event stays one line and reads in its own order."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class StartupError(Exception):
    """Cannot go on until an admin fixes something; ``status`` 2. The text is one line."""

    status = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split("\n")))


class Busy(StartupError):
    """A passing condition: trying again later may work; ``status`` 1."""

    status = 1
