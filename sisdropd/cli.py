"""The ``sisdropd`` command: parse, load the config, build the objects, run. No logic here.

Exit statuses follow ../shared/interface.md. Problems a user caused (bad config, missing
token, unreadable file) are one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from sisdropd import __version__
from sisdropd.config import Config, ConfigError, TokenError, load, read_token, resolve_path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_GAVE_UP, EXIT_TOKEN = 0, 1, 2, 3, 4


def _err(msg: str) -> None:
    from sisdropd.logs import clean

    print(f"sisdropd: {clean(msg)}", file=sys.stderr)


def _fatal(msg: str, detached: bool) -> None:
    """A start-up failure: on stderr, and in the log file when stderr is gone (detached)."""
    if detached:
        from loguru import logger

        logger.error("{}", msg)
    _err(msg)


def _config(args: argparse.Namespace) -> Config:
    return load(resolve_path(getattr(args, "config", None)))


def _token(cfg: Config) -> str:
    from sisdropd.logs import add_secret

    token, _ = read_token(cfg)
    add_secret(token)
    return token


def cmd_run(args: argparse.Namespace) -> int:
    from sisdropd import logs
    from sisdropd.daemon import AlreadyRunning, Daemon

    cfg = _config(args)
    token = _token(cfg)
    if args.detach and not args.pidfile:
        _err("--detach needs --pidfile PATH")
        return EXIT_USAGE
    if args.detach:
        # Refuse here, on the terminal that asked, what would make the detached child exit.
        from sisdropd.daemon import AlreadyRunning, lock, make_folders

        try:
            lock(make_folders(cfg)["state_dir"]).close()
        except AlreadyRunning as e:
            _err(str(e))
            return EXIT_FAILED
        except OSError as e:
            _err(f"cannot prepare the folders: {e.strerror or e}{f': {e.filename}' if e.filename else ''}")
            return EXIT_USAGE
        import dataclasses

        from sisdropd.detach import detach

        detach(cfg, args.pidfile)
        if not cfg.log.file:
            log_file = str(cfg.folders.path("state_dir") / "sisdropd.log")
            cfg = dataclasses.replace(cfg, log=dataclasses.replace(cfg.log, file=log_file))
    logs.setup(cfg.log)
    try:
        daemon = Daemon(cfg, token)
    except AlreadyRunning as e:
        _fatal(str(e), args.detach)
        return EXIT_FAILED
    except OSError as e:
        _fatal(f"cannot prepare the folders: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", args.detach)
        return EXIT_USAGE
    daemon.install_signals()
    code = daemon.run()
    if daemon.worker.is_alive():  # stuck in a blocking call: the journal has its place
        sys.stderr.flush()
        os._exit(code)
    return code


def cmd_submit(args: argparse.Namespace) -> int:
    from sisdropd import logs
    from sisdropd.submit import submit

    cfg = _config(args)
    token = _token(cfg)
    logs.setup(cfg.log)
    return submit(cfg, token, Path(args.file), wait=not args.no_wait, as_json=args.json)


def cmd_status(args: argparse.Namespace) -> int:
    from sisdropd import status

    cfg = _config(args)
    if args.id is not None:
        return status.canvas_status(cfg, _token(cfg), args.id, as_json=args.json)
    return status.journal_status(cfg, as_json=args.json, limit=args.last)


def cmd_validate(args: argparse.Namespace) -> int:
    from sisdropd.status import validate_files

    import_type, extensions = args.import_type, None
    path = resolve_path(args.config)
    if args.config or path.exists():
        cfg = load(path)
        import_type = import_type or cfg.import_type
        extensions = cfg.watch.extensions
    return validate_files([Path(f) for f in args.files], import_type or "instructure_csv", extensions)


def cmd_check(args: argparse.Namespace) -> int:
    from sisdropd.status import check

    return check(resolve_path(args.config))


def cmd_fake_canvas(args: argparse.Namespace) -> int:
    from sisdropd import simulator as fakecanvas

    argv = ["--host", args.host, "--port", str(args.port)]
    if args.token:
        argv += ["--token", args.token]
    if args.import_seconds is not None:
        argv += ["--import-seconds", str(args.import_seconds)]
    return fakecanvas.main(argv)


def cmd_demo(args: argparse.Namespace) -> int:
    from sisdropd.demo import demo

    return demo(keep=args.keep)


def cmd_control(args: argparse.Namespace) -> int:
    from sisdropd import control

    cfg = _config(args)
    c = args.command
    if c in ("release", "discard", "retry"):
        return int(getattr(control, c)(cfg, args.name))
    if c in ("pause", "resume"):
        return control.pause(cfg, c == "pause")
    return control.abort(cfg, _token(cfg))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sisdropd",
        description="Watch a drop folder and import each SIS file into Canvas, once.",
    )
    p.add_argument("--version", action="version", version=f"sisdropd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str, config: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        if config:
            sp.add_argument("-c", "--config", metavar="FILE", help="config file (default: $SISDROPD_CONFIG, else /etc/sisdropd/sisdropd.toml)")
        sp.set_defaults(func=func)
        return sp

    sp = add("run", cmd_run, "run the daemon in the foreground (or --detach)")
    sp.add_argument("--detach", action="store_true", help="daemonize (hosts without systemd)")
    sp.add_argument("--pidfile", metavar="PATH", help="with --detach: the pid file to lock")

    sp = add("submit", cmd_submit, "validate, post and follow one file; the file stays where it is")
    sp.add_argument("file", metavar="FILE")
    sp.add_argument("--no-wait", action="store_true", help="post and print the import id, do not follow it")
    sp.add_argument("--json", action="store_true", help="print Canvas's final SIS import object as JSON")

    sp = add("status", cmd_status, "queue, import in flight and last outcomes; or one import as Canvas reports it")
    sp.add_argument("id", nargs="?", type=int, metavar="ID", help="a Canvas SIS import id")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("--last", type=int, default=10, metavar="N", help="how many recent outcomes (default 10)")

    sp = add("validate", cmd_validate, "the local pre-flight check alone, no network")
    sp.add_argument("files", nargs="+", metavar="FILE")
    sp.add_argument("--import-type", metavar="TYPE", help="judge as this import type (default: the config's, else instructure_csv)")

    add("check", cmd_check, "check the config, folders, permissions and the token against Canvas")

    for name, help_ in (
        ("release", "a held file goes back to the queue, its counts accepted"),
        ("discard", "a held file goes to failed/ (\"discarded by operator\")"),
        ("retry", "a file in failed/ goes back to the queue; its old sidecar is kept"),
    ):
        sp = add(name, cmd_control, help_)
        sp.add_argument("name", metavar="NAME", help="the original file name, or its name in held/ or failed/")
    add("pause", cmd_control, "stop taking new files (an import in flight finishes)")
    add("resume", cmd_control, "take new files again")
    add("abort", cmd_control, "abort the import in flight in Canvas")

    sp = add("fake-canvas", cmd_fake_canvas, "the bundled Canvas SIS-import simulator", config=False)
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8900, help="port (default 8900; 0 picks a free one)")
    sp.add_argument("--token", default=None, help="the token it accepts (default: printed at start)")
    sp.add_argument("--import-seconds", type=float, default=None, help="how long each import runs")

    sp = add("demo", cmd_demo, "simulator + daemon on a temporary folder: watch files flow", config=False)
    sp.add_argument("--keep", action="store_true", help="keep the demo folder afterwards")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        for problem in e.problems:
            _err(f"config: {problem}")
        return EXIT_USAGE
    except TokenError as e:
        _err(f"token: {e}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
