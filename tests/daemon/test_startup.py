"""Start-up mistakes (issue 14): every configuration problem makes ``sisdropd run`` exit 2 with one
line naming the key or file and what to do, never a traceback (systemd does not restart on 2);
a passing condition (another daemon holds the lock, the journal is busy) exits 1. Each case
runs the real ``sisdropd run`` process."""

from __future__ import annotations

import re
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.support import TOKEN, Drop


def run(drop: Drop, *extra: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return drop.cli("run", "-c", str(drop.config), *extra, timeout=timeout)


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    """stderr must be exactly one line, with no traceback and no token."""
    assert "Traceback" not in r.stdout + r.stderr and TOKEN not in r.stdout + r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def prepend(drop: Drop, text: str) -> None:
    drop.config.write_text(text + drop.config.read_text())


def append(drop: Drop, text: str) -> None:
    drop.config.write_text(drop.config.read_text() + text)


@pytest.mark.parametrize(
    "case, expect",
    [
        ("log_file_in_a_file", r"log.file: cannot open .*/afile/sisdropd.log \(.*\): make its folder writable"),
        ("log_file_is_a_folder", r"log.file: cannot open .*/logdir \(.*\): make its folder writable"),
        ("rotation", r"config: log.rotation: cannot read 'fifty': give a size"),
        ("import_beside_rules", r"config: import: expected a table of Canvas's create parameters, got 5: write it as \[import\]"),
        ("root_is_a_file", r"folders.root: cannot create .*/afile/inbox \(Not a directory\): something that is not a folder is in the way"),
        ("inbox_is_a_file", r"folders.inbox: cannot create .*/afile \(File exists\): something that is not a folder"),
        ("ca_bundle", r"canvas.ca_bundle: cannot read .*/nope.pem \(No such file or directory\)"),
        ("ca_bundle_not_pem", r"canvas.ca_bundle: .*/afile is not a PEM file"),
        ("toml", r"config: .*sisdropd.toml: TOML syntax error"),
        ("proxy", r"config: canvas.proxy: give the proxy as http://host:port"),
        ("bad_port", r"config: canvas.base_url: not a URL"),
        ("pidfile", r"--pidfile is for --detach"),
    ],
)
def test_a_configuration_problem_exits_2_with_one_line(drop: Drop, tmp_path: Path, case: str, expect: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    extra: list[str] = []
    if case == "log_file_in_a_file":
        drop.write(log={"file": str(afile / "sisdropd.log")})
    elif case == "log_file_is_a_folder":
        (tmp_path / "logdir").mkdir()
        drop.write(log={"file": str(tmp_path / "logdir")})
    elif case == "rotation":
        drop.write(log={"file": str(tmp_path / "x.log"), "rotation": "fifty"})
    elif case == "import_beside_rules":
        drop.sections.pop("import")
        drop.write()
        prepend(drop, "import = 5\n")
        append(drop, '[[rules]]\nmatch = "x.csv"\n[rules.import]\nbatch_mode = false\n')
    elif case == "root_is_a_file":
        drop.write(folders={"root": str(afile)})
    elif case == "inbox_is_a_file":
        drop.write(folders={"inbox": str(afile)})
    elif case == "ca_bundle":
        drop.write(canvas={"ca_bundle": str(tmp_path / "nope.pem")})
    elif case == "ca_bundle_not_pem":
        drop.write(canvas={"ca_bundle": str(afile)})
    elif case == "toml":
        append(drop, "[watch\n")
    elif case == "proxy":
        drop.write(canvas={"proxy": "proxy.example.edu:3128"})
    elif case == "bad_port":
        drop.write(canvas={"base_url": "https://canvas.example.edu:99999"})
    elif case == "pidfile":
        extra = ["--pidfile", str(tmp_path / "x.pid")]
    r = run(drop, *extra)
    assert r.returncode == 2, (r.returncode, r.stderr)

    assert re.fullmatch("sisdropd: " + expect + ".*", one_line(r)), r.stderr
    assert not (drop.state_dir / "sisdropd.lock").exists() or case.startswith("log")


def test_detach_refuses_a_bad_log_file_before_detaching(drop: Drop, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    drop.write(log={"file": str(tmp_path / "afile" / "d.log")})
    r = run(drop, "--detach", "--pidfile", str(tmp_path / "d.pid"))
    assert r.returncode == 2 and "log.file: cannot open" in one_line(r)
    assert not (tmp_path / "d.pid").exists()


def test_another_daemon_holding_the_lock_exits_1(drop: Drop, daemon) -> None:
    first = daemon()
    r = run(drop)
    assert r.returncode == 1
    assert f"another sisdropd (pid {first.proc.pid}) is already running" in one_line(r)
    assert first.proc.poll() is None


def test_a_busy_journal_exits_1_and_a_free_one_starts(drop: Drop, daemon) -> None:
    first = daemon()  # makes the journal, then stops
    assert first.terminate() == 0
    holder = sqlite3.connect(drop.state_dir / "journal.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a backup or an sqlite3 shell holding a write lock
    try:
        r = run(drop)
        assert r.returncode == 1, r.stderr
        assert "journal.sqlite3 is locked by another process" in one_line(r)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    daemon()  # once free, it starts


def test_cli_conventions(drop: Drop, tmp_path: Path) -> None:
    # -c before the command, as well as after it.
    r = drop.cli("-c", str(drop.config), "status")
    assert r.returncode == 0 and f"no journal yet in {drop.state_dir}" in r.stdout, r.stderr
    r = drop.cli("-c", str(tmp_path / "nope.toml"), "status", "-c", str(drop.config))
    assert r.returncode == 0 and str(drop.state_dir) in r.stdout, r.stderr  # after the command wins
    r = drop.cli("-c", str(tmp_path / "nope.toml"), "status")
    assert r.returncode == 2 and "nope.toml: no such config file" in r.stderr
    # --help ends with the exit statuses and the environment variables.
    r = drop.cli("--help")
    assert r.returncode == 0
    tail = r.stdout[r.stdout.index("exit statuses:"):]
    assert r.stdout.rstrip().endswith(tail.rstrip())
    for word in ("SISDROPD_TOKEN", "SISDROPD_CONFIG", "CREDENTIALS_DIRECTORY", "HTTPS_PROXY", "NO_PROXY"):
        assert word in tail.split("environment:")[1], word
    for status in ("0 ", "1 ", "2 ", "3 ", "4 "):
        assert f"\n  {status}" in tail.split("environment:")[0], status
