"""``sisdropd validate -c FILE`` judges a file by the rules ``submit`` posts it under.

In-process runs of the two commands on real files in tmp_path. Canvas is a closed port on
127.0.0.1: every file here is refused (or passed) before anything would be sent.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from sisdropd import cli
from tests.support import TOKEN, USERS, write_config


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A writer of the config file (``[canvas]`` and ``[folders]`` filled in), with a token set."""
    monkeypatch.setenv("SISDROPD_TOKEN", TOKEN)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def write(**sections: dict[str, Any]) -> Path:
        base = {"canvas": {"base_url": f"http://127.0.0.1:{port}", "timeout": 1}, "folders": {"root": str(tmp_path / "drop")}}
        return write_config(tmp_path / "c.toml", {**base, **sections})

    return write


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, (out.out + out.err).splitlines()


def test_validate_with_a_config_applies_watch_max_bytes_as_submit_does(tmp_path: Path, config: Any, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "users.csv"
    f.write_text(USERS)
    size = f.stat().st_size
    cfg = str(config(watch={"max_bytes": size - 1}))
    code, submitted = run(capsys, "-c", cfg, "submit", str(f))
    assert code == 1 and submitted == [f"rejected: users.csv: is {size} bytes: too big to post (the limit is {size - 1} bytes)"]
    code, validated = run(capsys, "-c", cfg, "validate", str(f))
    assert code == 1 and validated == [f"{f}: is {size} bytes: too big to post (the limit is {size - 1} bytes)"]
    # Without the config, the default limit: the same file is fine.
    code, plain = run(capsys, "-c", str(config()), "validate", str(f))
    assert code == 0 and plain == [f"{f}: ok (csv: users 2)"]


def test_validate_with_a_config_checks_content_only_when_watch_validate_is_on(
    tmp_path: Path, config: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "custom.csv"
    f.write_text("a,b\n1,2\n")  # no SIS CSV type: what a custom import type might read
    code, lines = run(capsys, "-c", str(config()), "validate", str(f))
    assert code == 1 and any("header" in line for line in lines), lines
    code, lines = run(capsys, "-c", str(config(watch={"validate": False})), "validate", str(f))
    assert code == 0 and lines == [f"{f}: ok (csv: no rows)"]


def test_validate_and_check_warn_of_an_import_type_stock_canvas_lacks(
    tmp_path: Path, config: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in import_type passes the check, and Canvas answers its post with HTTP 500:
    validate and check say so before anything is posted (a warning: a plugin may add types)."""
    (tmp_path / "users.csv").write_text(USERS)
    cfg = config(**{"import": {"import_type": "instructure_csvv"}})
    code, lines = run(capsys, "validate", "-c", str(cfg), str(tmp_path / "users.csv"))
    assert code == 0, lines
    assert lines[0].startswith("warning: config: import.import_type: 'instructure_csvv' is not stock Canvas's type"), lines
    assert "HTTP 500" in lines[0] and lines[1].endswith("users.csv: ok (csv: users 2)"), lines
    code, lines = run(capsys, "check", "-c", str(cfg))
    assert any(x.startswith("warning: config: import.import_type: 'instructure_csvv'") for x in lines), lines
    code, lines = run(capsys, "validate", "--import-type", "instructure_csv", str(tmp_path / "users.csv"))
    assert code == 0 and not [x for x in lines if x.startswith("warning")], lines
