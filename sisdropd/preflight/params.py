"""Canvas's create parameters: which [import] settings Canvas would refuse, and why.

Light on purpose (no CSV, zip or XML machinery): ``sisdropd.config`` imports it for every
command to check the [import] table and each [[rules]] entry before anything is posted.
The rules come from ../shared/reference/canvas-sis-api.md sections 2.1, 2.4 and 7; beside
them, ``sisformat`` holds the SIS CSV type table of section 10.

Two lists: ``check_import_params``'s mistakes (the config is refused) and
``import_param_warnings``'s doubts, for what a plugin may make right (said, never refused).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

_BOOLEANS = (
    "batch_mode",
    "multi_term_batch_mode",
    "skip_deletes",
    "override_sis_stickiness",
    "add_sis_stickiness",
    "clear_sis_stickiness",
    "update_sis_id_if_login_claimed",
    "diffing_remaster_data_set",
)
_DROP_STATUSES = ("deleted", "completed", "inactive", "deleted_last_completed")
_ENUMS: dict[str, tuple[str, ...]] = {
    "diffing_drop_status": _DROP_STATUSES,
    "batch_mode_enrollment_drop_status": _DROP_STATUSES,
    "diffing_user_remove_status": ("deleted", "suspended"),
}
IMPORT_PARAMS: tuple[str, ...] = (
    "import_type",
    "extension",
    *_BOOLEANS,
    "batch_mode_term_id",
    "diffing_data_set_identifier",
    *_ENUMS,
    "change_threshold",
    "diff_row_count_threshold",
)
"""Canvas's create parameters that [import] may set (all but the ``attachment`` itself)."""


#: The one import type stock Canvas has; a plugin (or Instructure's hosting) may add others (section 2.1).
STOCK_IMPORT_TYPE = "instructure_csv"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_import_params(params: Mapping[str, object]) -> list[str]:
    """Check the [import] table before anything is posted.

    Given the table as configured (keys are Canvas create parameter names, values str, bool
    or int). Returns one message per mistake, each starting ``import.<key>:``; an empty list
    means fine. These are the parameters Canvas rejects only after saving a batch that then
    stays ``initializing`` for ever (reference section 2.4), or that silently change what an
    import does. Never raises.
    """
    out: list[str] = []
    for key, value in params.items():
        if key not in IMPORT_PARAMS:
            out.append(
                f"import.{key}: unknown parameter; known: {', '.join(sorted(IMPORT_PARAMS))}"
            )
        elif key == "import_type":
            if not isinstance(value, str) or not value.strip():
                out.append(
                    "import.import_type: must be a non-empty string "
                    '("instructure_csv" is the only type stock Canvas has)'
                )
        elif key == "extension":
            if value not in ("csv", "zip", "xml"):
                out.append(f'import.extension: {value!r} is none of "csv", "zip", "xml"')
        elif key in _BOOLEANS:
            if not isinstance(value, bool):
                out.append(f"import.{key}: must be true or false, not {value!r}")
        elif key in _ENUMS:
            if value not in _ENUMS[key]:
                allowed = ", ".join(_ENUMS[key])
                out.append(f"import.{key}: {value!r} is not one of {allowed}")
        elif key == "change_threshold":
            if not _is_int(value) or not 1 <= value <= 100:  # type: ignore[operator]
                out.append(
                    f"import.change_threshold: must be a whole number 1 to 100, not {value!r}"
                )
        elif key == "diff_row_count_threshold":
            if not _is_int(value) or value <= 0:  # type: ignore[operator]
                out.append(
                    f"import.diff_row_count_threshold: must be a whole number above 0, not {value!r}"
                )
        elif key == "diffing_data_set_identifier":
            if not isinstance(value, str) or not value.strip():
                out.append("import.diffing_data_set_identifier: must be a non-empty string")
            elif len(value) > 128:
                out.append(
                    f"import.diffing_data_set_identifier: {len(value)} characters, Canvas allows 128"
                )
        elif key == "batch_mode_term_id":
            if not (_is_int(value) or (isinstance(value, str) and value.strip())):
                out.append(
                    "import.batch_mode_term_id: must be a term id or sis_term_id:<id>, "
                    f"not {value!r}"
                )
    if params.get("batch_mode") is True and "batch_mode_term_id" not in params:
        if "multi_term_batch_mode" not in params:
            out.append(
                "import.batch_mode: true needs batch_mode_term_id (or multi_term_batch_mode); "
                "Canvas answers 400"
            )
    if "multi_term_batch_mode" in params:
        if params["multi_term_batch_mode"] is False:
            out.append(
                "import.multi_term_batch_mode: Canvas turns multi-term batch mode on whenever "
                "the parameter is sent, even as false; remove the key instead"
            )
        if "change_threshold" not in params:
            out.append(
                "import.multi_term_batch_mode: needs change_threshold; Canvas answers 400 and "
                "leaves the import stuck in initializing"
            )
    if params.get("override_sis_stickiness") is not True:
        for key in ("add_sis_stickiness", "clear_sis_stickiness"):
            if params.get(key) is True:
                out.append(f"import.{key}: only works with override_sis_stickiness = true")
    return out


def import_param_warnings(params: Mapping[str, object]) -> list[str]:
    """What in the [import] table stock Canvas would not take, but a plugin might: warnings,
    never refusals (``check_import_params`` has those), each starting ``import.<key>:``.

    An ``import_type`` other than ``instructure_csv`` (a typo, or a plugin's type): stock
    Canvas answers HTTP 500 to a create with a type it does not have (section 7), and the
    daemon fails such a file only after a few posts. Never raises.
    """
    itype = params.get("import_type", STOCK_IMPORT_TYPE)
    if isinstance(itype, str) and itype.strip() and itype != STOCK_IMPORT_TYPE:
        return [
            f"import.import_type: {itype!r} is not stock Canvas's type ({STOCK_IMPORT_TYPE}): Canvas answers "
            "HTTP 500 to a type it does not have (fine if this Canvas adds it: a plugin, or Instructure's hosting for ims_xml)"
        ]
    return []


def config_warnings(import_params: Mapping[str, object], rules: Iterable[Mapping[str, object]] = ()) -> list[str]:
    """``import_param_warnings`` for the [import] table and each [[rules]] entry's own
    ``import`` table (``rules[<i>]: import.<key>: ...``), for ``check`` and the like."""
    out = import_param_warnings(import_params)
    for i, params in enumerate(rules):
        if "import_type" in params:  # else [import]'s, said once above
            out += [f"rules[{i}]: {w}" for w in import_param_warnings(params)]
    return out
