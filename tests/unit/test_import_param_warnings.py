"""An import type stock Canvas does not have is said, not refused (a plugin may add it):
``import_param_warnings`` beside ``check_import_params``'s refusals."""

from __future__ import annotations

from pathlib import Path

from sisdropd import config
from sisdropd.preflight import check_import_params
from sisdropd.preflight.params import config_warnings, import_param_warnings


def test_an_import_type_stock_canvas_lacks_is_a_warning() -> None:
    assert import_param_warnings({"import_type": "instructure_csvv"}) == [
        "import.import_type: 'instructure_csvv' is not stock Canvas's type (instructure_csv): Canvas answers HTTP 500 "
        "to a type it does not have (fine if this Canvas adds it: a plugin, or Instructure's hosting for ims_xml)"
    ]
    assert len(import_param_warnings({"import_type": "ims_xml", "batch_mode": True})) == 1


def test_the_stock_type_or_none_warns_of_nothing() -> None:
    assert import_param_warnings({}) == []
    assert import_param_warnings({"import_type": "instructure_csv", "batch_mode": False}) == []
    assert import_param_warnings({"import_type": ""}) == []  # a mistake, refused by check_import_params


def test_the_config_still_loads_with_such_a_type(tmp_path: Path) -> None:
    assert check_import_params({"import_type": "instructure_csvv"}) == []  # no new refusal
    cfg = config.from_dict({
        "canvas": {"base_url": "https://canvas.example.edu"}, "folders": {"root": str(tmp_path)},
        "import": {"import_type": "instructure_csvv"},
    })
    assert cfg.import_type == "instructure_csvv"
    assert len(import_param_warnings(cfg.import_params)) == 1


def test_config_warnings_name_the_rule_that_sets_the_type() -> None:
    assert config_warnings({"import_type": "instructure_csv"}, [{"batch_mode": True}, {"import_type": "typo"}]) == [
        "rules[1]: " + import_param_warnings({"import_type": "typo"})[0]
    ]
    assert len(config_warnings({"import_type": "typo"}, [{"batch_mode": True}])) == 1  # [import]'s, said once
