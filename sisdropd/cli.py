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
from collections.abc import Sequence

from sisdropd import __version__
from sisdropd.commands import EXIT_OK, EXIT_USAGE, err
from sisdropd.config import ConfigError, TokenError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sisdropd",
        description="Watch a drop folder and import each SIS file into Canvas, once.",
    )
    p.add_argument("--version", action="version", version=f"sisdropd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, target: str, help: str, config: bool = True) -> argparse.ArgumentParser:
        """``target`` is "module" (its ``main``) or "module:function" under sisdropd.commands."""
        sp = sub.add_parser(name, help=help, description=help)
        if config:
            sp.add_argument("-c", "--config", metavar="FILE", help="config file (default: $SISDROPD_CONFIG, else /etc/sisdropd/sisdropd.toml)")
        sp.set_defaults(target=target)
        return sp

    sp = add("run", "run", "run the daemon in the foreground (or --detach)")
    sp.add_argument("--detach", action="store_true", help="daemonize (hosts without systemd)")
    sp.add_argument("--pidfile", metavar="PATH", help="with --detach: the pid file to lock")

    sp = add("submit", "submit", "validate, post and follow one file; the file stays where it is")
    sp.add_argument("file", metavar="FILE")
    sp.add_argument("--no-wait", action="store_true", help="post and print the import id, do not follow it")
    sp.add_argument("--json", action="store_true", help="print Canvas's final SIS import object as JSON")

    sp = add("status", "status", "queue, import in flight and last outcomes; or one import as Canvas reports it")
    sp.add_argument("id", nargs="?", type=int, metavar="ID", help="a Canvas SIS import id")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("--last", type=int, default=10, metavar="N", help="how many recent outcomes (default 10)")

    sp = add("validate", "validate", "the local pre-flight check alone, no network")
    sp.add_argument("files", nargs="+", metavar="FILE")
    sp.add_argument("--import-type", metavar="TYPE", help="judge as this import type (default: the config's, else instructure_csv)")

    add("check", "check", "check the config, folders, permissions and the token against Canvas")

    for name, help_ in (
        ("release", "a held file goes back to the queue, its counts accepted"),
        ("discard", "a held file goes to failed/ (\"discarded by operator\")"),
        ("retry", "a file in failed/ goes back to the queue; its old sidecar is kept"),
    ):
        sp = add(name, "control", help_)
        sp.add_argument("name", metavar="NAME", help="the original file name, or its name in held/ or failed/")
    add("pause", "control", "stop taking new files (an import in flight finishes)")
    add("resume", "control", "take new files again")
    add("abort", "control", "abort the import in flight in Canvas")

    sp = add("fake-canvas", "demo:fake_canvas", "the bundled Canvas SIS-import simulator", config=False)
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8900, help="port (default 8900; 0 picks a free one)")
    sp.add_argument("--token", default=None, help="the token it accepts (default: printed at start)")
    sp.add_argument("--import-seconds", type=float, default=None, help="how long each import runs")
    sp.add_argument(
        "--allow-remote", action="store_true",
        help="listen on a non-loopback --host (then the control endpoints need a random token it prints)",
    )

    sp = add("demo", "demo", "simulator + daemon on a temporary folder: watch files flow", config=False)
    sp.add_argument("--keep", action="store_true", help="keep the demo folder afterwards")
    return p


# One-shot commands whose process ends with them (see ``entry``).
QUICK = frozenset({"validate", "status", "submit"})


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
    args = build_parser().parse_args(argv)
    module, _, function = args.target.partition(":")
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
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
