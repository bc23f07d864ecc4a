"""The change guard: hold a file whose row counts fall sharply before Canvas deletes the rest.

In batch mode or diffing mode a file tells Canvas what should exist; a truncated or
half-empty export makes Canvas delete or drop whatever is missing. The guard compares
each file's row counts per SIS CSV type (from the pre-flight check) with the last
successful import of the same data set, and says "hold" when a type falls by more than
``max_drop_percent`` or disappears. The data set is the diffing identifier when there
is one, else the file name with its digits (dates, sequence numbers) removed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sisdropd.config import GuardConfig


@dataclass(frozen=True)
class Verdict:
    """``hold`` is True when the file must wait for an operator; ``why`` says why in words."""

    hold: bool
    why: str
    dataset: str
    before: dict[str, int]
    after: dict[str, int]

    def table(self) -> list[dict[str, Any]]:
        """The counts side by side, one row per CSV type (for the sidecar and the log)."""
        rows = []
        for t in sorted(set(self.before) | set(self.after)):
            b, a = self.before.get(t, 0), self.after.get(t, 0)
            change = None if b == 0 else round(100.0 * (a - b) / b, 1)
            rows.append({"type": t, "last_import": b, "this_file": a, "change_percent": change})
        return rows


def applies(cfg: GuardConfig, params: Mapping[str, Any]) -> bool:
    """The guard is on for batch-mode and diffing imports, or for all with ``all_imports``."""
    if cfg.all_imports:
        return True
    return bool(params.get("batch_mode") or params.get("multi_term_batch_mode") or params.get("diffing_data_set_identifier"))


def dataset_key(cfg: GuardConfig, name: str, params: Mapping[str, Any]) -> str:
    """Which earlier imports this file is compared with."""
    ident = params.get("diffing_data_set_identifier")
    if ident:
        return f"diffing:{ident}"
    stem = re.sub(cfg.name_strip, "", name.lower()) if cfg.name_strip else name.lower()
    stem = re.sub(r"[-_. ]{2,}", lambda m: m.group()[0], stem).strip("-_. ")
    return f"name:{stem}"


def limit_for(cfg: GuardConfig, csv_type: str) -> float:
    """The largest allowed drop, in percent, for one CSV type."""
    if isinstance(cfg.max_drop_percent, Mapping):
        return float(cfg.max_drop_percent.get(csv_type, cfg.max_drop_percent.get("default", 10)))
    return float(cfg.max_drop_percent)


def judge(cfg: GuardConfig, dataset: str, before: Mapping[str, int] | None, after: Mapping[str, int]) -> Verdict:
    """Compare this file's counts (``after``) with the last successful import's (``before``)."""
    b, a = dict(before or {}), dict(after)
    if not before:
        return Verdict(False, "no earlier import of this data set to compare with", dataset, b, a)
    reasons = []
    for t, old in sorted(b.items()):
        new = a.get(t, 0)
        if old <= 0:
            continue
        if new == 0:
            reasons.append(f"no {t} rows (the last import had {old})")
            continue
        drop = 100.0 * (old - new) / old
        if drop > limit_for(cfg, t):
            reasons.append(f"{t} fell from {old} to {new} rows (-{drop:.1f}%, limit {limit_for(cfg, t):g}%)")
    if reasons:
        return Verdict(True, "; ".join(reasons), dataset, b, a)
    return Verdict(False, "row counts within the limits", dataset, b, a)
