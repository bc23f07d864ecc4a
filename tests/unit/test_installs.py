"""What gets installed, and what reads the metrics (issue 14): constraints.txt pins every package
the suite ran with, within what pyproject.toml asks; every third-party module the daemon imports
is declared; the Grafana dashboard queries only metrics the daemon writes."""

from __future__ import annotations

import ast
import json
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from sisdropd import metrics
from tests.support import REPO

DASHBOARD = REPO / "contrib" / "grafana" / "sisdropd-dashboard.json"


def pins() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not name==version"
            out[canonicalize_name(name)] = version
    return out


def requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["test"]]]


def closure(reqs: list[Requirement]) -> set[str]:
    """Every distribution the requirements pull in, as installed here."""
    todo, seen = [canonicalize_name(r.name) for r in reqs], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for raw in metadata.requires(name) or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def test_constraints_pin_everything_within_pyproject() -> None:
    pinned = pins()
    for req in requirements():
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is not in constraints.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), f"{name}=={pinned[name]} is outside {req}"
    missing = closure(requirements()) - set(pinned)
    assert not missing, f"installed with the project but not pinned: {sorted(missing)}"


def test_the_suite_runs_with_the_pinned_versions() -> None:
    """What is installed now is what constraints.txt says (pip install -c constraints.txt ...)."""
    wrong = {
        name: (metadata.version(name), version)
        for name, version in pins().items()
        if name in closure(requirements()) and metadata.version(name) != version
    }
    assert not wrong, f"installed != pinned (reinstall with -c constraints.txt, or update it): {wrong}"


def test_every_server_install_and_ci_use_the_constraints() -> None:
    """A server gets what the suite ran with: each `pip install` of the project in INSTALL.md,
    in the README's server install and in .ci/run passes -c constraints.txt (the README's
    one-line demo excepted: a throwaway venv)."""
    demo = "&& .venv/bin/sisdropd demo"
    lines = [
        f"{path.relative_to(REPO)}: {line.strip()}"
        for path in (REPO / "systemd" / "INSTALL.md", REPO / "README.md", REPO / ".ci" / "run")
        for line in path.read_text().splitlines()
        if re.search(r"pip install\b.*(?:\s\.(?=[\s`'\"]|$)|'\.\[|\.whl)", line) and demo not in line
    ]
    assert len(lines) >= 8, lines  # the rule sees the installs it is about (backticked ones too)
    assert [line for line in lines if "-c constraints.txt" not in line] == []


def test_every_third_party_import_of_the_daemon_is_declared() -> None:
    declared = {canonicalize_name(r.name) for r in requirements()[: len(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])]}
    providers = metadata.packages_distributions()
    used: set[str] = set()
    for path in (REPO / "sisdropd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for n in names:
                top = n.split(".")[0]
                if top and top != "sisdropd" and top not in sys.stdlib_module_names:
                    used.update(canonicalize_name(d) for d in providers.get(top, [top]))
    assert "lockfile" in used  # the pid file of --detach
    assert used <= declared, f"imported but not in [project] dependencies: {sorted(used - declared)}"


def test_pytest_worker_count_is_not_hard_wired() -> None:
    addopts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    assert "-n auto" in addopts and not re.search(r"-n \d", addopts)


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in doc["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_the_dashboard_queries_only_metrics_the_daemon_writes() -> None:
    used = {m for e in dashboard_exprs() for m in re.findall(r"\b(sisdropd_[a-z_]+)\b", e)}
    assert used, "no sisdropd metric queried"
    assert used <= set(metrics.KNOWN), sorted(used - set(metrics.KNOWN))
    # What an operator looks for: the queue, the import in flight, outcomes, last success, retries by cause.
    wanted = {"sisdropd_queue_length", "sisdropd_current_import_seconds", "sisdropd_files_total",
              "sisdropd_last_success_timestamp_seconds", "sisdropd_retries_total", "sisdropd_imports_total"}
    assert wanted <= used, sorted(wanted - used)
    assert any("by (cause)" in e and "sisdropd_retries_total" in e for e in dashboard_exprs())
    # Counters are read through increase(), never as raw values (a restart resets the in-memory ones).
    for e in dashboard_exprs():
        for m in re.findall(r"\b(sisdropd_[a-z_]+_total)\b", e):
            assert f"increase({m}" in e.replace(" ", ""), e


def test_the_textfile_has_every_metric_the_dashboard_reads(tmp_path: Path) -> None:
    m = metrics.Metrics(tmp_path / "x.prom")
    m.set("sisdropd_retries_total", 1, {"cause": "network"})
    m.set("sisdropd_imports_total", 1, {"state": "imported"})
    m.write()
    written = {line.split("{")[0].split(" ")[0] for line in (tmp_path / "x.prom").read_text().splitlines() if not line.startswith("#")}
    used = {m for e in dashboard_exprs() for m in re.findall(r"\b(sisdropd_[a-z_]+)\b", e)}
    assert used <= written, sorted(used - written)
