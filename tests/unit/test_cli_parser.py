"""The command line's parser built for one command parses it as the whole parser does.

``cli.main`` builds only the parser of the command a command line starts with (building
all of them costs ~2 ms of a quick command's start-up); what it parses, what it refuses
and what its ``--help`` says must not depend on that.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

import pytest

from sisdropd import cli

LINES = [
    ["submit", "users.csv"],
    ["submit", "--no-wait", "-c", "c.toml", "users.csv", "--json"],
    ["status", "5", "--json", "--last", "3"],
    ["status"],
    ["validate", "a.csv", "b.zip", "--import-type", "instructure_csv"],
    ["abort", "--all-pending", "--yes"],
    ["abort", "users.csv"],
    ["restore", "3", "--undelete-only", "--batch-mode"],
    ["release", "users.csv"],
    ["pause", "-c", "c.toml"],
    ["fake-canvas", "--port", "0", "--import-seconds", "0.5"],
    ["demo", "--keep"],
    ["run", "--detach", "--pidfile", "/run/s.pid"],
    ["check"],
]
REFUSED = [["submit"], ["status", "x"], ["restore", "3", "--undelete-only", "--unconclude-only"], ["pause", "extra"]]


@pytest.fixture(autouse=True)
def umask_kept() -> Iterator[None]:
    """``cli.main`` sets the process's umask (0o027): the test process gets its own back."""
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


@pytest.mark.parametrize("argv", LINES, ids=lambda a: " ".join(a))
def test_one_commands_parser_parses_its_line_as_the_whole_parser(argv: list[str]) -> None:
    assert vars(cli.build_parser(argv[0]).parse_args(argv)) == vars(cli.build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", REFUSED, ids=lambda a: " ".join(a))
def test_one_commands_parser_refuses_what_the_whole_parser_refuses(argv: list[str], capsys) -> None:
    said = []
    for parser in (cli.build_parser(argv[0]), cli.build_parser()):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(argv)
        said.append((e.value.code, capsys.readouterr().err))
    assert said[0] == said[1] and said[0][0] == 2


@pytest.mark.parametrize("name", sorted(cli.NAMES))
def test_each_command_has_the_same_help_alone(name: str, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    alone = subparser(cli.build_parser(name), name).format_help()
    assert alone == subparser(cli.build_parser(), name).format_help()
    assert f"usage: sisdropd {name} [-h]" in alone


def test_main_builds_the_whole_parser_when_the_line_does_not_start_with_a_command(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["frobnicate"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice: 'frobnicate'" in err
    assert all(repr(name) in err for name in cli.NAMES)  # every command offered
    with pytest.raises(SystemExit) as e:  # an option before the command: the whole parser too
        cli.main(["-c", "g.toml", "--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("sisdropd ")


@pytest.mark.parametrize("argv", [["submit", "a.csv", "b.csv"], ["-c", "g.toml", "submit", "a.csv", "b.csv"]])
def test_an_extra_argument_is_the_commands_usage_error(argv: list[str], capsys) -> None:
    """``sisdropd submit a.csv b.csv``: submit's usage and its error, not the top-level usage."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith("usage: sisdropd submit [-h]") and "sisdropd submit: error: unrecognized arguments: b.csv" in err, err


@pytest.mark.parametrize("value, why", [("-3", "must be 1 or more, not -3"), ("0", "must be 1 or more, not 0"), ("x", "not a whole number: 'x'")])
def test_status_last_takes_a_count_of_one_or_more(value: str, why: str, capsys) -> None:
    """``status --last -3`` listed every outcome (SQLite's LIMIT -3 is no limit)."""
    with pytest.raises(SystemExit) as e:
        cli.main(["status", "--last", value])
    assert e.value.code == 2 and f"argument --last: {why}" in capsys.readouterr().err
