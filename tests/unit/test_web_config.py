"""The console's [web] settings: the usual precedence, every value checked, errors naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from pending_jobs import config
from pending_jobs.errors import ConfigError


def test_defaults_listen_on_loopback_without_auth() -> None:
    web = config.load_web({}, environ={})
    assert (web.host, web.port, web.read_only, web.auth_configured) == ("127.0.0.1", 8080, False, False)
    assert web.push_poll_interval == 0.25 and web.allowed_origins == []


def test_flag_beats_environment_beats_file(tmp_path: Path) -> None:
    path = tmp_path / "pj.toml"
    path.write_text('[web]\nhost = "0.0.0.0"\nport = 9000\ntoken = "file"\nallowed_origins = ["https://a.example"]\n'
                    'read_only = true\npush_poll_interval = 0.1\n')
    web = config.load_web({"port": 9100}, environ={"PENDING_JOBS_WEB_HOST": "::1"}, config_file=str(path))
    assert (web.host, web.port, web.token, web.read_only) == ("::1", 9100, "file", True)
    assert web.allowed_origins == ["https://a.example"] and web.push_poll_interval == 0.1
    assert web.auth_configured
    # the [web] table does not disturb the other commands' settings
    assert config.load({}, environ={}, config_file=str(path)).database_url


@pytest.mark.parametrize(("table", "message"), [
    ("push_poll_interval = 20", "push_poll_interval: 20 is outside 0.05 to 10"),
    ("port = 0", "port: 0 is outside 1 to 65535"),
    ("read_only = 2", "read_only: must be true or false"),
    ("colour = 'red'", "unknown setting(s) in [web]: colour"),
    ("readonly = true", "unknown setting(s) in [web]: readonly (did you mean 'read_only'?)"),
    ("basic_user = 'alice'", "needs both basic_user and basic_password"),
])
def test_bad_values_name_the_setting(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "pj.toml"
    path.write_text(f"[web]\n{table}\n")
    with pytest.raises(ConfigError) as raised:
        config.load_web({}, environ={}, config_file=str(path))
    assert message in str(raised.value)


def test_environment_value_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"PENDING_JOBS_WEB_PUSH_POLL_INTERVAL: 0\.01 is outside"):
        config.load_web({}, environ={"PENDING_JOBS_WEB_PUSH_POLL_INTERVAL": "0.01"})


@pytest.mark.parametrize("raw", [True, "1", "true", "TRUE", " yes ", "on", "On"])
def test_read_only_accepts_each_spelling_of_true(raw: object) -> None:
    assert config.load_web({"read_only": raw}, environ={}).read_only is True


@pytest.mark.parametrize("raw", [False, "0", "false", "False", " no ", "off", ""])
def test_read_only_accepts_each_spelling_of_false(raw: object) -> None:
    assert config.load_web({"read_only": raw}, environ={}).read_only is False


@pytest.mark.parametrize("raw", ["maybe", "2", 1, 0.0, ["true"]])
def test_read_only_refuses_anything_else_with_its_value(raw: object) -> None:
    with pytest.raises(ConfigError) as raised:
        config.load_web({"read_only": raw}, environ={})
    assert str(raised.value) == f"--read-only: must be true or false, not {raw!r}"


def test_each_source_is_named_in_its_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        config.load_web({"port": "x"}, environ={})
    assert str(raised.value).startswith("--port: ")
    with pytest.raises(ConfigError) as raised:
        config.load_web({}, environ={"PENDING_JOBS_WEB_PORT": "70000"})
    assert str(raised.value).startswith("PENDING_JOBS_WEB_PORT: 70000 is outside 1 to 65535")
    path = tmp_path / "pj.toml"
    path.write_text("[web]\nport = 70000\n")
    with pytest.raises(ConfigError) as raised:
        config.load_web({}, environ={"PENDING_JOBS_CONFIG": str(path)})
    assert str(raised.value).startswith(f"{path}: [web] port: 70000 is outside")


def test_a_flag_of_none_falls_through_to_the_environment_then_the_file_then_the_default(tmp_path: Path) -> None:
    path = tmp_path / "pj.toml"
    path.write_text('[web]\ntoken = "from-file"\n')
    web = config.load_web({"port": None, "token": None, "host": None}, environ={"PENDING_JOBS_WEB_PORT": "9001"},
                          config_file=str(path))
    assert (web.port, web.token, web.host) == (9001, "from-file", "127.0.0.1")


def test_web_must_be_a_table_and_unknown_keys_are_listed_sorted(tmp_path: Path) -> None:
    path = tmp_path / "pj.toml"
    path.write_text('web = "on"\n')
    with pytest.raises(ConfigError) as raised:
        config.load_web({}, environ={}, config_file=str(path))
    assert str(raised.value) == f"{path}: web must be a table ([web]), not 'on'"
    path.write_text('[web]\nzeta = 1\nalpha = 2\nport = 8081\n')
    with pytest.raises(ConfigError) as raised:
        config.load_web({}, environ={}, config_file=str(path))
    assert str(raised.value) == f"{path}: unknown setting(s) in [web]: alpha, zeta"


@pytest.mark.parametrize(("user", "password", "ok"), [("", "", True), ("a", "b", True), ("a", "", False),
                                                      ("", "b", False)])
def test_basic_auth_needs_both_halves(user: str, password: str, ok: bool) -> None:
    flags = {"basic_user": user, "basic_password": password}
    if ok:
        assert config.load_web(flags, environ={}).auth_configured is bool(user)
    else:
        with pytest.raises(ConfigError, match="web basic auth needs both basic_user and basic_password"):
            config.load_web(flags, environ={})


def test_web_help_names_the_web_setting() -> None:
    text = config.env_help("web_port", config.WEB_SETTINGS)
    assert text.startswith("port the console listens on (env PENDING_JOBS_WEB_PORT; default 8080")
    assert "1 to 65535" in text
    assert "PENDING_JOBS_WEB_PUSH_POLL_INTERVAL" in config.env_help("web_push_poll_interval", config.WEB_SETTINGS)
