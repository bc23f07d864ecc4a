#!/usr/bin/env python3
"""Soak: many files, injected faults and random SIGKILLs, then the invariants, as figures.

    python scripts/soak.py --files 300 --kills 40 --seed 7

Runs the bundled Canvas simulator in this process and ``sisdropd run`` as a real child
process on a temporary drop folder. While a writer drops uniquely-numbered users CSVs and
zips, a chaos loop injects HTTP faults into the simulator (5xx, 429, Canvas's 403 rate
limit, connections dropped before and after handling, slow answers), kills the daemon
with SIGKILL at random moments (now and then SIGTERM), restarting it each time, and lets
another Canvas client share the account's queue: now and then a foreign import (another
Canvas user) arrives and holds the one-at-a-time queue for a while. The simulator keeps
Canvas's attachment delay (imports are ``importing`` a while before they list their
files). At the end it checks what an operator relies on and prints one table:

    files dropped, kills, faults injected/served, foreign imports, files in done/ and
    failed/, files lost (not in exactly one final folder with identical bytes),
    duplicate posts (more than one import of the same bytes by OUR Canvas user; the
    other client's imports do not count), left in inbox/ or processing/.

Exit status 0 when nothing was lost and nothing posted twice. tests/test_soak.py runs a
short version in CI.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sisdropd.simulator import FakeCanvas  # noqa: E402

TOKEN = "soak-token-7d1e9c"
FAULTS = ("500", "502", "503", "429", "403_rate_limit", "drop", "drop_after", "delay")


@dataclass
class Figures:
    files: int = 0
    kills: int = 0
    terms: int = 0
    restarts: int = 0
    faults_injected: Counter[str] = field(default_factory=Counter)
    faults_served: dict[str, int] = field(default_factory=dict)
    foreign: int = 0
    attachments_delay: float = 0.0
    import_seconds: float = 0.0
    done: int = 0
    failed: int = 0
    lost: list[str] = field(default_factory=list)
    duplicates: int = 0
    left_over: int = 0
    imports: int = 0
    seconds: float = 0.0

    def ok(self) -> bool:
        return not self.lost and self.duplicates == 0 and self.left_over == 0

    def table(self) -> str:
        served = sum(self.faults_served.values())
        rows = [
            ("files dropped", self.files),
            ("SIGKILLs", self.kills),
            ("SIGTERMs", self.terms),
            ("daemon starts", self.restarts),
            ("faults injected", sum(self.faults_injected.values())),
            ("faults served", served),
            ("  by kind", ", ".join(f"{k} {v}" for k, v in sorted(self.faults_served.items()) if v) or "-"),
            ("foreign imports (another user)", self.foreign),
            ("attachment delay (s)", f"{self.attachments_delay:g} (each import runs {self.import_seconds:g})"),
            ("our imports created in Canvas", self.imports),
            ("files in done/", self.done),
            ("files in failed/", self.failed),
            ("files lost", len(self.lost)),
            ("duplicate posts", self.duplicates),
            ("left in inbox/ or processing/", self.left_over),
            ("wall time (s)", f"{self.seconds:.0f}"),
        ]
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _csv(i: int, rng: random.Random) -> bytes:
    rows = "".join(f"s{i}u{j},s{i}login{j},First,Last,active\n" for j in range(rng.randint(1, 40)))
    return f"user_id,login_id,first_name,last_name,status\n{rows}".encode()


def _zip(i: int, rng: random.Random) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("users.csv", _csv(i, rng))
        z.writestr("enrollments.csv", f"course_id,user_id,role,status\nC{i},s{i}u0,student,active\n")
    return buf.getvalue()


@dataclass
class Options:
    """What the soak does besides dropping files (see ``--help``)."""

    fault_rate: float = 0.5  # faults injected per second of chaos, on average
    attachments_delay: float | None = None  # None: the simulator's default (on)
    foreign_rate: float = 0.2  # foreign imports per second of chaos, on average; 0 = none
    foreign_hold: float = 2.0  # each holds the queue up to this many seconds


class Soak:
    def __init__(self, root: Path, files: int, kills: int, seed: int, quiet: bool, opts: Options | None = None) -> None:
        self.root, self.n, self.kills_wanted, self.quiet = root, files, kills, quiet
        self.opts = opts or Options()
        self.rng = random.Random(seed)
        self.fig = Figures()
        self.dropped: dict[str, bytes] = {}
        timing = {} if self.opts.attachments_delay is None else {"attachments_delay": self.opts.attachments_delay}
        self.sim = FakeCanvas(token=TOKEN, storage_dir=root / "canvas", **timing)
        # Each import runs 50 ms past its unpacking window, so the whole window is seen (an
        # import shorter than the window would list its files as it ends).
        self.sim.set_timing(import_seconds=self.sim.timing()["attachments_delay"] + 0.05)
        self.drop = root / "sisdrop"
        self.config = root / "sisdropd.toml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = open(root / "daemon.log", "ab")  # noqa: SIM115

    def write_config(self) -> None:
        self.config.write_text(
            f"""
