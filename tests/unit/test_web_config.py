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
