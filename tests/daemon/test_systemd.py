"""The systemd integration in systemd/: the unit files, sysusers, tmpfiles, the example config.

Three kinds of checks: what systemd itself says of the files (``systemd-analyze verify``
and ``security``, ``systemd-sysusers`` and ``systemd-tmpfiles`` into a scratch root, each
skipped where the tool is missing); that the files agree with the code and with each
other (credential name, config path, folders, timeouts, the hardening, the template's
``%i``); and the ``Type=notify`` protocol spoken by a real ``sisdropd run`` to a notify
socket of our own, the way systemd would receive it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from sisdropd import config as sisconfig
from sisdropd import folders
from sisdropd.commands import check
from sisdropd.daemon import STOP_GRACE
from tests.support import REPO, TOKEN, USERS, Drop, wait_for

SYSTEMD = REPO / "systemd"
UNIT = SYSTEMD / "sisdropd.service"
TEMPLATE = SYSTEMD / "sisdropd@.service"
EXAMPLE = SYSTEMD / "sisdropd.toml.example"
SYSUSERS = SYSTEMD / "sisdropd.sysusers"
TMPFILES = SYSTEMD / "sisdropd.tmpfiles"
INSTALL = SYSTEMD / "INSTALL.md"

# Every sandboxing directive the unit promises, with its value, in both units.
HARDENING = {
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallFilter": "@system-service",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "DevicePolicy": "closed",
    "KeyringMode": "private",
    # Issue 12: other processes hidden, only the per-process part of /proc, no cores.
    "ProtectProc": "invisible",
    "ProcSubset": "pid",
    "LimitCORE": "0",
}
FOLDERS = ("inbox", "processing", "done", "failed", "held")


# ------------------------------------------------------------------------------ parsing


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values, in order]}}; comments and blanks dropped.

    A small line parser rather than configparser: systemd allows a key more than once,
    and an empty assignment (``CapabilityBoundingSet=``) is meaningful.
    """
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"{path.name}:{n}: no line continuations, please"
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            assert section not in out, f"{path.name}:{n}: [{section}] twice"
            out[section] = {}
            continue
        assert section is not None, f"{path.name}:{n}: a setting before any [section]"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{n}: not key=value: {raw!r}"
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def one(unit: dict[str, dict[str, list[str]]], key: str, section: str = "Service") -> str:
    values = unit[section].get(key)
    assert values is not None, f"{key}= missing from [{section}]"
    assert len(values) == 1, f"{key}= set {len(values)} times in [{section}]: {values}"
    return values[0]


def seconds(span: str) -> float:
    """A systemd time span ("15", "5s", "1min 30s", "500ms") in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts and "".join(a + b for a, b in parts) == span.replace(" ", ""), span
    return sum(float(num) * units[unit] for num, unit in parts)


# A key line of the example config, set or commented out: "key = value", lower case.
KEY = re.compile(r"#?\s?([a-z][a-z_]*)\s*=\s*[^\s=]")


def example_keys() -> dict[str, set[str]]:
    """Every key of the example config, set or commented out, by section."""
    keys: dict[str, set[str]] = {}
    section = None
    for line in EXAMPLE.read_text().splitlines():
        m = re.match(r"#?\s?\[(\w+)\]\s*$", line)
        if m:
            section = m.group(1)
            keys.setdefault(section, set())
            continue
        m = re.match(KEY, line)
        if m and section:
            keys[section].add(m.group(1))
    return keys


def example_switched_on() -> str:
    """The example config with every commented-out section and key switched on."""
    return "\n".join(
        re.sub(r"^#\s?(?=\[\w+\]\s*$|[a-z][a-z_]*\s*=\s*[^\s=])", "", line)
        for line in EXAMPLE.read_text().splitlines()
    )


def under(path: str | PurePosixPath, parent: str | PurePosixPath) -> bool:
    p, q = PurePosixPath(path), PurePosixPath(parent)
    assert p.is_absolute() and q.is_absolute(), (p, q)
    return p == q or q in p.parents


def install_seds(src: Path, name: str) -> list[tuple[str, str]]:
    """The substitutions of INSTALL.md's ``sed`` command on ``src``, for instance ``name``."""
    for line in INSTALL.read_text().replace("\\\n", " ").splitlines():
        argv = shlex.split(line.strip()) if line.strip().startswith("sed ") else []
        if f"systemd/{src.name}" in argv:
            subs = [
                m.groups() for arg in argv if (m := re.fullmatch(r"s\|([^|]+)\|([^|]+)\|", arg))
            ]
            assert subs, line
            return [(a, b.replace("$NAME", name)) for a, b in subs]
    raise AssertionError(f"INSTALL.md has no sed command on systemd/{src.name}")


