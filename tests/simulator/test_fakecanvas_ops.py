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
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from sisdropd.simulator import FakeCanvas

from .simclient import USERS, Client, client_fixture, sim_fixture  # noqa: F401 - the fixtures


def test_main_serves_until_sigterm(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
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

SIM_DIR = Path(__file__).resolve().parents[2] / "sisdropd" / "simulator"


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


# -- control endpoints beyond loopback (issue 12 point 9) ----------------------------------------


def test_a_non_loopback_host_is_refused_unless_asked(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "::", "", "192.0.2.10", "canvas.example.edu"):
        with pytest.raises(ValueError, match="allow_remote"):
            FakeCanvas(host=host, storage_dir=tmp_path / "s")
    for host in ("127.0.0.1", "127.5.6.7", "::1", "localhost"):
        sim = FakeCanvas(host=host, storage_dir=tmp_path / "s")
        assert sim.control_token is None and sim.token == "sim-token", host
    remote = FakeCanvas(host="0.0.0.0", allow_remote=True, storage_dir=tmp_path / "s")
    other = FakeCanvas(host="0.0.0.0", allow_remote=True, storage_dir=tmp_path / "s")
    assert remote.control_token and remote.token != "sim-token"
    assert {remote.control_token, remote.token}.isdisjoint({other.control_token, other.token})


def test_a_control_token_guards_every_control_endpoint(tmp_path: Path) -> None:
    with FakeCanvas(control_token="ctl-secret", storage_dir=tmp_path / "s") as sim:
        auth = {"Authorization": "Bearer ctl-secret"}
        for method, path, body in (
            ("GET", "/_sim/imports", None),
            ("GET", "/_sim/requests", None),
            ("POST", "/_sim/faults", {"fault": "503"}),
            ("POST", "/_sim/token", {"token": "stolen"}),
            ("POST", "/_sim/refusal", {"kind": "sis_disabled"}),
        ):
            for headers in ({}, {"Authorization": "Bearer sim-token"}):
                r = requests.request(method, f"{sim.url}{path}", json=body, headers=headers)
                assert r.status_code == 401, (path, headers)
        assert sim.token == "sim-token" and sim.refusals() == [] and sim.faults_served() == {}
        api = requests.get(f"{sim.url}/api/v1/users/self", headers={"Authorization": "Bearer sim-token"})
        assert api.status_code == 200  # the fault was never queued
        assert requests.get(f"{sim.url}/_sim/imports", headers=auth).json() == []
        r = requests.post(f"{sim.url}/_sim/faults", json={"fault": "503"}, headers=auth)
        assert r.status_code == 200
        api = requests.get(f"{sim.url}/api/v1/users/self", headers={"Authorization": "Bearer sim-token"})
        assert api.status_code == 503


def _serve(*args: str) -> subprocess.Popen[str]:
    repo = Path(__file__).resolve().parents[2]
    return subprocess.Popen(
        [sys.executable, "-m", "sisdropd.simulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )


def test_the_command_refuses_a_remote_host_without_allow_remote() -> None:
    proc = _serve("--host", "0.0.0.0")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and out == ""
    assert "refusing to serve" in err and "--allow-remote" in err
    assert "Traceback" not in err


def test_the_command_with_allow_remote_prints_and_requires_random_tokens() -> None:
    # Binds every address for a moment; the test talks to it over 127.0.0.1 only.
    proc = _serve("--host", "0.0.0.0", "--allow-remote")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:(\d+) ", line)
        token = re.search(r"token=(\S+)", line)
        control = re.search(r"Bearer (\S+)", proc.stdout.readline())
        assert url and token and control, line
        base = f"http://127.0.0.1:{url.group(1)}"
        assert token.group(1) != "sim-token" and len(control.group(1)) >= 20
        assert requests.get(f"{base}/_sim/imports").status_code == 401
        auth = {"Authorization": f"Bearer {control.group(1)}"}
        assert requests.get(f"{base}/_sim/imports", headers=auth).json() == []
        me = requests.get(f"{base}/api/v1/users/self", headers={"Authorization": "Bearer sim-token"})
        assert me.status_code == 401
        me = requests.get(
            f"{base}/api/v1/users/self", headers={"Authorization": f"Bearer {token.group(1)}"}
        )
        assert me.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


# -- undo: restore_states and its Progress (issue 14; reference §4, §5) ---------------------------


def _follow(client: Client, progress: dict[str, Any], timeout: float = 10) -> list[dict[str, Any]]:
    """GET the Progress's url until it ends; every answer, in order."""
    seen = [progress]
    deadline = time.monotonic() + timeout
    while seen[-1]["workflow_state"] in ("queued", "running"):
        assert time.monotonic() < deadline, seen[-1]
        r = client.s.get(progress["url"])
        assert r.status_code == 200
        seen.append(r.json())
        time.sleep(0.01)
    return seen


def test_restore_states_answers_a_progress_and_restores(tmp_path: Path) -> None:
    with FakeCanvas(import_seconds=0.1, restore_seconds=0.6, storage_dir=tmp_path / "s") as sim:
        client = Client(sim)
        iid = client.final(client.post_file("u.csv", USERS).json()["id"])["id"]
        r = client.s.put(client.url(f"/sis_imports/{iid}/restore_states"))
        assert r.status_code == 200
        p = r.json()
        assert p["workflow_state"] == "queued" and p["completion"] == 0
        assert p["url"] == f"{sim.url}/api/v1/progress/{p['id']}"
        assert p["context_type"] == "SisBatch" and p["context_id"] == iid
        batch_states = []
        seen = [p]
        deadline = time.monotonic() + 10
        while seen[-1]["workflow_state"] in ("queued", "running"):
            assert time.monotonic() < deadline
            seen.append(client.s.get(p["url"]).json())
            batch_states.append(client.show(iid)["workflow_state"])
            time.sleep(0.01)
        states = [x["workflow_state"] for x in seen]
        assert states[0] == "queued" and "running" in states and states[-1] == "completed"
        assert seen[-1]["completion"] == 100
        completions = [x["completion"] for x in seen]
        assert completions == sorted(completions)
        assert "restoring" in batch_states
        assert client.show(iid)["workflow_state"] == "restored"
        assert sim.wait_all_final(5)
        client.close()


@pytest.mark.parametrize(
    ("params", "final"),
    [
        ({"undelete_only": "true"}, "partially_restored"),
        ({"unconclude_only": "1"}, "partially_restored"),
        ({"batch_mode": "true"}, "partially_restored"),
        ({"undelete_only": "false"}, "restored"),
    ],
)
def test_restore_options_give_partially_restored(
    sim: FakeCanvas, client: Client, params: dict[str, str], final: str
) -> None:
    iid = client.final(client.post_file("u.csv", USERS).json()["id"])["id"]
    r = client.s.put(client.url(f"/sis_imports/{iid}/restore_states"), data=params)
    assert r.status_code == 200
    assert _follow(client, r.json())[-1]["workflow_state"] == "completed"
    assert client.show(iid)["workflow_state"] == final


def test_restore_refusals(sim: FakeCanvas, client: Client) -> None:
    iid = client.final(client.post_file("u.csv", USERS).json()["id"])["id"]
    url = client.url(f"/sis_imports/{iid}/restore_states")
    r = client.s.put(url, params={"undelete_only": "true", "unconclude_only": "true"})
    assert r.status_code == 400
    assert r.json() == {"message": "cannot set both undelete_only and unconclude_only"}
    r = client.s.put(client.url("/sis_imports/9999/restore_states"))
    assert r.status_code == 404
    assert client.s.get(f"{sim.url}/api/v1/progress/777").status_code == 404
    sim.add_token("importer", 30, permissions={"import_sis"})
    importer = Client(sim, "importer")
    assert importer.s.put(url).status_code == 401  # restore_states needs manage_sis (§1)
    assert importer.s.put(url).json()["status"] == "unauthorized"
    assert importer.show(iid)["workflow_state"] == "imported"
    importer.close()
    assert client.show(iid)["workflow_state"] == "imported"  # nothing was queued
    assert sim.wait_all_final(5)


def test_a_failed_restore_job_says_so_in_its_progress(sim: FakeCanvas, client: Client) -> None:
    iid = client.final(client.post_file("u.csv", USERS).json()["id"])["id"]
    assert requests.post(f"{sim.url}/_sim/restores", json={"fail": True}).status_code == 200
    r = client.s.put(client.url(f"/sis_imports/{iid}/restore_states"))
    last = _follow(client, r.json())[-1]
    assert last["workflow_state"] == "failed" and last["message"]
    sim.fail_restores(False)
    r = client.s.put(client.url(f"/sis_imports/{iid}/restore_states"))
    assert _follow(client, r.json())[-1]["workflow_state"] == "completed"
    assert client.show(iid)["workflow_state"] == "restored"


def test_restore_of_a_queued_import_takes_it_off_the_queue(sim: FakeCanvas, client: Client) -> None:
    fid = sim.hold_queue()
    queued = client.post_file("queued.csv", USERS).json()["id"]
    r = client.s.put(client.url(f"/sis_imports/{queued}/restore_states"))
    assert r.status_code == 200
    assert _follow(client, r.json())[-1]["workflow_state"] == "completed"
    sim.release()
    assert client.final(fid)["workflow_state"] == "imported"
    assert sim.wait_all_final(5)
    d = client.show(queued)
    assert d["workflow_state"] == "restored" and d["started_at"] is None


# -- permissions (reference §1) --------------------------------------------------------------------


def test_each_endpoint_needs_its_permission(sim: FakeCanvas, client: Client) -> None:
    sim.add_token("manager", 31, permissions={"manage_sis"})
    manager = Client(sim, "manager")
    r = manager.post_file("u.csv", USERS)
    assert r.status_code == 401 and r.json()["status"] == "unauthorized"  # create: import_sis
    assert sim.imports() == []
    iid = client.post_file("u.csv", USERS).json()["id"]
    assert manager.s.get(manager.url("/sis_imports")).status_code == 200
    assert manager.s.get(manager.url(f"/sis_imports/{iid}")).status_code == 200
    assert manager.s.get(manager.url("/sis_imports/importing")).status_code == 200
    client.final(iid)
    sim.add_token("nobody", 32, permissions=())
    nobody = Client(sim, "nobody")
    assert nobody.s.get(nobody.url("/sis_imports")).status_code == 401
    assert nobody.s.get(f"{sim.url}/api/v1/users/self").json()["id"] == 32
    with pytest.raises(ValueError):
        sim.add_token("x", 1, permissions={"become_admin"})
    manager.close()
    nobody.close()


# -- emergency stop: abort_all_pending (issue 14; reference §4) ------------------------------------


def test_abort_all_pending_stops_every_users_pending_imports_only(
    sim: FakeCanvas, client: Client
) -> None:
    running = sim.hold_queue()  # another user's, running until released
    client.until(running, lambda d: d["workflow_state"] == "importing")
    ours = client.post_file("ours.csv", USERS).json()["id"]
    theirs = sim.foreign_import(5.0, user_id=77)
    stuck = client.post_file("users.csv", USERS, diffing_drop_status="bogus")
    assert stuck.status_code == 400  # left initializing (§2.4)
    (initializing,) = [r["id"] for r in sim.imports() if r["workflow_state"] == "initializing"]
    r = client.s.put(client.url("/sis_imports/abort_all_pending"))
    assert (r.status_code, r.json()) == (200, {"aborted": True})
    for iid in (ours, theirs, initializing):
        assert client.show(iid)["workflow_state"] == "aborted", iid
    assert client.show(running)["workflow_state"] == "importing"  # running ones go on
    sim.release()
    assert client.final(running)["workflow_state"] == "imported"
    assert sim.wait_all_final(5)
