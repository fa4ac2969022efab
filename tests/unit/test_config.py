"""Settings are checked once, where they are read: type, finite, within the setting's range."""

from __future__ import annotations

from pathlib import Path

import pytest

from pending_jobs import config
from pending_jobs.errors import ConfigError


def load(**environ: str) -> config.Settings:
    return config.load({}, environ={f"PENDING_JOBS_{k.upper()}": v for k, v in environ.items()})


@pytest.mark.parametrize(("name", "value"), [
    ("grace", "nan"), ("grace", "inf"), ("lease", "inf"), ("lease", "1e12"), ("lease", "0.5"),
    ("max_runtime", "-1"), ("poll", "-0.1"), ("callback_timeout", "nan"), ("callback_timeout", "inf"),
    ("callback_connect_timeout", "0"), ("callback_schedule", "5,inf"), ("callback_schedule", "5,-1"),
    ("retention_succeeded", "inf"), ("retention_failed", "1e9d"), ("batch_size", "0"), ("batch_size", "2.9"),
    ("concurrency", "true"), ("payload_limit", "1e3"), ("max_jobs", "-5"),
])
def test_a_bad_value_is_a_configuration_error_naming_the_setting(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"PENDING_JOBS_{name.upper()}"):
        load(**{name: value})


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("lease", "1", 1.0), ("lease", "1d", 86400.0), ("grace", "0", 0.0), ("poll", "3600", 3600.0),
    ("batch_size", "10000", 10_000), ("max_jobs", "0", None), ("callback_schedule", "0,30d", [0.0, 2592000.0]),
    ("retention_succeeded", "0", 0.0), ("max_runtime", "15m", 900.0),
])
def test_values_at_the_edges_of_their_range_are_taken(name: str, value: str, expected: object) -> None:
    assert getattr(load(**{name: value}), name) == expected


@pytest.mark.parametrize(("body", "message"), [
    ("batch_size = true\n", "whole number"),
    ("batch_size = 2.9\n", "whole number"),
    ("concurrency = 1.0\n", "whole number"),
    ("grace = nan\n", "not a duration: nan"),
    ("database_url = 5\n", "must be a string"),
    ("tasks = [1, 2]\n", "must be a string"),
    # `tasks` (plural) names handler modules: a [tasks.NAME] table (meant as [task.NAME]) said only "must be a string"
    ('[tasks.report]\ncommand = ["true"]\n', r"tasks: must be a string, not .*declared tasks are \[task\.NAME\]"),
    ("[queues.mail]\nmax_running = 1\n", r"queues: must be a string, not .*queue limits \[queue\.NAME\]"),
    ("pending_jobs = 5\n", "must be a table"),
    ('batch_size = 10\n[pending_jobs]\nconcurrency = 2\n', r"batch_size outside the \[pending_jobs\] table"),
    ("no_such_setting = 1\n", "unknown setting"),
    # a typo, or a plural for a singular, is named with the setting meant (the message alone sent users to the docs)
    ("concurency = 2\n", r"unknown setting\(s\): concurency \(did you mean 'concurrency'\?\)$"),
    ('[schedule.nightly]\ncron = "0 2 * * *"\n', r"unknown setting\(s\): schedule \(did you mean 'schedules'\?\)$"),
    ("zzz = 1\n", r"unknown setting\(s\): zzz$"),
])
def test_toml_values_are_not_coerced_or_ignored(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "pending-jobs.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        config.load({}, environ={}, config_file=str(path))


def test_a_table_file_and_a_top_level_file_both_work(tmp_path: Path) -> None:
    path = tmp_path / "pending-jobs.toml"
    path.write_text('[pending_jobs]\nbatch_size = 7\nlease = "2m"\n')
    assert (config.load({}, environ={}, config_file=str(path)).batch_size, 120.0) == (7, 120.0)
    path.write_text('batch_size = 8\ncallback_schedule = [1, "2m"]\n')
    settings = config.load({}, environ={}, config_file=str(path))
    assert (settings.batch_size, settings.callback_schedule) == (8, [1.0, 120.0])


def test_the_help_names_the_range() -> None:
    assert "1 s to 1 d" in config.env_help("lease")


@pytest.mark.parametrize("kind", ["queue", "schedules"])
def test_a_named_table_key_that_is_not_tables_names_the_file_and_the_key(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "pj.toml"
    path.write_text(f'database_url = "sqlite://"\n{kind} = 5\n')
    with pytest.raises(ConfigError) as raised:
        config.load({}, environ={}, config_file=str(path))
    assert str(raised.value) == f"{path}: {kind} must hold one table per name, [{kind}.NAME]"


def test_an_empty_environment_variable_counts_as_unset(tmp_path: Path) -> None:
    path = tmp_path / "pending-jobs.toml"
    path.write_text('callback_secret = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]\nbatch_size = 7\n')
    loaded = config.load({}, environ={"PENDING_JOBS_CALLBACK_SECRET": "", "PENDING_JOBS_BATCH_SIZE": ""},
                         config_file=str(path))
    assert loaded.callback_secret and loaded.batch_size == 7  # the file's, not an empty secret turning signing off
    web = config.load_web({}, environ={"PENDING_JOBS_WEB_PORT": ""})
    assert web.port == config.load_web({}, environ={}).port


@pytest.mark.parametrize("value", [",", " ", "mail,,reports", "q" * 65])
def test_queues_from_the_environment_are_checked_as_run_queue_checks_them(value: str) -> None:
    """`run --queue` refused an empty or a 65-character name, PENDING_JOBS_QUEUES did not: `,` served every queue
    (the names dropped), a name no queue column can hold served nothing and exited 0."""
    with pytest.raises(ConfigError, match="PENDING_JOBS_QUEUES: a queue name"):
        config.load({}, environ={"PENDING_JOBS_QUEUES": value})


@pytest.mark.parametrize("body", ['queues = [""]', 'queues = ["mail", " "]', f'queues = ["{"q" * 65}"]',
                                  'queues = ","', 'queues = ["mail\\u0000"]'])
def test_queues_from_the_config_file_are_checked_as_run_queue_checks_them(tmp_path: Path, body: str) -> None:
    path = tmp_path / "pj.toml"
    path.write_text(body + "\n")
    with pytest.raises(ConfigError, match=f"{path}: queues: a queue name"):
        config.load({}, environ={}, config_file=str(path))


def test_good_queue_names_are_taken_from_every_source(tmp_path: Path) -> None:
    path = tmp_path / "pj.toml"
    path.write_text(f'queues = ["mail", "{"q" * 64}"]\n')
    assert config.load({}, environ={}, config_file=str(path)).queues == ["mail", "q" * 64]
    assert config.load({}, environ={"PENDING_JOBS_QUEUES": " mail , reports "}).queues == ["mail", "reports"]
    assert config.load({"queues": "mail"}, environ={}).queues == ["mail"]
    path.write_text("queues = []\n")  # none named: every queue, as unset
    assert config.load({}, environ={}, config_file=str(path)).queues == []
