"""What in inbox/ is ours: ``eligible`` is the contract's point 1."""

from __future__ import annotations

TEMP_SUFFIXES = (".part", ".filepart", ".tmp", ".partial")


def eligible(name: str, extensions: tuple[str, ...] | list[str]) -> bool:
    """True when an inbox entry named ``name`` is one we take (by name alone).

    Hidden names, temporary upload names (``*.part``, ``*.filepart``, ``*.tmp``,
    ``*.partial``, ``*~``) and other extensions are left alone.
    """
    if not name or name.startswith(".") or name.endswith("~"):
        return False
    lower = name.lower()
    if lower.endswith(TEMP_SUFFIXES):
        return False
    ext = lower.rsplit(".", 1)[-1] if "." in lower else ""
    return ext in {e.lower() for e in extensions}
