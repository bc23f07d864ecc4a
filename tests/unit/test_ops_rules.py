"""Pure rules behind issue 14: which proxy a URL takes, what a reload may change, and that a
config file can only ever be refused with named problems (never another exception)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sisdropd import config, reload
from sisdropd.config import ConfigError
from sisdropd.proxy import no_proxy_matches, proxy_for

BASE = {"canvas": {"base_url": "https://canvas.example.edu"}, "folders": {"root": "/srv/sisdrop"}}


@pytest.mark.parametrize(
    "host, port, no_proxy, hit",
    [
        ("canvas.example.edu", 443, "example.edu", "example.edu"),
        ("canvas.example.edu", 443, ".example.edu", ".example.edu"),
        ("canvas.example.edu", 443, "*.example.edu", "*.example.edu"),
        ("example.edu", 443, ".example.edu", ".example.edu"),
        ("notexample.edu", 443, "example.edu", None),
        ("canvas.example.edu", 443, "other.edu, canvas.example.edu:443", "canvas.example.edu:443"),
        ("canvas.example.edu", 443, "canvas.example.edu:8443", None),
        ("10.1.2.3", 443, "10.0.0.0/8", "10.0.0.0/8"),
        ("10.1.2.3", 443, "10.1.2.3", "10.1.2.3"),
        ("canvas.example.edu", 443, "10.0.0.0/8", None),
        ("anything", 443, " * ", "*"),
        ("Canvas.Example.EDU", 443, "EXAMPLE.edu", "EXAMPLE.edu"),
        ("canvas.example.edu", 443, "", None),
    ],
)
def test_no_proxy(host: str, port: int, no_proxy: str, hit: str | None) -> None:
    assert no_proxy_matches(host, port, no_proxy) == hit


def test_proxy_for() -> None:
    remote, local = "https://canvas.example.edu/api/v1/x", "http://127.0.0.1:8900/api/v1/x"
    env = {"HTTPS_PROXY": "http://up:3128", "https_proxy": "http://low:3128", "HTTP_PROXY": "http://h:1"}
    assert proxy_for(remote, None, env) == ("http://low:3128", "$HTTPS_PROXY")  # lower case first, as curl
    assert proxy_for(remote, None, {"Https_Proxy": "http://mixed:1"}) == ("http://mixed:1", "$HTTPS_PROXY")
    assert proxy_for(remote, None, {"HTTPS_PROXY": " "})[0] is None
    assert proxy_for(local, None, env) == (None, "direct: 127.0.0.1 is this host")
    assert proxy_for("https://localhost/x", None, env)[0] is None
    assert proxy_for(local, "http://cfg:1", env) == ("http://cfg:1", "[canvas] proxy")
    assert proxy_for(remote, "http://cfg:1", {**env, "NO_PROXY": "*"}) == ("http://cfg:1", "[canvas] proxy")
    assert proxy_for(remote, None, {"HTTP_PROXY": "http://h:1"}) == (None, "direct: no $HTTPS_PROXY set")
    assert proxy_for(remote, None, {**env, "no_proxy": "example.edu"})[1] == "direct: $NO_PROXY excludes canvas.example.edu (example.edu)"


def test_reload_marks_live_and_restart_keys_and_keeps_the_restart_ones() -> None:
    old = config.from_dict({**BASE, "notify": {"webhook": "https://hooks.example.edu/T0/secret-path"}})
    new = config.from_dict(
        {
            "canvas": {"base_url": "https://other.example.edu", "proxy": "http://u:pw@proxy:3128"},
            "folders": {"root": "/srv/other"},
            "watch": {"settle_seconds": 3, "polling": True},
            "log": {"level": "DEBUG", "file": "/var/log/x.log"},
            "notify": {"webhook": "https://hooks.example.edu/T0/other-secret"},
            "import": {"import_type": "instructure_csv", "batch_mode": True, "batch_mode_term_id": "sis_term_id:X"},
        }
    )
    lines = {c.key: (c.live, reload.describe(c)) for c in reload.changes(old, new)}
    assert lines["watch.settle_seconds"] == (True, "watch.settle_seconds: 10 -> 3")
    assert lines["import.batch_mode"] == (True, "import.batch_mode: unset -> true")
    assert lines["log.level"][0] and not lines["log.file"][0] and not lines["watch.polling"][0]
    assert lines["canvas.proxy"] == (False, "canvas.proxy: unset -> http://u:****@proxy:3128 needs a restart (systemctl restart sisdropd); still unset until then")
    assert lines["notify.webhook"] == (True, "notify.webhook: https://hooks.example.edu/… -> https://hooks.example.edu/…")
    assert not any("secret" in text or ":pw@" in text for _, text in lines.values())
    running = reload.merged(old, new)
    assert running.canvas == old.canvas and running.folders == old.folders and running.log.file is None
    assert running.watch.polling is False and running.watch.settle_seconds == 3 and running.log.level == "DEBUG"
    assert running.import_params["batch_mode"] is True and reload.changes(old, old) == []


# -- a config file is refused with named problems, never with another exception ---------------------
_SECTIONS = {n: [f.name for f in dataclasses.fields(c)] for n, c in config._SECTIONS.items()}
_ODD = ["http://[::1", "https://h:abc", "https://h:99999", "fifty", "50 MB", "{x}", "(?P<x>a)", "[", "", "*", "http://u:p@h:1"]
_scalar = st.one_of(st.booleans(), st.integers(-5, 10**12), st.floats(), st.text(max_size=6), st.sampled_from(_ODD))
_value = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)), max_leaves=5)


@st.composite
def _raw(draw: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {k: dict(v) for k, v in BASE.items()}
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from([*_SECTIONS, "import", "rules", "bogus"]))
        if section in _SECTIONS:
            key = draw(st.sampled_from([*_SECTIONS[section], "bogus"]))
            raw.setdefault(section, {})
            if isinstance(raw[section], dict):
                raw[section][key] = draw(_value)
            else:
                raw[section] = draw(_value)
        elif section == "rules":
            raw["rules"] = draw(st.one_of(_value, st.lists(st.dictionaries(st.sampled_from(["match", "glob", "import", "x"]), _value, max_size=3), max_size=2)))
        else:
            raw[section] = draw(st.one_of(_value, st.dictionaries(st.sampled_from(["import_type", "batch_mode", "change_threshold", "x"]), _value, max_size=3)))
    return raw


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_raw())
def test_any_config_loads_or_is_refused_with_named_problems(raw: dict[str, Any]) -> None:
    try:
        config.from_dict(raw)
    except ConfigError as e:
        assert e.problems and all(isinstance(p, str) and "\n" not in p for p in e.problems)


@pytest.mark.parametrize(
    "raw",
    [
        {**BASE, "import": {"\n": False}},
        {**BASE, "canvas\x1b[2J": {}},
        {**BASE, "folders": {"root": "/srv", "in\nbox": "x"}},
        {**BASE, "rules": [{"glob": "*.csv", "x\u202e": 1}]},
    ],
    ids=["import key", "section", "section key", "rule key"],
)
def test_a_key_with_a_newline_or_control_is_named_on_one_visible_line(raw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        config.from_dict(raw)
    assert caught.value.problems
    assert all(p.isprintable() for p in caught.value.problems)
    text = "; ".join(caught.value.problems)
    assert any(esc in text for esc in ("\\n", "\\x1b", "\\u202e"))


@pytest.mark.parametrize("section", sorted(_SECTIONS))
def test_every_key_with_every_odd_value_loads_or_is_refused(section: str) -> None:
    """The deterministic half of the above: each key of each section, each odd value."""
    for key in _SECTIONS[section]:
        for value in [*_ODD, 5, -1, 1e400, True, [], ["x"], {"a": 1}, {"users": "x"}]:
            raw = {**{k: dict(v) for k, v in BASE.items()}}
            raw.setdefault(section, {})[key] = value
            try:
                config.from_dict(raw)
            except ConfigError as e:
                assert all("\n" not in p for p in e.problems)
