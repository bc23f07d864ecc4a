"""What Canvas knows about SIS CSV files: how a header names its type, and each type's rules.

One table, read by both the pre-flight check (the rest of ``sisdropd.preflight``) and the
simulator, so the two can never disagree about what Canvas would do with a file.
Source: ../shared/reference/canvas-sis-api.md section 10 (canvas-lms ``lib/sis/csv/*_importer.rb``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

Header = frozenset[str]
RowChecker = Callable[[list[str]], list[str]]  # a row's warnings (see ``row_checker``)


@dataclass(frozen=True)
class CsvType:
    """One SIS CSV importer.

    ``name`` is Canvas's plural count key (``users``, ``enrollments``), ``singular`` its
    ``supplied_batches`` name. ``required`` is a tuple of alternatives: each entry is a tuple
    of column names of which at least one must be present (and non-empty on every row).
    ``statuses`` are the allowed lower-cased values of the ``status`` column, or empty when
    the type has no status column. ``validated`` is False for types Canvas knows but whose
    rules we only recognise.
    """

    name: str
    singular: str
    matches: Callable[[Header], bool]
    required: tuple[tuple[str, ...], ...]
    statuses: frozenset[str]
    validated: bool = True


def _all(*cols: str) -> Callable[[Header], bool]:
    return lambda h: all(c in h for c in cols)


_EXISTING = ("existing_user_id", "existing_integration_id", "existing_canvas_user_id")

# Canvas's importer order: the first type whose test matches a header wins.
CSV_TYPES: tuple[CsvType, ...] = (
    CsvType(
        "change_sis_ids",
        "change_sis_id",
        lambda h: "old_id" in h or "old_integration_id" in h,
        (("old_id", "old_integration_id"), ("new_id", "new_integration_id"), ("type",)),
        frozenset(),
    ),
    CsvType(
        "accounts",
        "account",
        _all("account_id", "parent_account_id"),
        (("account_id",), ("name",), ("status",)),
        frozenset({"active", "deleted"}),
    ),
    CsvType(
        "terms",
        "term",
        _all("term_id", "name"),
        (("term_id",), ("name",), ("status",)),
        frozenset({"active", "deleted"}),
    ),
    CsvType(
        "abstract_courses",
        "abstract_course",
        lambda h: "abstract_course_id" in h and "short_name" in h and "course_id" not in h,
        (("abstract_course_id",), ("short_name",), ("long_name",), ("status",)),
        frozenset({"active", "deleted"}),
    ),
    CsvType(
        "courses",
        "course",
        _all("course_id", "short_name"),
        (("course_id",), ("short_name",), ("long_name",), ("status",)),
        frozenset({"active", "deleted", "completed", "published", "unpublished"}),
    ),
    CsvType(
        "sections",
        "section",
        _all("section_id", "name"),
        (("section_id",), ("course_id",), ("name",), ("status",)),
        frozenset({"active", "deleted"}),
    ),
    CsvType(
        "xlists",
        "xlist",
        _all("xlist_course_id", "section_id"),
        (("xlist_course_id",), ("section_id",), ("status",)),
        frozenset({"active", "deleted"}),
    ),
    CsvType(
        "users",
        "user",
        lambda h: "user_id" in h and "login_id" in h and not any(c in h for c in _EXISTING),
        (("user_id",), ("login_id",), ("status",)),
        frozenset({"active", "suspended", "deleted"}),
    ),
    CsvType(
        "logins",
        "login",
        lambda h: any(c in h for c in _EXISTING),
        (("user_id",), ("login_id",), _EXISTING),
        frozenset(),
    ),
    CsvType(
        "enrollments",
        "enrollment",
        lambda h: ("course_id" in h or "section_id" in h)
        and ("user_id" in h or "user_integration_id" in h),
        (
            ("course_id", "section_id"),
            ("user_id", "user_integration_id"),
            ("role", "role_id"),
            ("status",),
        ),
        frozenset({"active", "deleted", "completed", "inactive", "deleted_last_completed"}),
    ),
    CsvType(
        "admins",
        "admin",
        _all("user_id", "account_id"),
        (("user_id",), ("role", "role_id"), ("status",)),
        frozenset({"active", "deleted"}),
    ),
    CsvType(
        "group_categories",
        "group_category",
        _all("group_category_id", "category_name"),
        (("group_category_id",), ("category_name",), ("status",)),
        frozenset({"active", "deleted"}),
    ),
    CsvType(
        "groups",
        "group",
        _all("group_id", "name"),
        (("group_id",), ("name",), ("status",)),
        frozenset({"available", "deleted"}),
    ),
    CsvType(
        "group_memberships",
        "group_membership",
        _all("group_id", "user_id"),
        (("group_id",), ("user_id",), ("status",)),
        frozenset({"accepted", "deleted"}),
    ),
    CsvType(
        "grade_publishing_results",
        "grade_publishing_result",
        _all("enrollment_id", "grade_publishing_status"),
        (("enrollment_id",), ("grade_publishing_status",)),
        frozenset(),
    ),
    CsvType(
        "user_observers",
        "user_observer",
        _all("observer_id", "student_id"),
        (("observer_id",), ("student_id",), ("status",)),
        frozenset({"active", "deleted"}),
    ),
    # Newer importers: recognised so that a file of theirs is not refused, not validated.
    CsvType(
        "differentiation_tag_sets",
        "differentiation_tag_set",
        _all("tag_set_id", "set_name"),
        (),
        frozenset(),
        validated=False,
    ),
    CsvType(
        "differentiation_tags",
        "differentiation_tag",
        _all("tag_id", "name"),
        (),
        frozenset(),
        validated=False,
    ),
    CsvType(
        "differentiation_tag_memberships",
        "differentiation_tag_membership",
        _all("tag_id", "user_id"),
        (),
        frozenset(),
        validated=False,
    ),
    CsvType(
        "institutional_tag_associations",
        "institutional_tag_association",
        _all("institutional_tag_id", "user_id"),
        (),
        frozenset(),
        validated=False,
    ),
    CsvType(
        "institutional_tags",
        "institutional_tag",
        _all("institutional_tag_id", "category_id", "name"),
        (),
        frozenset(),
        validated=False,
    ),
    CsvType(
        "institutional_tag_categories",
        "institutional_tag_category",
        _all("category_id", "name"),
        (),
        frozenset(),
        validated=False,
    ),
)

# The count keys Canvas reports in data.counts, in its order (plus error/warning counts).
COUNT_KEYS: tuple[str, ...] = (
    "change_sis_ids",
    "accounts",
    "terms",
    "abstract_courses",
    "courses",
    "sections",
    "xlists",
    "users",
    "logins",
    "enrollments",
    "admins",
    "group_categories",
    "groups",
    "group_memberships",
    "grade_publishing_results",
    "user_observers",
)

UNRECOGNISED_HEADER = "Couldn't find Canvas CSV import headers"

# Zip entries Canvas skips without a word (Finder and old Mac file-server litter).
IGNORED_ZIP_NAMES = ("desktop.db", "desktop.df")


def normalise_header(cells: Iterable[str]) -> list[str]:
    """Header cells as Canvas compares them: trimmed and lower-cased (BOM already stripped)."""
    return [c.strip().lstrip("\ufeff").strip().lower() for c in cells]


def recognise(header: Iterable[str]) -> CsvType | None:
    """Return the SIS CSV type Canvas would read a file with this header row as, or None."""
    h = frozenset(normalise_header(header))
    for t in CSV_TYPES:
        if t.matches(h):
            return t
    return None


_IGNORED_ZIP = re.compile(r"__macosx|desktop d[bf]", re.IGNORECASE)


def zip_entry_ignored(name: str) -> bool:
    """True for zip entries Canvas never sees or skips silently.

    Canvas lists extracted files with ``Dir["**/**"]`` (hidden files and folders are not
    listed) and drops paths matching ``/__macosx|desktop d[bf]/i`` anywhere; folders
    themselves are not files.
    """
    norm = name.replace("\\", "/")
    parts = [p for p in norm.split("/") if p]
    if norm.endswith("/") or not parts:
        return True
    if any(p.startswith(".") for p in parts):
        return True
    return bool(_IGNORED_ZIP.search(norm)) or parts[-1].lower() in IGNORED_ZIP_NAMES


def row_problems(t: CsvType, header: list[str], row: list[str]) -> list[str]:
    """Canvas's row-level warnings for one data row of type ``t`` (empty list: row is fine).

    ``header`` must be normalised. A missing required value or a status outside the type's
    allowed set is a warning in Canvas: the row is skipped and the import goes on.
    """
    if not t.validated:
        return []
    values = {
        col: (row[i].strip() if i < len(row) else "") for i, col in enumerate(header)
    }
    out: list[str] = []
    for alternatives in t.required:
        if not any(values.get(c) for c in alternatives):
            out.append(f"No {' or '.join(alternatives)} given for {t.singular}")
    status = values.get("status", "")
    if t.statuses and status and status.lower() not in t.statuses:
        out.append(f'Improper status "{status}" for {t.singular}')
    return out


def row_checker(t: CsvType, header: list[str]) -> RowChecker | None:
    """``row_problems`` for many rows of one file: the column positions are worked out once.

    Returns a function of a row that gives exactly what ``row_problems(t, header, row)``
    gives (where a column name repeats, the last column of that name counts, as there), or
    None when ``t`` is not validated (no row ever has a problem).
    """
    if not t.validated:
        return None
    last = {col: i for i, col in enumerate(header)}
    # One (column positions, message) per required group; a group with no column in the
    # header warns on every row.
    required = [
        (tuple(last[c] for c in alternatives if c in last), f"No {' or '.join(alternatives)} given for {t.singular}")
        for alternatives in t.required
    ]
    status = last.get("status") if t.statuses else None
    allowed, singular = t.statuses, t.singular
    fine: list[str] = []  # returned when a row has no problem (never appended to)

    def check(row: list[str]) -> list[str]:
        size = len(row)
        out = fine
        for columns, message in required:
            for i in columns:
                if i < size and row[i].strip():
                    break
            else:
                out = [*out, message]
        if status is not None and status < size:
            value = row[status].strip()
            if value and value.lower() not in allowed:
                out = [*out, f'Improper status "{value}" for {singular}']
        return out

    return check
