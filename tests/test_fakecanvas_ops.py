"""The simulator as operators and other helpers meet it: its command, its control endpoints
beyond loopback, undo (restore_states with its Progress), the emergency stop
(abort_all_pending), permissions, and the package's own shape.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import requests


def test_main_serves_until_sigterm(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sisdropd.simulator", "--port", "0", "--token", "cmd-token"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+) ", line)
        assert url, line
        assert "cmd-token" in line and "account_id=1" in line
        r = requests.get(
            f"{url.group(1)}/api/v1/users/self", headers={"Authorization": "Bearer cmd-token"}
        )
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- the package's shape -------------------------------------------------------------------------

SIM_DIR = Path(__file__).resolve().parents[1] / "sisdropd" / "simulator"


def _simulator_imports() -> dict[str, set[str]]:
    """Each simulator module's imports of other simulator modules, TYPE_CHECKING ones too."""
    import ast

    graph: dict[str, set[str]] = {}
    for path in sorted(SIM_DIR.glob("*.py")):
        name = path.stem
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                mod = node.module
                if node.level:  # relative: from .x import y / from . import x
                    mod = f"sisdropd.simulator.{mod}" if mod else "sisdropd.simulator"
                if mod == "sisdropd.simulator":
                    deps |= {a.name for a in node.names}
                elif mod.startswith("sisdropd.simulator."):
                    deps.add(mod.split(".")[2])
                elif mod == "sisdropd" and any(a.name == "simulator" for a in node.names):
                    deps.add("__init__")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("sisdropd.simulator."):
                        deps.add(a.name.split(".")[2])
        graph[name] = deps - {name}
    return graph


def test_simulator_package_has_no_cycles_and_parts_never_import_the_facade() -> None:
    graph = _simulator_imports()
    assert {"facade", "http", "upload", "store", "runner", "content", "model", "context"} <= set(
        graph
    )
    users_of_facade = {m for m, deps in graph.items() if "facade" in deps or "__init__" in deps}
    assert users_of_facade <= {"__init__", "command"}, users_of_facade
    assert "http" not in graph["context"] and "facade" not in graph["http"]

    def visit(node: str, path: list[str]) -> None:
        assert node not in path, f"import cycle: {' -> '.join([*path, node])}"
        for dep in graph.get(node, ()):
            visit(dep, [*path, node])

    for module in graph:
        visit(module, [])
    for path in SIM_DIR.glob("*.py"):
        lines = len(path.read_text().splitlines())
        assert lines <= 600, f"{path.name} has {lines} lines"
