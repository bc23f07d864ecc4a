"""Why sisdropd cannot start (or a command cannot go on), as one line and an exit status.

``cli.main`` (and ``commands.run`` for a detached daemon, which logs it too) prints
``str(error)`` as one line on stderr and exits with ``error.status``; no traceback. Any
module may raise these: they import nothing.

* ``StartupError`` (exit 2): a problem only an admin can fix (a key of the config, a
  folder, the log file, the journal). systemd does not restart on 2
  (``RestartPreventExitStatus=2``). The message names the key or file and what to do,
  e.g. ``log.file: cannot open /var/log/x.log (Permission denied): ...``.
* ``Busy`` (exit 1): a passing condition (another daemon holds the lock, the journal is
  busy). systemd restarts on 1, within the units' start limit.
"""

from __future__ import annotations


class StartupError(Exception):
    """Cannot go on until an admin fixes something; ``status`` 2. The text is one line."""

    status = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split("\n")))


class Busy(StartupError):
    """A passing condition: trying again later may work; ``status`` 1."""

    status = 1
