"""The ``sisdropd`` command line: the parser and the dispatch. No logic here.

Each command is ``sisdropd.commands.<module>.<function>(args)``, imported only when that
command runs: ``validate``, ``status`` and ``submit`` never load the daemon, watchdog or
the simulator. Exit statuses follow ../shared/interface.md; a problem a user caused (bad
config, missing token) is one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sisdropd import __version__
from sisdropd.commands import EXIT_OK, EXIT_USAGE, err
from sisdropd.config import ConfigError, TokenError
from sisdropd.errors import StartupError

EPILOG = """\
exit statuses:
  0  done (run: stopped by SIGTERM/SIGINT; submit: imported)
  1  a failure or a passing condition: an import failed, a file was rejected, nothing to
     do; run: another daemon holds the lock or the journal is busy (systemd retries)
  2  usage, config or set-up: a bad key, folder, log file or journal, no token, the
     wrong user for a command that writes state (systemd does not restart on 2)
  3  gave up waiting, or Canvas unreachable (submit, restore, abort --all-pending)
  4  Canvas rejected the token (submit)

environment:
  SISDROPD_CONFIG         the config file when -c is not given (else /etc/sisdropd/sisdropd.toml)
  SISDROPD_TOKEN          the Canvas API token (first choice)
  CREDENTIALS_DIRECTORY   systemd's LoadCredential= folder: canvas-token in it (second choice;
                          then [canvas] token_file)
  HTTPS_PROXY, HTTP_PROXY, NO_PROXY (any case)
                          used for a Canvas that is not on this host, unless [canvas] proxy is set
