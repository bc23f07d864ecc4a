"""The package's shape, read from its source: no import cycles, the simulator apart, small modules.

Every module under sisdropd/ is parsed with ``ast``; every import counts, wherever it is
written (inside ``if TYPE_CHECKING:`` and inside functions too: a lazy import is still a
dependency). The rules (README "Layout", issue 13):

- no import cycles;
- the daemon's modules never import the simulator, directly or through another module:
  only ``sisdropd.commands.demo`` (the ``demo`` and ``fake-canvas`` commands) may;
- no module over ``MAX_LINES`` lines;
- ``validate``, ``status`` and ``submit`` start without the daemon, watchdog or the simulator,
  and without loguru; ``validate`` and ``status`` without requests either (``NOT_LOADED``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from sisdropd.simulator import FakeCanvas
from tests.support import REPO, TOKEN, USERS

PACKAGE = REPO / "sisdropd"
MAX_LINES = 600
SIMULATOR = ("sisdropd.simulator",)  # prefixes: the modules and the package
MAY_IMPORT_SIMULATOR = {"sisdropd.commands.demo"}
# Owned by the other halves of issue 13 (the simulator's package, the pre-flight split),
# which remove them; each entry must still be true, so a fixed one cannot linger here.
KNOWN_CYCLES: set[frozenset[str]] = set()
KNOWN_LONG: set[str] = set()


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The sisdropd modules ``name`` imports, anywhere in its source."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            # "from package import module" imports that module; "from module import name" the module.
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # "import sisdropd.x.y" depends on the deepest module we have
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(frozenset(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def reachable(g: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for w in g[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def is_simulator(name: str) -> bool:
    return name.startswith(SIMULATOR)


def test_the_graph_is_read_from_every_kind_of_import() -> None:
    g = graph()
    assert "sisdropd.canvas" in g["sisdropd.worker"]  # from sisdropd.canvas import ...
    assert "sisdropd.preflight" in g["sisdropd.worker"]  # from sisdropd import preflight
    assert "sisdropd.config" in g["sisdropd.logs"]  # inside if TYPE_CHECKING:
    assert "sisdropd.commands.detach" in g["sisdropd.commands.run"]  # inside a function
    assert "sisdropd.commands" in g["sisdropd.commands.submit"]  # the package itself


def test_no_import_cycles() -> None:
    found = set(cycles(graph()))
    assert found - KNOWN_CYCLES == set(), f"import cycles: {[sorted(c) for c in found - KNOWN_CYCLES]}"
    assert KNOWN_CYCLES <= found, f"fixed, remove from KNOWN_CYCLES: {[sorted(c) for c in KNOWN_CYCLES - found]}"


def test_the_daemon_never_imports_the_simulator() -> None:
    g = graph()
    for name in sorted(g):
        if is_simulator(name) or name in MAY_IMPORT_SIMULATOR:
            continue
        reached = sorted(m for m in reachable(g, name) if is_simulator(m) or m in MAY_IMPORT_SIMULATOR)
        assert not reached, f"{name} imports the simulator (through {reached})"
    assert any(is_simulator(m) for m in g["sisdropd.commands.demo"])  # the rule sees real imports


def held_uses(source: str) -> list[int]:
    """Lines where code reaches held/: ``x.held`` or ``getattr(x, "held")`` (comments,
    strings and the simulator's own ``held`` flags aside: only folder objects are named so)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "held" and isinstance(node.ctx, ast.Load):
            out.append(node.lineno)
        elif (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
            and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and node.args[1].value == "held"
        ):
            out.append(node.lineno)
    return out


def test_one_module_owns_held() -> None:
    """Issue 11.4: held/ is reached through operator alone (park, release, discard, retry
    move the file and its record together there); folders.py only names the folder."""
    owners = {"sisdropd.operator", "sisdropd.folders"}
    users = {
        name: lines
        for name, path in modules().items()
        if not is_simulator(name) and name not in owners and (lines := held_uses(path.read_text()))
    }
    assert users == {}, f"held/ reached outside operator: {users}"
    assert held_uses((PACKAGE / "operator.py").read_text())  # the rule sees real uses
    assert held_uses('getattr(f, "held")\n# f.held\ns = "f.held"') == [1]


def raw_stored_names(source: str) -> list[int]:
    """Lines where a path is built from a stored name other than through ``inside``: a ``/``,
    ``joinpath``, ``os.path.join`` or ``Path(...)`` whose operand holds ``<x>.stored_name``
    (an f-string's included) outside a call of ``inside`` or ``plain``. Text that only shows
    a name (a log line's "-> done/<name>") is no path and is not counted."""

    def raw(node: ast.AST) -> bool:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("inside", "plain"):
            return False
        if isinstance(node, ast.Attribute) and node.attr == "stored_name":
            return True
        return any(raw(child) for child in ast.iter_child_nodes(node))

    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            parts: list[ast.AST] = [node.left, node.right]
        elif isinstance(node, ast.Call) and (
            (isinstance(node.func, ast.Attribute) and node.func.attr in ("joinpath", "join"))
            or (isinstance(node.func, ast.Name) and node.func.id in ("Path", "PurePath"))
        ):
            parts = [*node.args]
        else:
            continue
        if any(raw(part) for part in parts):
            out.append(node.lineno)
    return out


def test_every_path_from_a_stored_name_is_built_by_inside() -> None:
    """Issue 12.4: a name read from the journal becomes a path only through folders.inside,
    which refuses anything but a plain name, at the very place the path is built."""
    found = {
        name: lines
        for name, path in modules().items()
        if not is_simulator(name) and (lines := raw_stored_names(path.read_text()))
    }
    assert found == {}, found
    caught = [
        "folders.done / rec.stored_name", 'd / f"{rec.stored_name}.json"', "d.joinpath(r.stored_name)",
        "os.path.join(d, r.stored_name)", "Path(d, r.stored_name)", 'Path(f"{d}/{r.stored_name}")',
    ]
    assert all(raw_stored_names(code) == [1] for code in caught)
    assert raw_stored_names('inside(d, r.stored_name, ".json")\nd / plain(r.stored_name)') == []


def test_no_module_is_longer_than_max_lines() -> None:
    lengths = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    long = {name for name, n in lengths.items() if n > MAX_LINES}
    assert long - KNOWN_LONG == set(), {n: lengths[n] for n in long - KNOWN_LONG}
    assert KNOWN_LONG <= long, f"now short enough, remove from KNOWN_LONG: {KNOWN_LONG - long}"


HEAVY = ("watchdog", "daemon", "sisdropd.daemon", "sisdropd.watcher", *SIMULATOR)
# What each quick command must start without (issue 15: import only what a command needs).
# loguru's import costs a third of submit's start-up (submit logs through sisdropd.linelog);
# requests (and urllib3) cost more than everything else, and the journal's view needs no HTTP.
# uuid (with platform), shlex and signal: 2 ms of submit's start-up, for what only a
# download, a refusal or a test's crash point needs.
NOT_LOADED = {
    "validate": (*HEAVY, "loguru", "requests", "urllib3", "sisdropd.canvas"),
    "status": (*HEAVY, "loguru", "requests", "urllib3", "sisdropd.canvas"),
    "submit": (*HEAVY, "loguru", "uuid", "platform", "shlex", "signal"),
}
PROBE = """
import sys
from sisdropd import cli
code = cli.main(sys.argv[1:])
print("CODE", code)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {top!r} or m.startswith({heavy!r}))
print("HEAVY", heavy)
"""


def loaded_by(command: str, args: list[str]) -> tuple[int, list[str]]:
    """Run ``sisdropd ARGS`` in a fresh interpreter: its exit code, and which of
    ``NOT_LOADED[command]`` it had imported by the end."""
    banned = NOT_LOADED[command]
    top = {b for b in banned if "." not in b}
    r = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=banned, top=top), *args], capture_output=True, text=True, timeout=60,
        env={"SISDROPD_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"},
    )
    assert "HEAVY" in r.stdout, r.stdout + r.stderr
    code = int(r.stdout.split("CODE", 1)[1].split()[0])
    return code, eval(r.stdout.rsplit("HEAVY", 1)[1].strip())  # noqa: S307 - our own probe's list


