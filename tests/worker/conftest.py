"""The worker in-process: ``rig`` builds one against the ``sim`` fixture (see tests.support.Rig)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sisdropd import logs
from sisdropd.config import LogConfig
from sisdropd.simulator import FakeCanvas
from tests.support import Rig


@pytest.fixture
def make_rig(tmp_path: Path, sim: FakeCanvas) -> Iterator[Callable[..., Rig]]:
    """``make_rig(**sections)``: a Rig with those config sections; closed at the end."""
    made: list[Rig] = []

    def make(**sections: dict[str, Any]) -> Rig:
        rig = Rig(tmp_path, sim, **sections)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.close()


@pytest.fixture
def rig(make_rig: Callable[..., Rig]) -> Rig:
    return make_rig()


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    """The log lines the worker writes during the test, as the daemon writes them (text, DEBUG)."""
    out = io.StringIO()
    logs.setup(LogConfig(level="DEBUG"), stream=out)
    yield out
    logs.setup(None)
