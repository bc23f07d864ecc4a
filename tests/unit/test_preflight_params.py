"""Canvas's create-parameter rules (sisdropd.preflight.params), as [import] sets them.

Every rule has a test that fails if the rule breaks.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from sisdropd.preflight import check_import_params

GOOD_PARAMS: dict[str, object] = {
    "import_type": "instructure_csv",
    "extension": "zip",
    "batch_mode": True,
    "batch_mode_term_id": "sis_term_id:2026FA",
    "skip_deletes": False,
    "override_sis_stickiness": True,
    "add_sis_stickiness": True,
    "clear_sis_stickiness": False,
    "update_sis_id_if_login_claimed": False,
    "diffing_data_set_identifier": "nightly",
    "diffing_remaster_data_set": False,
    "diffing_drop_status": "completed",
    "diffing_user_remove_status": "suspended",
    "batch_mode_enrollment_drop_status": "inactive",
    "change_threshold": 10,
    "diff_row_count_threshold": 5000,
}


def test_good_import_params_pass():
    assert check_import_params({}) == []
    assert check_import_params(GOOD_PARAMS) == []
    assert check_import_params({"import_type": "ims_xml"}) == []
    assert check_import_params({"batch_mode_term_id": 42, "batch_mode": True}) == []
    assert check_import_params({"multi_term_batch_mode": True, "change_threshold": 100}) == []
    assert (
        check_import_params(
            {"batch_mode": True, "multi_term_batch_mode": True, "change_threshold": 1}
        )
        == []
    )


def only_message(params: dict[str, object]) -> str:
    found = check_import_params(params)
    assert len(found) == 1, found
    return found[0]


def test_unknown_parameter_lists_the_known_ones():
    message = only_message({"batchmode": True})
    assert message.startswith("import.batchmode: unknown parameter")
    for known in ("batch_mode", "diff_row_count_threshold", "update_sis_id_if_login_claimed"):
        assert known in message
    assert only_message({"attachment": "x"}).startswith("import.attachment: unknown")


@pytest.mark.parametrize("value", ["", "  ", 3, None, True])
def test_import_type_must_be_a_non_empty_string(value):
    message = only_message({"import_type": value})
    assert message.startswith("import.import_type:") and "instructure_csv" in message


@pytest.mark.parametrize("value", ["txt", "CSV", ".zip", 1])
def test_extension_must_be_csv_zip_or_xml(value):
    assert only_message({"extension": value}).startswith("import.extension:")


@pytest.mark.parametrize(
    "key",
    [
        "batch_mode",
        "multi_term_batch_mode",
        "skip_deletes",
        "override_sis_stickiness",
        "add_sis_stickiness",
        "clear_sis_stickiness",
        "update_sis_id_if_login_claimed",
        "diffing_remaster_data_set",
    ],
)
def test_booleans_must_be_booleans(key):
    params: dict[str, object] = {key: "true", "change_threshold": 10, "batch_mode_term_id": "T"}
    assert [m for m in check_import_params(params) if "must be true or false" in m] == [
        f"import.{key}: must be true or false, not 'true'"
    ]


@pytest.mark.parametrize(
    ("key", "good", "bad"),
    [
        (
            "diffing_drop_status",
            ["deleted", "completed", "inactive", "deleted_last_completed"],
            "suspended",
        ),
        (
            "batch_mode_enrollment_drop_status",
            ["deleted", "completed", "inactive", "deleted_last_completed"],
            "dropped",
        ),
        ("diffing_user_remove_status", ["deleted", "suspended"], "inactive"),
    ],
)
def test_enumerations(key, good, bad):
    for value in good:
        assert check_import_params({key: value}) == []
    assert only_message({key: bad}).startswith(f"import.{key}: '{bad}' is not one of")
    assert only_message({key: "Deleted"}).startswith(f"import.{key}:")


@pytest.mark.parametrize("value", [0, 101, -5, "10", 10.0, True])
def test_change_threshold_is_a_whole_number_1_to_100(value):
    assert only_message({"change_threshold": value}).startswith("import.change_threshold:")


@pytest.mark.parametrize("value", [0, -1, "5", 2.5, True])
def test_diff_row_count_threshold_is_a_whole_number_above_0(value):
    assert only_message({"diff_row_count_threshold": value}).startswith(
        "import.diff_row_count_threshold:"
    )


def test_diffing_identifier_is_at_most_128_characters():
    assert check_import_params({"diffing_data_set_identifier": "x" * 128}) == []
    assert "129 characters" in only_message({"diffing_data_set_identifier": "x" * 129})
    assert only_message({"diffing_data_set_identifier": ""}).startswith(
        "import.diffing_data_set_identifier:"
    )
    assert only_message({"diffing_data_set_identifier": 7}).startswith(
        "import.diffing_data_set_identifier:"
    )


def test_batch_mode_term_id_must_be_an_id():
    for value in ("", True, 1.5):
        assert only_message({"batch_mode_term_id": value}).startswith("import.batch_mode_term_id:")


def test_batch_mode_needs_a_term():
    assert only_message({"batch_mode": True}).startswith(
        "import.batch_mode: true needs batch_mode_term_id"
    )
    assert check_import_params({"batch_mode": False}) == []


def test_multi_term_batch_mode_needs_change_threshold_and_is_never_false():
    assert "needs change_threshold" in only_message({"multi_term_batch_mode": True})
    message = only_message({"multi_term_batch_mode": False, "change_threshold": 5})
    assert message.startswith("import.multi_term_batch_mode:") and "even as false" in message


@pytest.mark.parametrize("key", ["add_sis_stickiness", "clear_sis_stickiness"])
def test_stickiness_flags_need_override(key):
    assert (
        only_message({key: True}) == f"import.{key}: only works with override_sis_stickiness = true"
    )
    assert "override" in only_message({key: True, "override_sis_stickiness": False})
    assert check_import_params({key: True, "override_sis_stickiness": True}) == []
    assert check_import_params({key: False}) == []


def test_the_params_rules_load_none_of_the_file_checks():
    """config checks [import] through this package on every command: that must import
    ``params`` alone, not the CSV, zip and XML machinery (csv, zipfile, expat, hashlib)."""
    code = (
        "import sys\n"
        "import sisdropd.config\n"
        "before = set(sys.modules)\n"
        "from sisdropd import preflight\n"
        "assert preflight.check_import_params({'batch_mode': True})\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['sisdropd.preflight', 'sisdropd.preflight.params']"