def apply_seds(text: str, subs: list[tuple[str, str]]) -> str:
    for a, b in subs:  # plain paths, no regex characters: sed and str.replace agree
        assert not re.search(r"[.*\[\]^$\\]", a), a
        text = text.replace(a, b)
    return text


# -------------------------------------------------------- what systemd says of the files


def _real_sisdropd(tmp_path: Path) -> str:
    """An existing executable for ExecStart=: the venv's console script, else a stand-in."""
    for cand in (Path(sys.executable).parent / "sisdropd", shutil.which("sisdropd")):
        if cand and os.access(cand, os.X_OK):
            return str(cand)
    stub = tmp_path / "sisdropd"
    stub.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m sisdropd "$@"\n')
    stub.chmod(0o755)
    return str(stub)


def _verifiable_copy(src: Path, dest_dir: Path, binary: str) -> Path:
    """``src`` with the paths verify insists on existing pointed at ones that exist here."""
    text = src.read_text()
    assert text.count("ExecStart=/usr/local/bin/sisdropd ") == 1
    text = text.replace("ExecStart=/usr/local/bin/sisdropd ", f"ExecStart={binary} ")
    if not os.access("/bin/kill", os.X_OK):  # merged-/usr systems without /bin, say
        kill = shutil.which("kill")
        if kill:
            text = text.replace("ExecReload=/bin/kill ", f"ExecReload={kill} ")
    dest = dest_dir / src.name
    dest.write_text(text)
    return dest


# Lines verify may print that say nothing about our files. On the machine these tests
# were written on (systemd 252 in a VM whose PID 1 is not systemd, with no user
# "sisdropd" and no group "sisdrop") verify prints nothing at all for our units. Elsewhere
# it may complain about the host's own units it loads as dependencies
# (network-online.target's and friends): those lines do not name our unit and are not
# looked at. Without a system bus (containers), "Failed to connect to bus" appears; it is
# about the environment. A missing User=/Group= is not reported by verify.
HARMLESS = (
    re.compile(r"Failed to connect to (the )?(system )?bus"),
    re.compile(r"System has not been booted with systemd"),
)
BAD = re.compile(r"Unknown|Failed to parse|Invalid|not executable|ignoring|Missing|Bad ")


def verify_problems(
    unit_path: Path, unit_name: str
) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit_path.parent,
    )
    names = {unit_name, unit_path.name, unit_path.resolve().name}
    problems = []
    for line in (r.stdout + r.stderr).splitlines():
        if not line.strip() or any(h.search(line) for h in HARMLESS):
            continue
        if any(n in line for n in names) or (BAD.search(line) and str(unit_path.parent) in line):
            problems.append(line)
    return problems, r


needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="no systemd-analyze here"
)


@needs_analyze
@pytest.mark.parametrize(
    "src, name",
    [
        (UNIT, "sisdropd.service"),
        (TEMPLATE, "sisdropd@.service"),
        (TEMPLATE, "sisdropd@acme.service"),
    ],
    ids=["unit", "template", "instance"],
)
def test_systemd_analyze_verify_is_silent(tmp_path: Path, src: Path, name: str) -> None:
    # The original, as shipped: the ExecStart= every assertion below is about.
    assert one(parse_unit(src), "ExecStart").startswith(
        "/usr/local/bin/sisdropd run -c /etc/sisdropd/"
    )
    copy = _verifiable_copy(src, tmp_path, _real_sisdropd(tmp_path))
    if name != copy.name:  # an instance of the template: a link named after it
        (tmp_path / name).symlink_to(copy.name)
    path = tmp_path / name
    problems, r = verify_problems(path, name)
    assert not problems, "\n".join(problems)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_analyze
