"""The local pre-flight check: would Canvas choke on this file, and why.

Run on every dropped file before anything is posted, and by ``sisdropd validate``. It
follows Canvas's own reading of a SIS upload (../shared/reference/canvas-sis-api.md
sections 2 and 10) closely enough that a file it passes is one Canvas will at least start
importing, and a file it refuses is one Canvas would fail, import nothing from, or that is
unsafe to open at all. Everything is bounded: a file is never followed through a symbolic
link, never read whole into memory, a zip member is never decompressed past the size its
entry declares, and an XML file is never allowed to declare entities.

The package, one module per concern:

- ``check``: the entry points. ``check_path(path)`` for a dropped file (the daemon,
  ``sisdropd validate``); ``check_fd(fd)`` for an open descriptor, read with pread only,
  which can also hash a zip in a pass bracketed by fstat; ``check_open(f)`` for a file
  object; ``check_kind(fd)``, the part that reads no content, for a caller that feeds
  ``CsvCheck`` the blocks it posts. ``files``: opening a file safely, and what its name says it is.
- ``report``: the ``Report`` with its ``Problem``s and ``Member``s, and the ``Limits``.
- ``csvcheck``: ``CsvCheck``, the push API (feed a CSV's blocks as they are read and
  sent, get check_path's Report and the SHA-256 at the end), over ``csvbytes`` (every
  byte: UTF-8, quoting, line and record ends, fatal) and ``csvrows`` (the first records
  parsed row by row: header, required values, statuses), ``csvheader`` (a header in words).
- ``zipcheck`` (with ``zipdirectory``: the end record and entry limits, read by hand),
  ``xmlcheck``: the check of a zip and of an XML file.
- ``sisformat``: the SIS CSV type table (shared with the simulator); ``params``: Canvas's
  create-parameter rules (``check_import_params``), light enough for ``config`` to import.
- ``truncation``: ``looks_truncated``, asked before a settled file is taken.

Importing this package costs only ``params``: the rest is imported on first use of a name
below, so that every command (which imports ``config``) does not pay for csv, zipfile and
expat.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sisdropd.preflight.params import IMPORT_PARAMS, check_import_params

if TYPE_CHECKING:  # the names __getattr__ hands out, for type checkers ("as" re-exports)
    from sisdropd.preflight.check import check_fd as check_fd
    from sisdropd.preflight.check import check_kind as check_kind
    from sisdropd.preflight.check import check_open as check_open
    from sisdropd.preflight.check import check_path as check_path
    from sisdropd.preflight.check import settled_stat as settled_stat
    from sisdropd.preflight.check import stat_identity as stat_identity
    from sisdropd.preflight.csvcheck import CsvCheck as CsvCheck
    from sisdropd.preflight.csvrows import DEEP_BYTES as DEEP_BYTES
    from sisdropd.preflight.csvrows import MAX_RECORD_BYTES as MAX_RECORD_BYTES
    from sisdropd.preflight.report import Limits as Limits
    from sisdropd.preflight.report import Member as Member
    from sisdropd.preflight.report import Problem as Problem
    from sisdropd.preflight.report import Report as Report
    from sisdropd.preflight.truncation import looks_truncated as looks_truncated
    from sisdropd.preflight.xmlcheck import XML_IMPORT_TYPES as XML_IMPORT_TYPES

# name -> the module of this package that defines it, imported on first use
_LAZY: dict[str, str] = {
    "check_path": "check",
    "check_fd": "check",
    "check_kind": "check",
    "check_open": "check",
    "settled_stat": "check",
    "stat_identity": "check",
    "CsvCheck": "csvcheck",
    "Report": "report",
    "Problem": "report",
    "Member": "report",
    "Limits": "report",
    "XML_IMPORT_TYPES": "xmlcheck",
    "DEEP_BYTES": "csvrows",
    "MAX_RECORD_BYTES": "csvrows",
    "looks_truncated": "truncation",
}

__all__ = ["IMPORT_PARAMS", "check_import_params", *_LAZY]


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups find it without coming back here
    return value
