"""``sisdropd validate FILE...``: the local pre-flight check alone, no network."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sisdropd import preflight
from sisdropd.commands import say
from sisdropd.config import load, resolve_path


def main(args: argparse.Namespace) -> int:
    """Judge by the config's import type and extensions when there is a config, else the defaults."""
    import_type, extensions = args.import_type, None
    path = resolve_path(args.config)
    if args.config or path.exists():
        cfg = load(path)
        import_type = import_type or cfg.import_type
        extensions = cfg.watch.extensions
    return validate_files([Path(f) for f in args.files], import_type or "instructure_csv", extensions)


def validate_files(paths: list[Path], import_type: str, extensions: tuple[str, ...] | None) -> int:
    """``sisdropd validate``: print each problem as ``file:line: message``; 1 if any fails."""
    failed = 0
    for path in paths:
        kw: dict[str, Any] = {"import_type": import_type}
        if extensions:
            kw["extensions"] = extensions
        report = preflight.check_path(path, name=str(path), **kw)
        for p in report.problems:
            say(str(p))
        for w in report.warnings:
            say(f"{w} (warning)")
        if report.ok:
            counts = ", ".join(f"{k} {v}" for k, v in report.counts.items()) or "no rows"
            say(f"{path}: ok ({report.kind}: {counts})")
        else:
            failed += 1
    return 1 if failed else 0