[canvas]
base_url = "{self.sim.url}"
account_id = "1"
timeout = 2
retry_initial = 0.1
retry_max = 1.0
[folders]
root = "{self.drop}"
[watch]
settle_seconds = 0.3
poll_interval = 0.3
max_wait = 300
rescan_interval = 5
[log]
level = "INFO"
"""
        )

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SISDROPD_", "NOTIFY_SOCKET"))}
        env["SISDROPD_TOKEN"] = TOKEN
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sisdropd", "run", "-c", str(self.config)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[1],
        )
        self.fig.restarts += 1

    def stop(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def writer(self, duration: float) -> None:
        inbox = self.drop / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        for i in range(self.n):
            is_zip = self.rng.random() < 0.25
            name = f"soak_{i:05d}.{'zip' if is_zip else 'csv'}"
            data = _zip(i, self.rng) if is_zip else _csv(i, self.rng)
            tmp = inbox / f".{name}.tmp"
            tmp.write_bytes(data)
            os.rename(tmp, inbox / name)
            self.dropped[name] = data
            self.fig.files += 1
            time.sleep(self.rng.uniform(0, 2 * duration / self.n))

    def chaos(self, duration: float, writer: threading.Thread) -> None:
        end = time.time() + duration
        kill_times = sorted(self.rng.uniform(0.5, duration) for _ in range(self.kills_wanted))
        if self.opts.foreign_rate > 0:  # the first files meet a queue another client holds
            self.sim.foreign_import(self.opts.foreign_hold)
            self.fig.foreign += 1
        while time.time() < end or writer.is_alive():
            if kill_times and time.time() - (end - duration) >= kill_times[0]:
                kill_times.pop(0)
                if self.rng.random() < 0.85:
                    self.stop(signal.SIGKILL)
                    self.fig.kills += 1
                else:
                    self.stop(signal.SIGTERM)
                    self.fig.terms += 1
                time.sleep(self.rng.uniform(0, 0.5))
                self.start()
            if self.rng.random() < self.opts.foreign_rate * 0.2:
                self.sim.foreign_import(self.rng.uniform(0.2, self.opts.foreign_hold))
                self.fig.foreign += 1
            if self.rng.random() < self.opts.fault_rate * 0.2:
                fault = self.rng.choice(FAULTS)
                method = self.rng.choice(("GET", "POST"))
                self.sim.inject(fault, method=method, count=self.rng.randint(1, 2), delay=self.rng.uniform(0.5, 3.0))
                self.fig.faults_injected[fault] += 1
            time.sleep(0.2)

    def settle(self, timeout: float) -> None:
        """No more chaos: let the daemon finish everything (restarting it if it is down)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                self.start()
            if self._finished_count() >= len(self.dropped) and not list((self.drop / "processing").iterdir()):
                return
            time.sleep(0.5)

    def _finished(self) -> list[Path]:
        out = []
        for folder in ("done", "failed"):
            d = self.drop / folder
            if d.exists():
                out += [p for p in d.iterdir() if not p.name.endswith((".json", ".errors.csv")) and not p.name.startswith(".")]
        return out

    def _finished_count(self) -> int:
        return len(self._finished())

    def check(self) -> None:
        where: dict[str, list[Path]] = {}
        for p in self._finished():
            side = json.loads(p.with_name(p.name + ".json").read_text())
            where.setdefault(side["original_name"], []).append(p)
        for name, data in self.dropped.items():
            paths = where.get(name, [])
            if len(paths) != 1 or paths[0].read_bytes() != data:
                self.fig.lost.append(name)
        self.fig.done = sum(1 for ps in where.values() for p in ps if p.parent.name == "done")
        self.fig.failed = sum(1 for ps in where.values() for p in ps if p.parent.name == "failed")
        ours = [i for i in self.sim.imports() if i["user_id"] == self.sim.user_id]
        per = Counter(i["sha256"] for i in ours)
        self.fig.imports = len(ours)
        self.fig.duplicates = sum(n - 1 for n in per.values() if n > 1)
        self.fig.left_over = len([p for p in (self.drop / "inbox").iterdir() if not p.name.startswith(".")])
        self.fig.left_over += len(list((self.drop / "processing").iterdir()))
        self.fig.faults_served = self.sim.faults_served()
        self.fig.attachments_delay = self.sim.timing()["attachments_delay"]
        self.fig.import_seconds = self.sim.timing()["import_seconds"]

    def run(self, duration: float) -> Figures:
        t0 = time.time()
        self.sim.start()
        try:
            self.write_config()
            self.start()
            writer = threading.Thread(target=self.writer, args=(duration,), daemon=True)
            writer.start()
            self.chaos(duration, writer)
            writer.join()
            self.settle(timeout=max(120.0, self.n * 3.0))
            self.stop(signal.SIGTERM)
            self.check()
        finally:
            self.stop(signal.SIGKILL)
            self.sim.stop()
            self.log.close()
        self.fig.seconds = time.time() - t0
        return self.fig