def test_verify_check_does_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above is live: a typo, a bad value and a missing binary are all seen."""
    copy = _verifiable_copy(UNIT, tmp_path, _real_sisdropd(tmp_path))
    copy.write_text(
        copy.read_text().replace("ProtectSystem=strict", "ProtectSystem=strikt\nProtectSytem=yes")
    )
    problems, _ = verify_problems(copy, copy.name)
    assert any("ProtectSytem" in p for p in problems), problems
    assert any("strikt" in p for p in problems), problems
    original = tmp_path / "orig" / UNIT.name
    original.parent.mkdir()
    shutil.copy(UNIT, original)
    if not Path("/usr/local/bin/sisdropd").exists():
        problems, r = verify_problems(original, original.name)
        assert r.returncode != 0 or problems, r.stdout + r.stderr


@needs_analyze
@pytest.mark.parametrize("src", [UNIT, TEMPLATE], ids=["unit", "template"])
def test_systemd_analyze_security_rates_it_ok(tmp_path: Path, src: Path) -> None:
    copy = _verifiable_copy(src, tmp_path, _real_sisdropd(tmp_path))
    if src is TEMPLATE:
        (tmp_path / "sisdropd@acme.service").symlink_to(copy.name)
        copy = tmp_path / "sisdropd@acme.service"
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    if "--offline" in r.stderr and r.returncode != 0:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    # 0 is a locked box, about 9.6 an unsandboxed root service. The units score 1.7 ("OK")
    # with systemd 252; newer versions weigh a few more settings, hence some room.
    assert float(m.group(1)) <= 3.0, r.stdout


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None
    or shutil.which("systemd-tmpfiles") is None
    or os.geteuid() != 0,
    reason="needs systemd-sysusers, systemd-tmpfiles and root (to chown in a scratch root)",
)
def test_sysusers_and_tmpfiles_make_the_user_and_the_folders(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for tool, src in (("systemd-sysusers", SYSUSERS), ("systemd-tmpfiles", TMPFILES)):
        args = [tool, f"--root={root}", str(src)]
        if tool == "systemd-tmpfiles":
            args.insert(1, "--create")
        r = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"{tool}: {r.stdout}{r.stderr}"
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/passwd").read_text().splitlines()
    }
    group = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/group").read_text().splitlines()
    }
    user = passwd["sisdropd"]
    assert user[5] == "/var/lib/sisdropd" and user[6].endswith("nologin"), user
    assert int(user[2]) < 1000, "a system user"
    assert "sisdropd" in group["sisdrop"][3].split(","), group["sisdrop"]
    uid, gid_sisdrop = int(user[2]), int(group["sisdrop"][2])
    want = {
        "": 0o750,
        "inbox": 0o3770,
        "processing": 0o2750,
        "done": 0o2750,
        "failed": 0o2750,
        "held": 0o2750,
    }
    for name, mode in want.items():
        st = (root / "srv/sisdrop" / name).stat()
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, uid, gid_sisdrop), name


# ------------------------------------------------------------ agreement with the code


def test_unit_service_settings() -> None:
    u = parse_unit(UNIT)
    assert one(u, "Type") == "notify"
    assert one(u, "NotifyAccess") == "main"
    assert one(u, "ExecStart") == "/usr/local/bin/sisdropd run -c /etc/sisdropd/sisdropd.toml"
    assert one(u, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert seconds(one(u, "WatchdogSec")) == 60
    assert one(u, "Restart") == "on-failure"
    assert seconds(one(u, "RestartSec")) == 5
    # The daemon gives its threads STOP_GRACE seconds and promises to be gone within 10.
    assert STOP_GRACE < 10 < seconds(one(u, "TimeoutStopSec"))
    assert (one(u, "User"), one(u, "Group"), one(u, "UMask")) == ("sisdropd", "sisdropd", "0027")
    assert one(u, "StateDirectory") == "sisdropd"
    assert one(u, "LogsDirectory") == "sisdropd"
    # The modes sisdropd gives what it makes itself (issue 12): the state dir 0700, a log
    # folder as any other folder of ours.
    assert int(one(u, "StateDirectoryMode"), 8) == folders.STATE_MODE == 0o700
    assert int(one(u, "LogsDirectoryMode"), 8) == folders.FOLDER_MODE == 0o750
    assert one(u, "ReadWritePaths") == "/srv/sisdrop"
    assert one(u, "LoadCredential") == "canvas-token:/etc/sisdropd/canvas-token"
    assert one(u, "Environment") == "SISDROPD_CONFIG=/etc/sisdropd/sisdropd.toml"
    assert one(u, "WantedBy", "Install") == "multi-user.target"
    assert "network-online.target" in one(u, "After", "Unit").split()
    assert "network-online.target" in one(u, "Wants", "Unit").split()


@pytest.mark.parametrize("src", [UNIT, TEMPLATE], ids=["unit", "template"])
def test_every_hardening_directive_is_there(src: Path) -> None:
    u = parse_unit(src)
    got = {key: u["Service"].get(key) for key in HARDENING}
    assert got == {key: [value] for key, value in HARDENING.items()}


@pytest.mark.parametrize("src", [UNIT, TEMPLATE], ids=["unit", "template"])
def test_every_setting_has_a_reason_nearby(src: Path) -> None:
    """Each group of settings in [Service] is preceded by a comment saying why."""
    lines = src.read_text().splitlines()
    start = lines.index("[Service]")
    settings_since_comment = 0
    for line in lines[start + 1 :]:
        if line.startswith("["):
            break
        if line.startswith("#"):
            settings_since_comment = 0
        elif line.strip():
            settings_since_comment += 1
            assert settings_since_comment <= 7, (
                f"{src.name}: a long run of settings with no comment, up to {line!r}"
            )


def test_the_credential_is_the_one_read_token_looks_for(tmp_path: Path) -> None:
    name, _, source = one(parse_unit(UNIT), "LoadCredential").partition(":")
    cfg = sisconfig.load(EXAMPLE)
    creds = tmp_path / "credentials"  # what systemd makes: $CREDENTIALS_DIRECTORY/<name>
    creds.mkdir()
    (creds / name).write_text("from-the-credential\n")
    (creds / name).chmod(0o400)
    token, where = sisconfig.read_token(cfg, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert (token, where) == ("from-the-credential", str(creds / name))
    # The same file serves "sisdropd check" as root, through [canvas] token_file.
    assert source == cfg.canvas.token_file
    tname, _, tsource = one(parse_unit(TEMPLATE), "LoadCredential").partition(":")
    assert tname == name and tsource == "/etc/sisdropd/%i.token"


def test_the_unit_runs_the_example_config_where_install_puts_it() -> None:
    u = parse_unit(UNIT)
    argv = shlex.split(one(u, "ExecStart"))
    assert argv[1] == "run" and argv.count("-c") == 1
    path = argv[argv.index("-c") + 1]
    assert one(u, "Environment") == f"SISDROPD_CONFIG={path}"
    # The default path: "sisdropd status" in a shell finds the same config without -c.
    assert path == sisconfig.DEFAULT_PATH
    install = INSTALL.read_text()
    assert f"systemd/sisdropd.toml.example {path}" in install
    assert f"ln -sf /opt/sisdropd/bin/sisdropd {argv[0]}" in install
    assert "python3 -m venv /opt/sisdropd" in install


def test_the_example_config_fits_the_unit() -> None:
    u = parse_unit(UNIT)
    cfg = sisconfig.load(EXAMPLE)  # load() does not touch the folders
    state_root = PurePosixPath("/var/lib") / one(u, "StateDirectory")
    logs_root = PurePosixPath("/var/log") / one(u, "LogsDirectory")
    writable = one(u, "ReadWritePaths").split()
    assert str(cfg.folders.path("state_dir")) == str(state_root)
    assert cfg.log.file and under(cfg.log.file, logs_root)
    assert under(cfg.folders.root, one(u, "RequiresMountsFor", "Unit"))
    assert any(under(cfg.folders.root, w) for w in writable)
    for name in FOLDERS:
        folder = cfg.folders.path(name)
        assert any(under(folder, w) for w in writable), f"{name} {folder} is read-only to the unit"
    assert cfg.canvas.base_url.startswith("https://")


def test_the_example_config_has_exactly_the_keys_of_config_py() -> None:
    defaults = sisconfig.Config()
    want = {
        f.name: {g.name for g in dataclasses.fields(getattr(defaults, f.name))}
        for f in dataclasses.fields(sisconfig.Config)
        if dataclasses.is_dataclass(getattr(defaults, f.name))
    }
    got = example_keys()
    imports = got.pop("import")
    assert got == want, "systemd/sisdropd.toml.example and sisdropd/config.py disagree"
    assert "import_type" in imports
    active = tomllib.loads(EXAMPLE.read_text())
    assert set(active) == {"canvas", "folders", "import", "watch", "log", "guard"}, (
        "notify and metrics stay commented out"
    )


def test_the_example_config_loads_with_everything_switched_on() -> None:
    cfg = sisconfig.from_dict(tomllib.loads(example_switched_on()), source="example, all on")
    assert cfg.notify.command and cfg.notify.webhook and cfg.metrics.textfile
    assert cfg.canvas.ca_bundle and cfg.folders.inbox
    assert cfg.import_params.get("batch_mode") is True
    # The optional folder overrides stay where the unit may write.
    for name in FOLDERS:
        assert under(cfg.folders.path(name), "/srv/sisdrop"), name


def test_the_template_is_the_unit_with_the_instance_in_every_path() -> None:
    u, t = parse_unit(UNIT), parse_unit(TEMPLATE)
    per_instance = {
        "/etc/sisdropd/sisdropd.toml": "/etc/sisdropd/%i.toml",
        "/etc/sisdropd/canvas-token": "/etc/sisdropd/%i.token",
        "/srv/sisdrop": "/srv/sisdrop/%i",
    }

    def expected(section: str, key: str, value: str) -> str:
        if key in ("StateDirectory", "LogsDirectory", "User", "Group", "SupplementaryGroups"):
            return value + ("/%i" if key.endswith("Directory") else "-%i")
        if key == "Description":
            return value.replace("sisdropd:", "sisdropd (%i):")
        for a, b in per_instance.items():
            value = re.sub(re.escape(a) + r"(?![\w/-])", b, value)
        return value

    assert t.keys() == u.keys()
    for section in u:
        assert t[section].keys() == u[section].keys(), section
        for key, values in u[section].items():
            assert t[section][key] == [expected(section, key, v) for v in values], (
                f"[{section}] {key}"
            )
    text = TEMPLATE.read_text()
    assert "%I" not in text and "%j" not in text, "one specifier, %i, throughout"
    settings = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert sum("%i" in line for line in settings) == 11


def test_an_instance_config_made_as_install_says_fits_the_template() -> None:
    name = "acme"
    t = parse_unit(TEMPLATE)
    inst = {
        k: one(t, k).replace("%i", name)
        for k in (
            "StateDirectory",
            "LogsDirectory",
            "ReadWritePaths",
            "LoadCredential",
            "ExecStart",
        )
    }
    cfg_text = apply_seds(EXAMPLE.read_text(), install_seds(EXAMPLE, name))
    cfg = sisconfig.from_dict(tomllib.loads(cfg_text), source="acme.toml")
    assert str(cfg.folders.path("state_dir")) == f"/var/lib/{inst['StateDirectory']}"
    assert cfg.log.file and under(cfg.log.file, f"/var/log/{inst['LogsDirectory']}")
    for folder in FOLDERS:
        assert under(cfg.folders.path(folder), inst["ReadWritePaths"]), folder
    assert cfg.canvas.token_file == inst["LoadCredential"].split(":", 1)[1]
    assert shlex.split(inst["ExecStart"])[-1] == f"/etc/sisdropd/{name}.toml"
    # Its drop folder, made from sisdropd.tmpfiles as INSTALL.md says, is the config's.
    tmp_text = apply_seds(TMPFILES.read_text(), install_seds(TMPFILES, name))
    rows = [line.split() for line in tmp_text.splitlines() if line.startswith("d ")]
    made = {row[1] for row in rows}
    assert made == {inst["ReadWritePaths"], *(str(cfg.folders.path(f)) for f in FOLDERS)}
    # One user and one group per instance (issue 12): the folders are the instance user's
    # and its uploaders' group's, the very ones the template runs as, and INSTALL.md's
    # sysusers lines make exactly those.
    user, group = one(t, "User").replace("%i", name), one(t, "SupplementaryGroups").replace("%i", name)
    assert one(t, "Group").replace("%i", name) == user
    assert {(row[3], row[4]) for row in rows} == {(user, group)}
    assert all(int(row[2], 8) & 0o007 == 0 for row in rows), "nothing for other users"
    heredoc = re.search(r"cat > /etc/sysusers.d/sisdropd-\$NAME.conf <<EOF\n(.*?)\nEOF\n", INSTALL.read_text(), re.S)
    assert heredoc, "INSTALL.md makes the instance's user with a sysusers.d file"
    sysusers = [shlex.split(line.replace("$NAME", name)) for line in heredoc.group(1).splitlines()]
    assert sysusers == [
        ["u", user, "-", f"sisdropd {name}", f"/var/lib/{inst['StateDirectory']}"],
        ["g", group, "-"],
        ["m", user, group],
    ]
    assert len(user) <= 31 and len(user.replace(name, "x" * 22)) <= 31, "the longest name INSTALL.md allows fits"


def test_sysusers_and_tmpfiles_agree_with_the_unit_and_the_config() -> None:
    u = parse_unit(UNIT)
    cfg = sisconfig.load(EXAMPLE)
    users = [
        line.split()
        for line in SYSUSERS.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    [urow] = [r for r in users if r[0] == "u"]
    assert shlex.split(" ".join(urow)) == [
        "u",
        one(u, "User"),
        "-",
        "sisdropd Canvas SIS imports",
        f"/var/lib/{one(u, 'StateDirectory')}",
    ]
    assert ["g", "sisdrop", "-"] in users and ["m", one(u, "User"), "sisdrop"] in users
    assert one(u, "SupplementaryGroups") == "sisdrop"
    rows = {}
    for line in TMPFILES.read_text().splitlines():
        if line and not line.startswith("#"):
            kind, path, mode, owner, group, age = line.split()
            assert (kind, owner, group, age) == ("d", one(u, "User"), "sisdrop", "-"), line
            rows[path] = int(mode, 8)
    root = one(u, "ReadWritePaths")
    assert set(rows) == {root, *(str(cfg.folders.path(f)) for f in FOLDERS)}
    inbox = rows[str(cfg.folders.path("inbox"))]
    assert inbox & 0o2000 and inbox & 0o070 == 0o070, "inbox: setgid and group-writable"
    assert inbox & 0o1000, "inbox: sticky, so one uploader cannot replace another's file"
    assert inbox == check.INBOX_MODE, "what sisdropd check asks the admin for"
    assert inbox & 0o007 == 0, "nothing for other users"
    for path, mode in rows.items():
        if path != str(cfg.folders.path("inbox")):
            assert mode & 0o027 == 0, f"{path}: only the owner writes, others see nothing"
        assert mode & 0o010, f"{path}: uploaders pass through it"


# --------------------------------------------------- Type=notify, spoken to a real socket


class NotifySocket:
    """A notify socket as systemd holds it: datagrams, each with the sender's credentials."""

    def __init__(self, where: Path | None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if where is None:  # abstract namespace, "@name" in $NOTIFY_SOCKET
            name = f"sisdropd-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.sock.bind(str(where))
            self.address = str(where)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, int, list[str]]] = []  # (monotonic, sender pid, lines)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        creds_size = struct.calcsize("iII")
        while not self._stop.is_set():
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(creds_size))
            except TimeoutError:
                continue
            except OSError:
                return
            pid = -1
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", payload[:creds_size])[0]
            with self._lock:
                self.messages.append((time.monotonic(), pid, data.decode().split("\n")))

    def snapshot(self) -> list[tuple[float, int, list[str]]]:
        with self._lock:
            return list(self.messages)

    def times(self, line: str) -> list[float]:
        return [t for t, _pid, lines in self.snapshot() if line in lines]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def short_dir(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, or a shorter folder when tmp_path would not fit in sun_path (108 bytes)."""
    if len(str(tmp_path / "notify.sock")) < 100:
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="sdn-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("abstract", [False, True], ids=["path-socket", "abstract-socket"])
def test_type_notify_handshake_with_a_real_daemon(
    drop: Drop, short_dir: Path, abstract: bool
) -> None:
    notify = NotifySocket(None if abstract else short_dir / "notify.sock")
    log = drop.root / "daemon.log"
    env = drop.env(NOTIFY_SOCKET=notify.address, WATCHDOG_USEC="2000000")
    env.pop("WATCHDOG_PID", None)  # in case pytest itself runs under a watchdog
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sisdropd", "run", "-c", str(drop.config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_for(lambda: notify.times("READY=1") or proc.poll() is not None, 20, what="READY=1")
        assert proc.poll() is None, log.read_text()
        first = notify.snapshot()[0]
        assert "READY=1" in first[2], f"READY=1 must come first, got {first[2]}"
        assert f"STATUS=watching {drop.inbox}" in first[2]
        assert "watching" in log.read_text(), "READY=1 only once the inbox is watched"
        [ready_at] = notify.times("READY=1")

        # WATCHDOG_USEC=2 s: a ping every second while healthy.
        wait_for(lambda: len(notify.times("WATCHDOG=1")) >= 2, 5, what="two WATCHDOG=1")
        assert notify.times("WATCHDOG=1")[1] - ready_at <= 3.5, notify.snapshot()
        assert all(t >= ready_at for t in notify.times("WATCHDOG=1")), "no ping before READY"
        wait_for(
            lambda: any(
                line.startswith("STATUS=0 queued")
                for _, _, lines in notify.snapshot()
                for line in lines
            ),
            5,
            what="a STATUS= with the queue",
        )

        # A file dropped in: the STATUS= line follows the queue back to empty.
        (drop.inbox / "users.csv").write_text(USERS)
        wait_for(lambda: drop.outcomes("done"), 20, what="users.csv in done/")

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, log.read_text()
        wait_for(lambda: notify.times("STOPPING=1"), 2, what="STOPPING=1")
        msgs = notify.snapshot()
        # NotifyAccess=main: systemd drops datagrams from any other process.
        assert {pid for _, pid, _ in msgs} == {proc.pid}
        assert all(
            line.startswith(("READY=", "STATUS=", "WATCHDOG=", "STOPPING="))
            for _, _, lines in msgs
            for line in lines
            if line
        )
        stopping_at = notify.times("STOPPING=1")[0]
        assert notify.times("READY=1") == [ready_at] and ready_at < stopping_at
        assert TOKEN not in "".join("".join(lines) for _, _, lines in msgs)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        notify.close()
    assert TOKEN not in log.read_text()


# MemoryDenyWriteExecute=yes, tried: the kernel's own W^X switch (PR_SET_MDWE, Linux 6.3+),
# set before exec and kept across it, refuses what systemd's filter refuses: memory that is
# writable and executable, or made executable later.
_MDWE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""
_PROBE = """
import ctypes, mmap, sys
assert ctypes.CDLL(None).prctl(66, 0, 0, 0, 0) == 1  # PR_GET_MDWE
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except OSError:
    sys.exit(0)
sys.exit(3)
"""


@contextlib.contextmanager
def daemon_under(drop: Drop, argv: list[str]) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``argv`` (a daemon started some special way) running until the block ends; then
    SIGTERM, and it must exit 0. Killed if the block fails."""
    log = drop.root / "daemon.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, env=drop.env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: "watching" in log.read_text() or proc.poll() is not None, 20, what="daemon start")
        assert proc.poll() is None, log.read_text()
        yield proc, log
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_the_daemon_runs_with_memory_deny_write_execute(drop: Drop) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", _MDWE, "-c", _PROBE], capture_output=True, text=True, timeout=30
    )
    if probe.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert probe.returncode == 0, f"W^X is not in force: {probe.returncode} {probe.stderr}"
    argv = [sys.executable, "-c", _MDWE, "-m", "sisdropd", "run", "-c", str(drop.config)]
    with daemon_under(drop, argv) as (_proc, log):
        (drop.inbox / "users.csv").write_text(USERS)
        [done] = wait_for(lambda: drop.outcomes("done"), 20, what="users.csv in done/")
        assert drop.sidecar(done)["workflow_state"] == "imported"
    text = log.read_text()
    assert "inotify" in text and "MemoryError" not in text and "Traceback" not in text, text


