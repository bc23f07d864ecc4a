"""``sisdropd submit FILE``: the seed script's one-shot job, done right.

Validate, post (streamed), follow to the end, print the outcome; the file stays where it
is. Exit: 0 imported / imported_with_messages; 1 failed, failed_with_messages, aborted,
rejected; 3 gave up waiting or Canvas unreachable; 4 token rejected (401).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sisdropd import importer, logs, preflight
from sisdropd.canvas import (
    CanvasError,
    Forbidden,
    NotFound,
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
from sisdropd.logs import event as log_event
from sisdropd.logs import redact
from sisdropd.progress import Progress


def main(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    token = token_of(cfg)
    # On a terminal (and not --json): one self-rewriting progress line on stdout.
    shown = Progress.on(sys.stdout, Path(args.file).name, enabled=not args.json)
    logs.setup(cfg.log, stream=shown.log_stream(sys.stderr))
    return submit(cfg, token, Path(args.file), wait=not args.no_wait, as_json=args.json, shown=shown)


def submit(
    cfg: Config, token: str, path: Path, *, wait: bool = True, as_json: bool = False, shown: Progress | None = None,
) -> int:
    """Run one file through Canvas; returns the exit status of the contract.

    ``shown`` is the progress line (``progress.Progress``); inert when not given.
    """
    shown = shown or Progress(None)

    def say(line: str) -> None:  # every line of ours first takes the progress line away
        shown.clear()
        say_line(line)

    log = log_event(path.name)
    w = cfg.watch
    report = preflight.check_path(
        path, import_type=cfg.import_type, extensions=w.extensions,
        limits=preflight.Limits(max_bytes=w.max_bytes), validate_content=w.validate,
    )
    for warn in report.warnings[:10]:
        say(f"warning: {warn}")
    if not report.ok:
        for p in report.problems:
            say(f"rejected: {p}")
        return EXIT_FAILED
    c = cfg.canvas
    client = client_for(cfg, token, patience="submit")
    upload = importer.upload_name(path.name)
    started = time.time()
    deadline = started + w.max_wait
    try:
        log.info("posting {} bytes as {}", report.size, upload)
        try:
            imp = client.create_import(path, upload_name=upload, params=cfg.import_params, on_sent=shown.upload)
        except Retryable as e:
            log.warning("post failed ({}); looking for it in Canvas", e.message)
            members = [[m.basename, m.size] for m in report.members] if report.kind == "zip" else None
            verdict, found = importer.find_posted(
                client, upload=upload, members=members, post_started=started, post_user_id=None,
                exclude=set(), log=log, deadline=time.time() + 2 * c.timeout,
            )
            if found is None:
                say(f"gave up: Canvas unreachable ({e.message}); the file was {'maybe ' if verdict == 'waiting' else 'not '}posted")
                return EXIT_GAVE_UP
            imp = found
        import_id = int(imp["id"])
        log = log_event(path.name, import_id)
        log.info("posted: import {}", import_id)
        shown.canvas(imp)
        if not wait:
            shown.clear()
            say(f"posted: import {import_id} ({imp.get('workflow_state')})")
            return EXIT_OK
        final_imp, final = importer.follow(
            client, import_id, deadline=deadline, poll_interval=w.poll_interval, log=log, on_update=shown.canvas,
            patience=2 * c.timeout,
        )
        shown.clear()
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
        if as_json:
            print(redact(json.dumps(final_imp, indent=2, ensure_ascii=False)))
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
        shown.clear()
        client.close()
        sys.stdout.flush()
