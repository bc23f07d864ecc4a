"""``sisdropd fake-canvas``: serve the simulator from the command line until stopped."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from sisdropd.simulator.facade import FakeCanvas


def main(argv: list[str] | None = None) -> int:
    """Serve the simulator until SIGINT/SIGTERM; returns 0 (2 for a refused --host)."""
    parser = argparse.ArgumentParser(
        prog="sisdropd fake-canvas", description="Canvas SIS Import API simulator"
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback unless --allow-remote")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="serve on a non-loopback --host: random API and control tokens, printed",
    )
    parser.add_argument(
        "--token", default=None, help="the API token (default sim-token; random if remote)"
    )
    parser.add_argument("--account-id", default="1")
    parser.add_argument("--import-seconds", type=float, default=1.0)
    parser.add_argument("--start-delay", type=float, default=0.0)
    parser.add_argument("--attachments-delay", type=float, default=0.3)
    parser.add_argument("--storage-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        sim = FakeCanvas(
            host=args.host,
            port=args.port,
            token=args.token,
            account_id=args.account_id,
            import_seconds=args.import_seconds,
            start_delay=args.start_delay,
            attachments_delay=args.attachments_delay,
            storage_dir=args.storage_dir,
            allow_remote=args.allow_remote,
        )
    except ValueError as exc:
        print(f"sisdropd fake-canvas: {exc}", file=sys.stderr, flush=True)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():  # signals only work there
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        sim.start()
        print(
            f"fake Canvas at {sim.url} (API {sim.url}/api/v1) account_id={sim.account_id} "
            f"token={sim.token}",
            flush=True,
        )
        if sim.control_token is not None:
            print(
                f"control endpoints {sim.url}/_sim/ need: "
                f"Authorization: Bearer {sim.control_token}",
                flush=True,
            )
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
    return 0