# ------------------------------------------- resources and /proc, against the real daemon


def _size(value: str) -> int:
    """A systemd size ("512M", "1G", "1048576") in bytes."""
    m = re.fullmatch(r"(\d+)([KMGT]?)", value)
    assert m, value
    return int(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " ")


@pytest.mark.parametrize("src", [UNIT, TEMPLATE], ids=["unit", "template"])
def test_the_units_bound_memory_and_tasks(src: Path) -> None:
    u = parse_unit(src)
    assert 256 * 2**20 <= _size(one(u, "MemoryMax")) <= 2 * 2**30
    assert 32 <= int(one(u, "TasksMax")) <= 512


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare to mount a /proc")
def test_the_daemon_runs_under_protect_proc_and_proc_subset_within_its_limits(drop: Drop) -> None:
    """ProtectProc=invisible and ProcSubset=pid, as the kernel does them (a /proc mounted
    hidepid=invisible,subset=pid in a mount namespace of its own), and the daemon's own
    memory and threads against MemoryMax= and TasksMax=."""
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         "mount -t proc -o hidepid=invisible,subset=pid proc /proc && test ! -e /proc/sys && test -e /proc/self/status"],
        capture_output=True, text=True, timeout=30,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a subset=pid /proc here: {probe.stderr.strip()}")
    script = 'mount -t proc -o hidepid=invisible,subset=pid proc /proc && exec "$@"'
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
            sys.executable, "-m", "sisdropd", "run", "-c", str(drop.config)]
    with daemon_under(drop, argv) as (proc, log):
        (drop.inbox / "users.csv").write_text(USERS)
        (drop.inbox / "enrollments.csv").write_text("course_id,user_id,role,status\nC1,u1,student,active\nC1,u2,student,bogus\n")
        wait_for(lambda: len(drop.outcomes("done")) == 2, 30, what="both files in done/")
        status = _status(proc.pid)  # the exec'd daemon: unshare and sh are gone
        assert "sisdropd" in Path(f"/proc/{proc.pid}/cmdline").read_text()
        u = parse_unit(UNIT)
        peak = int(status["VmHWM"].split()[0]) * 1024
        assert 4 * peak <= _size(one(u, "MemoryMax")), f"peak {peak >> 20} MB leaves too little room"
        assert 4 * int(status["Threads"]) <= int(one(u, "TasksMax")), status["Threads"]
    text = log.read_text()
    assert "Traceback" not in text and "-> done/" in text, text


