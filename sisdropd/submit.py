"""``sisdropd submit FILE``: the seed script's one-shot job, done right.

Validate, post (streamed), follow to the end, print the outcome; the file stays where it
is. Exit: 0 imported / imported_with_messages; 1 failed, failed_with_messages, aborted,
rejected; 3 gave up waiting or Canvas unreachable; 4 token rejected (401).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from sisdropd import importer, preflight
from sisdropd.canvas import (
    CanvasError,
    Forbidden,
    NotFound,
    Refused,
    Retryable,
    TokenRejected,
    client_for,
)
from sisdropd.config import Config
from sisdropd.logs import clean, redact
from sisdropd.logs import event as log_event


def _print(line: str) -> None:
    print(clean(line), flush=True)


def submit(cfg: Config, token: str, path: Path, *, wait: bool = True, as_json: bool = False) -> int:
    """Run one file through Canvas; returns the exit status of the contract."""
    log = log_event(path.name)
    w = cfg.watch
    report = preflight.check_path(
        path, import_type=cfg.import_type, extensions=w.extensions,
        limits=preflight.Limits(max_bytes=w.max_bytes), validate_content=w.validate,
    )
    for warn in report.warnings[:10]:
        _print(f"warning: {warn}")
    if not report.ok:
        for p in report.problems:
            _print(f"rejected: {p}")
        return 1
    c = cfg.canvas
    client = client_for(cfg, token, patience="submit")
    upload = importer.upload_name(path.name)
    started = time.time()
    deadline = started + w.max_wait
    try:
        log.info("posting {} bytes as {}", report.size, upload)
        try:
            imp = client.create_import(path, upload_name=upload, params=cfg.import_params)
        except Retryable as e:
            log.warning("post failed ({}); looking for it in Canvas", e.message)
            members = [[m.basename, m.size] for m in report.members] if report.kind == "zip" else None
            verdict, found = importer.find_posted(
                client, upload=upload, members=members, post_started=started, our_user_id=None,
                exclude=set(), log=log, deadline=time.time() + 2 * c.timeout,
            )
            if found is None:
                _print(f"gave up: Canvas unreachable ({e.message}); the file was {'maybe ' if verdict == 'unsure' else 'not '}posted")
                return 3
            imp = found
        import_id = int(imp["id"])
        log = log_event(path.name, import_id)
        log.info("posted: import {}", import_id)
        if not wait:
            _print(f"posted: import {import_id} ({imp.get('workflow_state')})")
            return 0
        final_imp, final = importer.follow(client, import_id, deadline=deadline, poll_interval=w.poll_interval, log=log)
        if not final:
            state = (final_imp or {}).get("workflow_state")
            if w.abort_on_timeout:
                try:
                    client.abort(import_id)
                except CanvasError:
                    pass
            _print(f"gave up waiting: import {import_id} still {state} after {w.max_wait:g}s")
            return 3
        assert final_imp is not None
        importer.canvas_messages(final_imp, log)
        state = str(final_imp.get("workflow_state"))
        if as_json:
            print(redact(json.dumps(final_imp, indent=2, ensure_ascii=False)))
        _print(f"{state}: import {import_id} ({importer.counts_summary(final_imp)}) in {time.time() - started:.1f}s")
        return 0 if state in importer.SUCCESS_STATES | importer.RESTORED_STATES else 1
    except TokenRejected as e:
        _print(f"token rejected: {e.message}")
        return 4
    except Refused as e:
        _print(f"rejected by Canvas: {e.message}")
        return 1
    except (Forbidden, NotFound) as e:
        _print(f"Canvas refused access: {e.message} (check canvas.account_id and that SIS imports are enabled)")
        return 1
    except (Retryable, OSError) as e:
        _print(f"gave up: Canvas unreachable ({getattr(e, 'message', e)})")
        return 3
    finally:
        client.close()
        sys.stdout.flush()
