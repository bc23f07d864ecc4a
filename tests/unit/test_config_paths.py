"""A relative path in the config file is taken from the config file's folder, not from the
working directory of whoever reads it (systemd starts the daemon in /)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sisdropd import cli, config
from tests.support import TOKEN, write_config


def relative_config(folder: Path, base_url: str = "https://canvas.example.edu") -> Path:
    return write_config(folder / "sisdropd.toml", {
        "canvas": {"base_url": base_url, "timeout": 1, "token_file": "secret/token", "ca_bundle": "ca.pem"},
        "folders": {"root": "sub", "held": "../elsewhere/held"},
        "log": {"file": "logs/sisdropd.log"},
        "metrics": {"textfile": "sisdropd.prom"},
    })


def test_relative_paths_are_taken_from_the_config_files_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    path = relative_config(tmp_path / "etc")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the reader's working directory means nothing
    for given in (path, Path("../etc/sisdropd.toml")):  # the config's own path may be relative too
        cfg = config.load(given)
        etc = tmp_path.resolve() / "etc"  # the folder the file was read from
        assert cfg.folders.path("inbox") == etc / "sub" / "inbox"
        assert cfg.folders.path("state_dir") == etc / "sub" / ".sisdropd"
        assert cfg.folders.path("held") == etc / "../elsewhere/held"  # as written, from there
        assert cfg.canvas.token_file == str(etc / "secret" / "token") and cfg.canvas.ca_bundle == str(etc / "ca.pem")
        assert cfg.log.file == str(etc / "logs" / "sisdropd.log") and cfg.metrics.textfile == str(etc / "sisdropd.prom")


def test_a_config_without_a_file_takes_relative_paths_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = config.from_dict({"canvas": {"base_url": "https://canvas.example.edu"}, "folders": {"root": "sub"}})
    assert cfg.folders.root == str(Path.cwd() / "sub")
    cfg = config.from_dict({"canvas": {"base_url": "https://canvas.example.edu"}, "folders": {"root": "/srv/sisdrop"}})
    assert cfg.folders.root == "/srv/sisdrop"


def test_check_shows_the_resolved_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a closed port: check's Canvas step fails at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "etc").mkdir()
    path = relative_config(tmp_path / "etc", base_url=f"http://127.0.0.1:{port}")
    monkeypatch.chdir("/")
    monkeypatch.setenv("SISDROPD_TOKEN", TOKEN)
    cli.main(["-c", str(path), "check"])
    out = capsys.readouterr().out.splitlines()
    etc = tmp_path.resolve() / "etc"
    assert f"ok: inbox {etc}/sub/inbox (will be created)" in out, out
    assert f"ok: log file {etc}/logs/sisdropd.log" in out, out
