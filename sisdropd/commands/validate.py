"""``sisdropd validate FILE...``: the local pre-flight check alone, no network."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

from sisdropd import posting, preflight
from sisdropd.commands import say
from sisdropd.config import Config, load, resolve_path
from sisdropd.preflight.params import config_warnings, import_param_warnings


def main(args: argparse.Namespace) -> int:
    path = resolve_path(args.config)
    cfg = load(path) if args.config or path.exists() else None
    # An import type stock Canvas lacks passes the check but gets Canvas's HTTP 500: said first.
    warnings = [f"config: {w}" for w in config_warnings(cfg.import_params, [r.import_params for r in cfg.rules])] if cfg else []
    if args.import_type:
        warnings += [w.replace("import.import_type", "--import-type", 1) for w in import_param_warnings({"import_type": args.import_type})]
    for w in warnings:
        say(f"warning: {w}")
    return validate_files([Path(f) for f in args.files], lambda file: rules_for(cfg, file, args.import_type))


def rules_for(cfg: Config | None, file: Path, import_type: str | None = None) -> posting.Rules:
    """How ``file`` is judged: with a config, by the rules ``submit`` and the daemon post it
    under (``posting.Rules.of``: the import type of its ``[[rules]]`` match or ``[import]``,
    and ``[watch]`` extensions, max_bytes and validate); without one, by the defaults.
    ``import_type`` (``--import-type``) overrides the import type either way."""
    rules = posting.Rules.of(cfg, cfg.params_for(file.name)) if cfg is not None else posting.Rules()
    return dataclasses.replace(rules, import_type=import_type) if import_type else rules


def validate_files(paths: list[Path], rules_for: Callable[[Path], posting.Rules]) -> int:
    """``sisdropd validate``: print each problem as ``file:line: message``; 1 if any fails."""
    failed = 0
    for path in paths:
        rules = rules_for(path)
        report = preflight.check_path(
            path, name=str(path), import_type=rules.import_type, extensions=rules.extensions,
            limits=rules.limits or preflight.Limits(), validate_content=rules.validate,
        )
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
