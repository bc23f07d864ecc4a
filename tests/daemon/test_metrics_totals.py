"""Every ``_total`` metric only ever rises while the daemon runs, and the totals derived from the
journal survive a restart (issue 14): outcomes are counted as events, so a retry (failed ->
queued) or a release (held -> queued) never makes one fall."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.daemon.test_guard import BATCH, held, users
from tests.daemon.test_ops import parse_prom
from tests.support import Drop, wait_for


class Sampler:
    """Reads the textfile every few milliseconds and keeps every value each _total sample had."""

    def __init__(self, prom: Path) -> None:
        self.prom = prom
        self.seen: dict[str, list[float]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="prom-sampler")
        self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(0.01):
            try:
                samples = parse_prom(self.prom.read_text())
            except (OSError, ValueError):
                continue
            for name, value in samples.items():
                if name.split("{")[0].endswith("_total"):
                    history = self.seen.setdefault(name, [])
                    if not history or history[-1] != value:
                        history.append(value)

    def close(self) -> dict[str, list[float]]:
        self.stop.set()
        self.thread.join()
        return self.seen


def test_totals_only_rise_through_retry_release_and_restart(drop: Drop, daemon, tmp_path: Path) -> None:
    prom = tmp_path / "sisdropd.prom"
    drop.write(metrics={"textfile": str(prom)}, **{"import": BATCH})
    d = daemon()
    sampler = Sampler(prom)
    try:
        total = lambda outcome: parse_prom(prom.read_text()).get(f'sisdropd_files_total{{outcome="{outcome}"}}')  # noqa: E731
        (drop.inbox / "bad.csv").write_text("x,y\n1,2\n")  # rejected by the pre-flight check
        wait_for(lambda: prom.exists() and total("failed") == 1, what="failed 1")
        # A retry takes it out of failed/ (the old metric fell to 0 here); it fails again.
        assert drop.cli("retry", "bad.csv", "-c", str(drop.config)).returncode == 0
        wait_for(lambda: total("failed") == 2, what="failed 2")
        # A held file released: held stays counted, done rises.
        (drop.inbox / "users_1.csv").write_text(users(10))
        wait_for(lambda: total("done") == 1, what="first import")
        (drop.inbox / "users_2.csv").write_text(users(5))
        wait_for(lambda: held(drop), what="held")
        wait_for(lambda: total("held") == 1, what="held 1")
        assert drop.cli("release", "users_2.csv", "-c", str(drop.config)).returncode == 0
        wait_for(lambda: total("done") == 2, what="released and imported")
        before = parse_prom(prom.read_text())
        assert before['sisdropd_imports_total{state="imported"}'] == 2
        assert d.terminate() == 0
        daemon()  # a restart reads the same totals from the journal
        wait_for(lambda: "sisdropd_up 1" in prom.read_text(), what="the new daemon's textfile")
        after = parse_prom(prom.read_text())
    finally:
        seen = sampler.close()
    for name in ('sisdropd_files_total{outcome="failed"}', 'sisdropd_files_total{outcome="held"}',
                 'sisdropd_files_total{outcome="done"}', 'sisdropd_imports_total{state="imported"}'):
        assert after[name] == before[name], name
    assert seen['sisdropd_files_total{outcome="failed"}'] == [1, 2]
    for name, history in seen.items():
        assert history == sorted(history), f"{name} fell: {history}"
