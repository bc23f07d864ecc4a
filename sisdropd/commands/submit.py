"""``sisdropd submit FILE``: the seed script's one-shot job, done right.

Validate, post (streamed), follow to the end, print the outcome; the file stays where it
is. Exit: 0 imported / imported_with_messages; 1 failed, failed_with_messages, aborted,
rejected; 3 gave up waiting or Canvas unreachable; 4 token rejected (401).

``--json``: stdout is one JSON object and nothing else, whatever the outcome: Canvas's SIS
import object as last seen (its final state once followed to the end; as created with
``--no-wait``; as it stood when waiting was given up), or, when no import was made or
found, ``{"id": null, "workflow_state": null, "error": "<why>"}``. The lines that say
the outcome in words then go to stderr.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sisdropd import importer, linelog, posting, preflight
from sisdropd.canvas import (
    CanvasError,
    Forbidden,
    NotFound,
    NotSent,
    Refused,
    Retryable,
    TokenRejected,
    client_for,
)
from sisdropd.commands import (
    EXIT_FAILED,
    EXIT_GAVE_UP,
    EXIT_OK,
    EXIT_TOKEN,
    config_of,
    token_of,
)
from sisdropd.commands import (
    say as say_line,
)
from sisdropd.config import Config
from sisdropd.logs import clean, redact
from sisdropd.progress import Progress

CHANGED_TRIES = 3  # a file that changes while it is posted is checked again this often


def main(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    token = token_of(cfg)
    # On a terminal (and not --json): one self-rewriting progress line on stdout.
    shown = Progress.on(sys.stdout, Path(args.file).name, enabled=not args.json)
    return submit(cfg, token, Path(args.file), wait=not args.no_wait, as_json=args.json, shown=shown)


def submit(
    cfg: Config, token: str, path: Path, *, wait: bool = True, as_json: bool = False, shown: Progress | None = None,
) -> int:
    """Run one file through Canvas; returns the exit status of the contract.

    The file is checked and posted as the daemon posts it (``posting``), with the
    parameters the daemon would give it (the first matching ``[[rules]]`` over
    ``[import]``): opened once, posted from that descriptor, the body's last bytes held
    back until the bytes sent are the bytes checked. ``shown`` is the progress line
    (``progress.Progress``; inert when not given).
    """
    progress = shown or Progress(None)
    said: list[str] = []
    seen: dict[str, Any] = {}  # "import": Canvas's SIS import object as last seen

    def say(line: str) -> None:  # every line of ours first takes the progress line away
        progress.clear()
        said.append(line)
        if as_json:  # stdout is the JSON alone: the words go to stderr
            print(clean(line), file=sys.stderr, flush=True)
        else:
            say_line(line)

    def canvas_seen(imp: dict[str, Any]) -> None:
        seen["import"] = imp
        progress.canvas(imp)

    code = _submit(cfg, token, path, wait, say, progress, canvas_seen)
    if as_json:
        doc = seen.get("import") or {"id": None, "workflow_state": None, "error": said[-1] if said else None}
        print(redact(json.dumps(doc, indent=2, ensure_ascii=False)), flush=True)
    return code


def _submit(
    cfg: Config, token: str, path: Path, wait: bool, say: Callable[[str], None], progress: Progress,
    canvas_seen: Callable[[dict[str, Any]], None],
) -> int:
    """``submit``'s work; ``say`` prints a line of the outcome, ``canvas_seen`` gets each
    state of the import Canvas reports."""
    log_event = linelog.for_command(cfg.log, stream=progress.log_stream(sys.stderr))
    log = log_event(path.name)
    w = cfg.watch
    params = cfg.params_for(path.name)
    rules = posting.Rules.of(cfg, params)
    client = client_for(cfg, token, patience="submit")
    started = time.time()
    deadline = started + w.max_wait
    try:
        imp = None
        for _ in range(CHANGED_TRIES):
            try:
                out = posting.Outgoing.open(path, name=path.name, rules=rules)
            except FileNotFoundError:
                say(f"rejected: {path.name}: does not exist")
                return EXIT_FAILED
            with out:
                if out.report is not None and not _passes(out.report, say):
                    return EXIT_FAILED
                upload = importer.upload_name(path.name)
                started = time.time()
                log.info("posting {} bytes as {}", out.size, upload)
                try:
                    # Neither hash nor row count of a file checked while sent: submit keeps
                    # no record of it.
                    imp = client.create_import(
                        out.source(lambda report: _show_warnings(report, say), record=False), upload_name=upload,
                        params=params, on_progress=functools.partial(_upload_shown, progress, out.size),
                    )
                except posting.Rejected as e:
                    report = e.report or out.finish_check()
                    if (changed := out.written_to()) is None:
                        _passes(report, say)
                        return EXIT_FAILED
                    _changed(path, changed, say)
                    continue
                except posting.Changed as e:
                    _changed(path, e, say)
                    continue
                except NotSent as e:
                    report = out.finish_check()
                    if (changed := out.written_to()) is not None:
                        _changed(path, changed, say)
                        continue
                    if report is not None and not _passes(report, say):
                        return EXIT_FAILED
                    say(f"gave up: Canvas unreachable ({e.message}); the file was not posted")
                    return EXIT_GAVE_UP
                except Retryable as e:
                    log.warning("post failed ({}); looking for it in Canvas", e.message)
                    report = out.finish_check()
                    members = [[m.basename, m.size] for m in report.members] if report is not None and report.kind == "zip" else None
                    verdict, found = importer.find_posted(
                        client, upload=upload, members=members, post_started=started, post_user_id=None,
                        exclude=set(), log=log, deadline=time.time() + 2 * cfg.canvas.timeout,
                    )
                    if found is None:
                        say(f"gave up: Canvas unreachable ({e.message}); the file was {'maybe ' if verdict == 'waiting' else 'not '}posted")
                        return EXIT_GAVE_UP
                    imp = found
            break
        if imp is None:
            say(f"gave up: {path.name} kept changing while it was being posted; it was not posted")
            return EXIT_GAVE_UP
        import_id = int(imp["id"])
        log = log_event(path.name, import_id)
        log.info("posted: import {}", import_id)
        canvas_seen(imp)
        if not wait:
            say(f"posted: import {import_id} ({imp.get('workflow_state')})")
            return EXIT_OK
        final_imp, final = importer.follow(
            client, import_id, deadline=deadline, poll_interval=w.poll_interval, log=log, on_update=canvas_seen,
            patience=2 * cfg.canvas.timeout,
        )
        if final_imp is not None:
            canvas_seen(final_imp)
        progress.clear()
        if not final:
            state = (final_imp or {}).get("workflow_state")
            if w.abort_on_timeout:
                try:
                    client.abort(import_id)
                except CanvasError:
                    pass
            say(f"gave up waiting: import {import_id} still {state} after {w.max_wait:g}s")
            return EXIT_GAVE_UP
        assert final_imp is not None
        importer.canvas_messages(final_imp, log)
        state = str(final_imp.get("workflow_state"))
        say(f"{state}: import {import_id} ({importer.counts_summary(final_imp)}) in {time.time() - started:.1f}s")
        return EXIT_OK if state in importer.SUCCESS_STATES | importer.RESTORED_STATES else EXIT_FAILED
    except TokenRejected as e:
        say(f"token rejected: {e.message}")
        return EXIT_TOKEN
    except Refused as e:
        say(f"rejected by Canvas: {e.message}")
        return EXIT_FAILED
    except (Forbidden, NotFound) as e:
        say(f"Canvas refused access: {e.message} (check canvas.account_id and that SIS imports are enabled)")
        return EXIT_FAILED
    except (Retryable, OSError) as e:
        say(f"gave up: Canvas unreachable ({getattr(e, 'message', e)})")
        return EXIT_GAVE_UP
    finally:
        progress.clear()
        client.close()
        sys.stdout.flush()


def _upload_shown(progress: Progress, size: int, sent: int) -> None:
    progress.upload(sent, size)


def _show_warnings(report: preflight.Report, say: Callable[[str], None]) -> None:
    for warn in report.warnings[:10]:
        say(f"warning: {warn}")


def _changed(path: Path, e: posting.Changed, say: Callable[[str], None]) -> None:
    say(f"{path.name} changed while it was being posted ({e}); Canvas got nothing: checking it again")


def _passes(report: preflight.Report | None, say: Callable[[str], None]) -> bool:
    """Print the check's warnings and problems; True when the file may be posted."""
    if report is None:
        return True
    _show_warnings(report, say)
    for p in report.problems:
        say(f"rejected: {p}")
    return report.ok