@pytest.mark.parametrize("command", ["validate", "status", "submit"])
def test_quick_commands_import_only_what_they_need(tmp_path: Path, command: str) -> None:
    (tmp_path / "users.csv").write_text("nope\n")  # rejected by the pre-flight check: no network needed
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[canvas]\nbase_url = "http://127.0.0.1:9"\n[folders]\nroot = "{tmp_path}"\n')
    args = {"validate": ["validate", str(tmp_path / "users.csv")], "status": ["status", "-c", str(cfg)],
            "submit": ["submit", str(tmp_path / "users.csv"), "-c", str(cfg)]}[command]
    code, loaded = loaded_by(command, args)
    assert code == {"validate": 1, "status": 0, "submit": 1}[command]
    assert loaded == [], f"{command} imported {loaded}"


def test_submit_posts_and_follows_without_loguru(tmp_path: Path, sim: FakeCanvas) -> None:
    (tmp_path / "users.csv").write_text(USERS)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[canvas]\nbase_url = "{sim.url}"\n[folders]\nroot = "{tmp_path}"\n[watch]\npoll_interval = 0.1\n')
    code, loaded = loaded_by("submit", ["submit", str(tmp_path / "users.csv"), "-c", str(cfg)])
    assert code == 0 and len(sim.imports()) == 1
    assert loaded == [], f"submit imported {loaded}"
