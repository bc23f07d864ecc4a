"""The bundled simulator's commands: ``sisdropd demo`` and ``sisdropd fake-canvas``.

``demo`` is a newcomer's first five minutes: it starts the simulator and a real daemon on
a temporary folder, drops the sample files into the inbox one by one, shows the daemon's
own log lines as they happen, and ends with a table of outcomes and where to look next.
``fake-canvas`` serves the simulator alone. This is the one daemon-side module that
imports the simulator (tests/test_architecture.py keeps it so).
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from importlib import resources
from pathlib import Path
from typing import TextIO

from sisdropd import logs
from sisdropd.config import from_dict
from sisdropd.daemon import Daemon
from sisdropd.lifecycle import CLOSED, State
from sisdropd.simulator import FakeCanvas

# (name in inbox, what we expect, why)
DROPS = (
    ("users.csv", "done", "a clean users file"),
    ("term_2026FA.zip", "done", "a zip of courses, sections and enrollments; one enrollment has a bad status"),
    ("grades.csv", "failed", "a CSV whose header is no SIS CSV type: refused before posting"),
)


def main(args: argparse.Namespace) -> int:
    return demo(keep=args.keep)


def fake_canvas(args: argparse.Namespace) -> int:
    from sisdropd import simulator

    argv = ["--host", args.host, "--port", str(args.port)]
    if args.allow_remote:
        argv.append("--allow-remote")
    if args.token:
        argv += ["--token", args.token]
    if args.import_seconds is not None:
        argv += ["--import-seconds", str(args.import_seconds)]
    return simulator.main(argv)


def _sample(name: str) -> bytes:
    return resources.files("sisdropd").joinpath("samples", name).read_bytes()


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name in ("courses.csv", "sections.csv", "enrollments.csv"):
            z.writestr(name, _sample(name))
    return buf.getvalue()


def demo(*, keep: bool = False, out: TextIO | None = None) -> int:
    """Run the demo; returns 0 when every sample ended where it should."""
    say = out or sys.stdout
    root = Path(tempfile.mkdtemp(prefix="sisdropd-demo-"))
    sim = FakeCanvas(token="demo-token", import_seconds=1.5, storage_dir=root / "canvas-storage").start()
    cfg = from_dict(
        {
            "canvas": {"base_url": sim.url, "account_id": "1", "timeout": 10},
            "folders": {"root": str(root / "sisdrop")},
            "import": {"import_type": "instructure_csv"},
            "watch": {"settle_seconds": 1, "poll_interval": 1, "max_wait": 120},
            "log": {"level": "INFO"},
        },
        source="demo",
    )
    (root / "sisdropd.toml").write_text(
        "\n".join(
            [
                "[canvas]",
                f'base_url = "{sim.url}"',
                'account_id = "1"',
                "[folders]",
                f'root = "{root / "sisdrop"}"',
                "[watch]",
                "settle_seconds = 1",
                "poll_interval = 1",
                "",
            ]
        )
    )
    logs.setup(cfg.log)
    logs.add_secret("demo-token")
    print(f"Canvas simulator: {sim.url} (account 1)", file=say)
    print(f"Drop folder:      {root / 'sisdrop'}  (inbox/ processing/ done/ failed/)", file=say)
    print("The daemon's log follows; each line names the file and, once posted, its import id.\n", file=say, flush=True)
    stop = threading.Event()
    daemon = Daemon(cfg, "demo-token", stop=stop)
    t = threading.Thread(target=daemon.run, name="demo-daemon", daemon=True)
    t.start()
    inbox = cfg.folders.path("inbox")
    try:
        for name, _, why in DROPS:
            data = _zip_bytes() if name.endswith(".zip") else _sample(name)
            print(f"\n>>> dropping {name}: {why}", file=sys.stderr, flush=True)
            (inbox / name).write_bytes(data)
            time.sleep(0.3)
        deadline = time.time() + 90
        while time.time() < deadline:
            recs = daemon.journal.select()
            if len(recs) >= len(DROPS) and all(r.state in CLOSED for r in recs):
                break
            time.sleep(0.2)
        recs = daemon.journal.select()
    finally:
        daemon.request_stop()
        t.join(timeout=15)
        sim.stop()
    print("\nOutcomes", file=say)
    print(f"  {'file':<18} {'folder':<7} {'Canvas state':<24} {'import':<7} reason", file=say)
    ok = True
    by_name = {r.original_name: r for r in recs}
    for name, expected, _ in DROPS:
        r = by_name.get(name)
        folder = str(r.state) if r else "missing"
        ok = ok and folder == expected
        print(
            f"  {name:<18} {folder:<7} {(r.workflow_state if r else None) or '-':<24} {(r.import_id if r else None) or '-':<7} {(r.outcome_reason if r else '') or ''}",
            file=say,
        )
    print("\nWhere to look next", file=say)
    if keep:
        print(f"  done/ and failed/:  {root / 'sisdrop'} (each file has a <name>.json beside it)", file=say)
        print(f"  the same view:      sisdropd status -c {root / 'sisdropd.toml'}", file=say)
    else:  # nothing here may name the folder as if it were still there
        shutil.rmtree(root, ignore_errors=True)
        print("  done/ and failed/:  removed with this demo's temporary folder; `sisdropd demo --keep` keeps", file=say)
        print("                      them (each file has a <name>.json beside it) and prints the", file=say)
        print("                      `sisdropd status -c ...` that shows the same view", file=say)
    print("  your own config:    README.md, 'Configuration'; then `sisdropd check -c your.toml`", file=say)
    return 0 if ok and all(r.state in (State.DONE, State.FAILED) for r in recs) else 1
