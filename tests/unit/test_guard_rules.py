"""The change guard's judgement: when it applies, which data set a file belongs to, and when it holds."""

from __future__ import annotations

import pytest

from sisdropd import guard
from sisdropd.config import GuardConfig

PLAIN = {"import_type": "instructure_csv"}


@pytest.mark.parametrize(
    "params",
    [
        {**PLAIN, "batch_mode": True, "batch_mode_term_id": "sis_term_id:2026FA"},
        {**PLAIN, "multi_term_batch_mode": True},
        {**PLAIN, "diffing_data_set_identifier": "nightly"},
    ],
)
def test_the_guard_applies_to_batch_mode_and_diffing_imports(params: dict) -> None:
    assert guard.applies(GuardConfig(), params)


def test_the_guard_is_off_for_plain_imports_unless_all_imports_is_set() -> None:
    assert not guard.applies(GuardConfig(), PLAIN)
    assert not guard.applies(GuardConfig(), {**PLAIN, "batch_mode": False})
    assert guard.applies(GuardConfig(all_imports=True), PLAIN)


def test_the_data_set_is_the_diffing_identifier_else_the_name_without_digits() -> None:
    cfg = GuardConfig()
    assert guard.dataset_key(cfg, "users_20261127.csv", {"diffing_data_set_identifier": "nightly"}) == "diffing:nightly"
    assert guard.dataset_key(cfg, "Users_20261127.csv", PLAIN) == guard.dataset_key(cfg, "users_20261128.csv", PLAIN)
    assert guard.dataset_key(cfg, "users-2026-11-27.csv", PLAIN) == "name:users-csv"  # runs of separators collapse to one
    assert guard.dataset_key(cfg, "users.csv", PLAIN) != guard.dataset_key(cfg, "enrollments.csv", PLAIN)
    assert guard.dataset_key(GuardConfig(name_strip=r"_\d{8}"), "users_20261127_v2.csv", PLAIN) == "name:users_v2.csv"


def test_no_earlier_import_means_nothing_to_compare_and_no_hold() -> None:
    v = guard.judge(GuardConfig(), "name:users.csv", None, {"users": 3})
    assert not v.hold and v.why == "no earlier import of this data set to compare with"


def test_a_drop_within_the_limit_passes_and_one_beyond_it_is_held() -> None:
    cfg = GuardConfig(max_drop_percent=10)
    assert not guard.judge(cfg, "d", {"users": 100}, {"users": 90}).hold  # exactly 10%: allowed
    assert not guard.judge(cfg, "d", {"users": 100}, {"users": 500}).hold  # growth is never held
    v = guard.judge(cfg, "d", {"users": 100}, {"users": 89})
    assert v.hold and v.why == "users fell from 100 to 89 rows (-11.0%, limit 10%)"
    assert v.table() == [{"type": "users", "last_import": 100, "this_file": 89, "change_percent": -11.0}]


def test_a_type_that_disappears_is_held_and_a_new_type_is_not() -> None:
    v = guard.judge(GuardConfig(), "d", {"users": 5, "enrollments": 5}, {"users": 5})
    assert v.hold and v.why == "no enrollments rows (the last import had 5)"
    assert not guard.judge(GuardConfig(), "d", {"users": 5}, {"users": 5, "courses": 2}).hold
    assert not guard.judge(GuardConfig(), "d", {"users": 0}, {"users": 0}).hold  # nothing to lose


def test_limits_per_csv_type_with_a_default() -> None:
    cfg = GuardConfig(max_drop_percent={"users": 5, "default": 50})
    assert guard.limit_for(cfg, "users") == 5 and guard.limit_for(cfg, "enrollments") == 50
    v = guard.judge(cfg, "d", {"users": 100, "enrollments": 100}, {"users": 94, "enrollments": 60})
    assert v.hold and v.why == "users fell from 100 to 94 rows (-6.0%, limit 5%)"
    assert guard.limit_for(GuardConfig(max_drop_percent={"users": 5}), "courses") == 10  # no default: 10
