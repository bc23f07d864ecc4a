"""The daemon takes a .zip that is no zip at all at once and rejects it (issue 11 point 8).

Before, every .zip without an end-of-central-directory record "looked truncated" and
waited ``truncated_after`` (an hour by default) before failing. A file that neither
starts nor ends like a zip is not an upload cut short: it goes to failed/ at once, with
the pre-flight check's reason. looks_truncated's own cases are in
tests/unit/test_preflight_truncation.py.
"""

from __future__ import annotations

import random

from tests.support import Drop, wait_for


def random_bytes(n: int) -> bytes:
    data = random.Random(11).randbytes(n)
    assert not data.startswith(b"PK")
    return data


def test_the_daemon_rejects_random_bytes_named_zip_at_once_instead_of_waiting(
    drop: Drop, daemon
) -> None:
    drop.write(watch={"truncated_after": 3600})  # a cut-short zip would wait an hour
    d = daemon()
    (drop.inbox / "term.zip").write_bytes(random_bytes(5000))
    [failed] = wait_for(lambda: drop.outcomes("failed"), timeout=20, what="rejected")
    reason = drop.sidecar(failed)["reason"]
    assert reason.startswith("rejected by the pre-flight check: is not a readable zip (not a zip")
    assert "looks truncated" not in d.log() and drop.sim.imports() == []