"""


CONFIG_HELP = "config file (default: $SISDROPD_CONFIG, else /etc/sisdropd/sisdropd.toml)"
Arguments = Callable[[argparse.ArgumentParser], object]  # adds a command's own arguments


def _none(sp: argparse.ArgumentParser) -> None:
    """A command without arguments of its own."""


def _run(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--detach", action="store_true", help="daemonize (hosts without systemd)")
    sp.add_argument("--pidfile", metavar="PATH", help="with --detach: the pid file to lock")


def _submit(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("file", metavar="FILE")
    sp.add_argument("--no-wait", action="store_true", help="post and print the import id, do not follow it")
    sp.add_argument("--json", action="store_true", help=(
        "stdout: Canvas's SIS import object as last seen (final, once followed) as JSON alone, or "
        '{"id": null, "workflow_state": null, "error": ...} when there is none; the words go to stderr'
    ))


def _status(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("id", nargs="?", type=int, metavar="ID", help="a Canvas SIS import id")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("--last", type=_count, default=10, metavar="N", help="how many recent outcomes (default 10)")


def _count(text: str) -> int:
    """A whole number 1 or more (``--last -3`` listed every outcome: SQLite's LIMIT -3)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {n}")
    return n


def _validate(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("files", nargs="+", metavar="FILE")
    sp.add_argument("--import-type", metavar="TYPE", help="judge as this import type (default: the config's, else instructure_csv)")


def _held_or_failed(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("name", metavar="NAME", help="the original file name, or its name in held/ or failed/")


def _abort(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("name", metavar="NAME", nargs="?", help="a file in flight, or in failed/ after a timeout (default: the import in flight)")
    sp.add_argument(
        "--all-pending", action="store_true",
        help="pause the daemon, list the account's pending imports (other integrations' too) and abort them all",
    )
    sp.add_argument("--yes", action="store_true", help="with --all-pending: do not ask (needed without a terminal)")


def _restore(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("id", type=int, metavar="ID", help="the Canvas SIS import id")
    only = sp.add_mutually_exclusive_group()
    only.add_argument("--undelete-only", action="store_true", help="only restore what the import deleted")
    only.add_argument("--unconclude-only", action="store_true", help="only restore what the import concluded")
    sp.add_argument("--batch-mode", action="store_true", help="only undo the batch-mode deletions")


def _fake_canvas(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8900, help="port (default 8900; 0 picks a free one)")
    sp.add_argument("--token", default=None, help="the token it accepts (default: printed at start)")
    sp.add_argument("--import-seconds", type=float, default=None, help="how long each import runs")
    sp.add_argument(
        "--allow-remote", action="store_true",
        help="listen on a non-loopback --host (then the control endpoints need a random token it prints)",
    )


def _demo(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--keep", action="store_true", help="keep the demo folder afterwards")


# Each command: name, target ("module" for its main, or "module:function", under
# sisdropd.commands), help, whether it takes -c, and its own arguments; in --help's order.
COMMANDS: tuple[tuple[str, str, str, bool, Arguments], ...] = (
    ("run", "run", "run the daemon in the foreground (or --detach)", True, _run),
    ("submit", "submit", "validate, post and follow one file; the file stays where it is", True, _submit),
    ("status", "status", "queue, import in flight and last outcomes; or one import as Canvas reports it", True, _status),
    ("validate", "validate", "the local pre-flight check alone, no network", True, _validate),
    ("check", "check", "check the config, folders, permissions and the token against Canvas", True, _none),
    ("release", "control", "a held file goes back to the queue, its counts accepted", True, _held_or_failed),
    ("discard", "control", 'a held file goes to failed/ ("discarded by operator")', True, _held_or_failed),
    ("retry", "control", "a file in failed/ goes back to the queue; its old sidecar is kept", True, _held_or_failed),
    ("pause", "control", "stop taking new files (an import in flight finishes)", True, _none),
    ("resume", "control", "take new files again", True, _none),
    (
        "abort", "undo:abort",
        "abort the import in flight in Canvas, or the one a file's timeout left running; or every pending import (--all-pending)",
        True, _abort,
    ),
    ("restore", "undo:restore", "undo an import in Canvas (restore_states) and follow it to the end", True, _restore),
    ("fake-canvas", "demo:fake_canvas", "the bundled Canvas SIS-import simulator", False, _fake_canvas),
    ("demo", "demo", "simulator + daemon on a temporary folder: watch files flow", False, _demo),
)
NAMES = frozenset(c[0] for c in COMMANDS)


class CommandParser(argparse.ArgumentParser):
    """A command's own parser: an argument it does not know is its usage error.

    argparse hands a subparser's leftovers to the top-level parser, whose error shows
    the top-level usage (``sisdropd [-h] [--version] [-c FILE] COMMAND ...``): no help to
    someone who typed ``sisdropd submit a.csv b.csv``. Here the command's parser says it,
    with the command's usage line.
    """

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        parsed, extra = super().parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed, extra


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with ``only``, one that knows that command alone.

    ``main`` passes ``only`` when the command line starts with the command: everything
    after it is that command's, so its parser alone parses it exactly as the whole one
    would (its ``--help`` included). Building every command's parser costs about 2 ms of
    a quick command's start-up (argparse looks up a translation of each help text).
    """
    p = argparse.ArgumentParser(
        prog="sisdropd",
        description="Watch a drop folder and import each SIS file into Canvas, once.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"sisdropd {__version__}")
    # Also after the command; there it wins. Its own dest: a subcommand's default (None)
    # would otherwise overwrite a value given here.
    p.add_argument("-c", "--config", dest="global_config", metavar="FILE", help="config file, for every command (default: $SISDROPD_CONFIG, else /etc/sisdropd/sisdropd.toml)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)
    for name, target, help_, config, arguments in COMMANDS:
        if only is not None and name != only:
            continue
        sp = sub.add_parser(name, help=help_, description=help_)
        if config:
            sp.add_argument("-c", "--config", metavar="FILE", help=CONFIG_HELP)
        sp.set_defaults(target=target)
        arguments(sp)
    return p


# One-shot commands whose process ends with them (see ``entry``); they never load loguru.
QUICK = frozenset({"validate", "status", "submit"})
# Commands that set up their logging themselves; every other one logs warnings and errors
# alone (``linelog.one_shot``).
OWN_LOGGING = frozenset({"run", "demo", "fake-canvas"}) | QUICK


def entry() -> None:
    """The console script and ``python -m sisdropd``: ``main``, then the process's end.

    After a quick command the process ends as soon as Python has run its exit handlers
    and joined its threads (``_end_now``): the orderly teardown of the 400-odd modules
    ``submit`` imports that would follow takes about 30 ms, a fifth of the command, and
    frees nothing that outlives the process.
    """
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    code = main()
    if command in QUICK:
        atexit.register(_end_now, code)  # registered first of all: called last
    raise SystemExit(code)


def _end_now(code: int) -> None:
    """The last exit handler: flush the output and end the process (``os._exit``)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return  # a closed pipe: the ordinary way, which says so
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    # Before anything is made: every file any command creates (sidecars, errors files, the
    # journal and its -wal/-shm, the log, the lock, the pause flag) is 0640 at most and
    # every folder 0750, whatever umask the shell or cron had (issue 12, point 6).
    os.umask(0o027)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv and argv[0] in NAMES else None).parse_args(argv)
    if hasattr(args, "config"):
        args.config = args.config or args.global_config
    module, _, function = args.target.partition(":")
    if args.command not in OWN_LOGGING:
        from sisdropd import linelog  # here: the quick commands' start-up does without it

        linelog.one_shot()
    try:
        command = getattr(importlib.import_module(f"sisdropd.commands.{module}"), function or "main")
        return int(command(args))
    except ConfigError as e:
        for problem in e.problems:
            err(f"config: {problem}")
        return EXIT_USAGE
    except TokenError as e:
        err(f"token: {e}")
        return EXIT_USAGE
    except StartupError as e:
        err(str(e))
        return e.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:
        # A journal that is not one (corrupt): one line, exit 2. Looked up lazily: the
        # journal (and sqlite3) is loaded only by the commands that use it.
        journal = sys.modules.get("sisdropd.journal")
        if journal is not None and isinstance(e, journal.JournalError):
            err(str(e))
            return EXIT_USAGE
        raise
