"""A short soak in CI: files dropped while faults are injected, the daemon is SIGKILLed,
Canvas's attachment delay is on and another client's imports share the account's queue."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tests.support import REPO

SCRIPT = REPO / "scripts" / "soak.py"


def test_short_soak_loses_nothing_and_posts_nothing_twice(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("soak", SCRIPT)
    assert spec and spec.loader
    soak = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = soak  # dataclasses look their module up while it loads
    spec.loader.exec_module(soak)
    fig = soak.run(files=16, kills=4, seed=11, duration=8.0, root=tmp_path, opts=soak.Options(foreign_rate=0.5))
    print(fig.table())
    assert fig.files == 16 and fig.kills + fig.terms == 4
    assert sum(fig.faults_served.values()) > 0
    assert fig.attachments_delay > 0 and fig.foreign > 0  # Canvas as it is: slow, shared
    assert fig.import_seconds > fig.attachments_delay  # the whole unpacking window is seen
    assert fig.lost == [], (tmp_path / "daemon.log").read_text()[-3000:]
    assert fig.duplicates == 0 and fig.left_over == 0
    assert fig.done == 16
