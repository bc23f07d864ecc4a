"""A CSV's header row in words: what Canvas would say of one it cannot use, and a hint why.

Canvas recognises a SIS CSV by its header alone (reference section 10, ``sisformat``);
for a header that matches no type, or lacks a type's required columns, these say so the
way Canvas would, then guess at the cause (a zip or UTF-16 file, another separator, a
misspelt column) so that the person who sent the file can fix it.
"""

from __future__ import annotations

from sisdropd.preflight import sisformat
from sisdropd.preflight.report import SHOWN, printable
from sisdropd.preflight.sisformat import CsvType


def missing_columns(t: CsvType, header: list[str]) -> str | None:
    """Why a recognised ``header`` (normalised) lacks required columns, or None."""
    if not t.validated:
        return None
    present = set(header)
    missing = [g for g in t.required if not any(c in present for c in g)]
    if not missing:
        return None
    names = ", ".join(" or ".join(g) for g in missing)
    return (
        f"{t.name} CSV without the required column{'s' if len(missing) > 1 else ''} "
        f"{names}: Canvas would skip every row with a warning and import nothing"
    )


def unrecognised(row: list[str], first_line: str) -> str:
    """Canvas's message for a header that matches no type, with what we saw and a hint."""
    seen = printable(",".join(row), SHOWN)
    message = f'{sisformat.UNRECOGNISED_HEADER}: the header "{seen}" matches no SIS CSV type'
    hint = _header_hint(row, first_line)
    return f"{message} ({hint})" if hint else message


def _header_hint(row: list[str], first_line: str) -> str:
    """A cheap guess at why a header was not recognised, or ''."""
    if first_line.startswith("PK\x03\x04"):
        return "the file is a zip archive or an Excel workbook, not CSV text"
    if first_line[:2] in ("\udcff\udcfe", "\udcfe\udcff"):
        return "the file is UTF-16 text; save it as CSV UTF-8"
    odd = sum(1 for c in first_line if "\udc80" <= c <= "\udcff" or (c < " " and c not in "\t\r\n"))
    if first_line and odd * 10 > len(first_line):  # a tenth of its first line is no text at all
        return "the file does not look like text: is it a CSV at all?"
    if len(row) == 1:
        for sep, sep_name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
            if sep in row[0]:
                return f"its columns are separated by {sep_name}; Canvas reads commas only"
    import difflib  # here: only a header that names no type needs it

    header = sisformat.normalise_header(row)
    renames, fixed = [], []
    for cell in header if len(header) <= _MAX_FUZZY_CELLS else ():
        guess = cell.replace(" ", "_").replace("-", "_")
        match = difflib.get_close_matches(guess, _COLUMNS, n=1, cutoff=0.75)
        if cell not in _COLUMNS and match:
            renames.append(f'"{printable(cell, 40)}" as {match[0]}')
            fixed.append(match[0])
        else:
            fixed.append(cell)
    fixed_type = sisformat.recognise(fixed) if renames else None
    if fixed_type is not None:
        return f"with {', '.join(renames)} it would read as {fixed_type.name}"
    # Else the one type whose required columns it comes closest to, if there is one.
    present = set(header)
    scored = []
    for t in sisformat.CSV_TYPES:
        groups = [g for g in t.required if g != ("status",)]
        lacking = [" or ".join(g) for g in groups if not any(c in present for c in g)]
        if len(lacking) < len(groups):
            scored.append((len(groups) - len(lacking), -len(lacking), t.name, lacking))
    scored.sort(reverse=True)
    if not scored or (len(scored) > 1 and scored[0][:2] == scored[1][:2]):
        return ""
    _, _, name, lacking = scored[0]
    return f"closest to {name}, which also needs {', '.join(lacking)}"


# Every column name the type table requires: the words a mistyped header cell is matched to.
_COLUMNS = sorted({c for t in sisformat.CSV_TYPES for g in t.required for c in g})
_MAX_FUZZY_CELLS = 64  # wider headers get no spelling hint: difflib per cell is not free
