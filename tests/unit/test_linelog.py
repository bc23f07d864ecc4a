"""submit's logger without loguru writes exactly the lines the daemon's text sink writes."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sisdropd import linelog, logs
from sisdropd.config import LogConfig

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ")


@pytest.fixture
def loguru_lines() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.setup(LogConfig(level="DEBUG"), stream=out)
    yield out
    logs.setup(None)


def emit(e: Any) -> None:
    """What submit's code paths log, through either logger."""
    e.info("posting {} bytes as {}", 61, "sisdrop-0-users.csv")
    e.bind(import_id=4821).success("posted: import {}", 4821)
    e.warning("a line\nforged by a file name, and the token s3cr3t-token-value")
    e.log("ERROR", "Canvas {}: {}", "error", "users.csv: bad row")
    e.debug("progress {}%", 50)


def test_the_same_lines_as_the_daemons_text_sink(loguru_lines: io.StringIO) -> None:
    logs.add_secret("s3cr3t-token-value")
    ours = io.StringIO()
    emit(linelog.LineLogger("DEBUG", ours).bind(file="users\n.csv"))
    emit(logs.event("users\n.csv"))
    theirs = loguru_lines.getvalue().splitlines()
    mine = ours.getvalue().splitlines()
    assert all(STAMP.match(line) for line in mine + theirs)
    assert [STAMP.sub("", line) for line in mine] == [STAMP.sub("", line) for line in theirs]
    assert "s3cr3t-token-value" not in ours.getvalue() and "[REDACTED]" in ours.getvalue()
    assert len(mine) == 5  # one event, one line: the newline is escaped


def test_levels_below_the_configured_one_are_dropped() -> None:
    out = io.StringIO()
    log = linelog.LineLogger("WARNING", out).bind(file="users.csv")
    log.info("not shown")
    log.debug("not shown")
    log.warning("shown")
    assert [STAMP.sub("", line) for line in out.getvalue().splitlines()] == ["WARNING users.csv: shown"]


def test_loguru_is_used_when_the_config_asks_for_more_than_text_on_stderr(tmp_path: Path) -> None:
    assert linelog.for_command(LogConfig()) is not logs.event
    try:
        assert linelog.for_command(LogConfig(format="json")) is logs.event
        assert linelog.for_command(LogConfig(file=str(tmp_path / "x.log"))) is logs.event
    finally:
        logs.setup(None)
