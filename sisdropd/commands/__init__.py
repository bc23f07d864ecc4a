"""The commands: one module per family, each with ``main(args) -> exit status``.

``cli`` parses the command line and imports only the module of the command that runs, so
``validate``, ``status`` and ``submit`` start without the daemon, watchdog or the
simulator. Exit statuses follow the interface: problems a user caused (bad config,
missing token, unreadable file) are one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from sisdropd.config import Config, load, read_token, resolve_path
from sisdropd.logs import add_secret, clean

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_GAVE_UP, EXIT_TOKEN = 0, 1, 2, 3, 4


def say(line: str = "") -> None:
    """One line of a command's output on stdout, cleaned of control characters and secrets."""
    print(clean(line), flush=True)


def err(msg: str) -> None:
    """One line on stderr, cleaned of control characters and secrets."""
    print(f"sisdropd: {clean(msg)}", file=sys.stderr)


def config_of(args: argparse.Namespace) -> Config:
    """The config ``-c`` names (else ``$SISDROPD_CONFIG``, else the system default).

    Raises ``ConfigError``; ``cli.main`` prints it.
    """
    return load(resolve_path(getattr(args, "config", None)))


def token_of(cfg: Config) -> str:
    """The Canvas token, registered as a secret before anything can log it. Raises ``TokenError``."""
    token, _ = read_token(cfg)
    add_secret(token)
    return token