# ------------------------------------------------------- start limit and OnFailure (issue 14)

FAILURE = SYSTEMD / "sisdropd-failure@.service"


@pytest.mark.parametrize("src", [UNIT, TEMPLATE], ids=["unit", "template"])
def test_restarts_end_and_exit_2_is_never_restarted(src: Path) -> None:
    u = parse_unit(src)
    assert one(u, "RestartPreventExitStatus") == "2"
    # A passing exit 1 (lock held, journal busy) or a crash loop ends: at most 5 starts in 10 minutes.
    assert seconds(one(u, "StartLimitIntervalSec", "Unit")) == 600
    assert int(one(u, "StartLimitBurst", "Unit")) == 5
    assert 5 * seconds(one(u, "RestartSec")) < 600
    # The OnFailure= example, ready to uncomment, names the shipped alert template.
    assert "#OnFailure=sisdropd-failure@%N.service" in src.read_text().splitlines()


def test_the_failure_template_sends_a_down_event_as_json() -> None:
    u = parse_unit(FAILURE)
    assert one(u, "Type") == "oneshot" and one(u, "DynamicUser") == "yes"
    doc = json.loads(one(u, "StandardInputText").replace("%i", "sisdropd@acme").replace("%H", "sis1"))
    assert doc["event"] == "down" and doc["unit"] == "sisdropd@acme" and "journalctl -u sisdropd@acme" in doc["reason"]
    assert "SISDROPD_EVENT=down" in one(u, "Environment").split()
    assert one(u, "ExecStart").startswith("/usr/local/bin/sis-alert")
    install = INSTALL.read_text()
    assert "sisdropd-failure@.service /etc/systemd/system/" in install and "OnFailure=sisdropd-failure@%N.service" in install


@needs_analyze
@pytest.mark.parametrize("src, name", [(UNIT, "sisdropd.service"), (TEMPLATE, "sisdropd@acme.service")], ids=["unit", "instance"])
def test_verify_with_on_failure_switched_on(tmp_path: Path, src: Path, name: str) -> None:
    copy = _verifiable_copy(src, tmp_path, _real_sisdropd(tmp_path))
    copy.write_text(copy.read_text().replace("#OnFailure=", "OnFailure="))
    (tmp_path / FAILURE.name).write_text(FAILURE.read_text().replace("/usr/local/bin/sis-alert", shutil.which("true") or "/bin/true"))
    if name != copy.name:
        (tmp_path / name).symlink_to(copy.name)
    failure = f"sisdropd-failure@{name.removesuffix('.service')}.service"
    (tmp_path / failure).symlink_to(FAILURE.name)
    for unit in (name, failure):
        problems, r = verify_problems(tmp_path / unit, unit)
        assert not problems, "\n".join(problems)
        assert r.returncode == 0, r.stdout + r.stderr
