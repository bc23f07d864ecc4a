"""The daemon's lock, as operator commands see it (issue 12.5): who holds it is asked of the
kernel, never by taking it, so a command asking at the moment a daemon starts never makes that
start fail; and a stale pid file names no one."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from sisdropd.folders import AlreadyRunning, lock, lock_file, lock_holder

HOLD = "import sys, time; from pathlib import Path; from sisdropd.folders import lock; f = lock(Path(sys.argv[1])); print('held', flush=True); time.sleep(30)"
ASK = (
    "import sys, time; from pathlib import Path; from sisdropd.folders import lock_holder\n"
    "d, stop, n = Path(sys.argv[1]), Path(sys.argv[2]), 0\n"
    "first = time.monotonic(); print('asking', flush=True)\n"
    "while not stop.exists():\n"
    "    lock_holder(d); n += 1\n"
    "print(n, first, time.monotonic(), flush=True)\n"
)


def test_the_holder_is_the_live_process_that_holds_the_lock_not_the_pid_file(tmp_path: Path) -> None:
    assert lock_holder(tmp_path) is None  # no lock file at all
    lock_file(tmp_path).write_text("1\n")  # a stale pid file after a stop: init, say
    assert lock_holder(tmp_path) is None
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert lock_holder(tmp_path) == holder.pid
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(tmp_path) is None  # the kernel dropped the lock with the process


def test_a_command_asking_over_and_over_never_makes_a_starting_daemon_fail(tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    asker = subprocess.Popen([sys.executable, "-c", ASK, str(tmp_path), str(stop)], stdout=subprocess.PIPE, text=True)
    assert asker.stdout is not None and asker.stdout.readline().strip() == "asking"
    starts, refused = 0, 0
    began = time.monotonic()
    while starts < 1000:  # a daemon starting (and stopping) again and again meanwhile; counted, not timed (a loaded CI runs fewer a second)
        try:
            f = lock(tmp_path)
        except AlreadyRunning:
            refused += 1
        else:
            f.close()
        starts += 1
    ended = time.monotonic()
    stop.touch()
    count, first, last = asker.stdout.readline().split()
    assert asker.wait() == 0
    # The asker asked all through the starts (one clock for both: CLOCK_MONOTONIC), many times.
    assert float(first) <= began and float(last) >= ended and int(count) > 100, (count, starts)
    assert refused == 0, f"{refused} of {starts} starts refused while a command asked who holds the lock"