def run(
    files: int, kills: int, seed: int = 1, duration: float | None = None, root: Path | None = None,
    quiet: bool = True, opts: Options | None = None,
) -> Figures:
    """Run one soak; returns its figures. ``root`` keeps the folder (daemon.log) for a post-mortem."""
    duration = duration or max(10.0, files * 0.15)
    if root is not None:
        return Soak(root, files, kills, seed, quiet, opts).run(duration)
    with tempfile.TemporaryDirectory(prefix="sisdropd-soak-") as tmp:
        return Soak(Path(tmp), files, kills, seed, quiet, opts).run(duration)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--kills", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--duration", type=float, default=None, help="seconds of dropping and chaos (default: 0.15 s a file)")
    ap.add_argument("--fault-rate", type=float, default=0.5, help="faults injected per second of chaos (default 0.5)")
    ap.add_argument(
        "--attachments-delay", type=float, default=None,
        help="seconds an import is importing before it lists its files (default: the simulator's, 0.3)",
    )
    ap.add_argument(
        "--foreign-rate", type=float, default=0.2,
        help="another client's imports per second of chaos (default 0.2; 0 = the queue is ours alone)",
    )
    ap.add_argument("--foreign-hold", type=float, default=2.0, help="each holds the queue up to this long (default 2 s)")
    ap.add_argument("--keep", type=Path, default=None, help="run in this folder and keep it (daemon.log)")
    args = ap.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    opts = Options(args.fault_rate, args.attachments_delay, args.foreign_rate, args.foreign_hold)
    fig = run(args.files, args.kills, args.seed, args.duration, args.keep, quiet=False, opts=opts)
    print(fig.table())
    if fig.lost:
        print("lost:", ", ".join(fig.lost[:20]))
    print("RESULT:", "ok: nothing lost, nothing posted twice" if fig.ok() else "FAILED")
    return 0 if fig.ok() else 1


if __name__ == "__main__":
    raise SystemExit(main())
