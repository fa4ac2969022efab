"""Every parser and rule of the settings, each refusal with its words, and the precedence of sources."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from pending_jobs import config
from pending_jobs.config import Setting, duration, duration_list, integer, number, optional_integer, str_list, text
from pending_jobs.errors import ConfigError

HUGE = 10**400  # a TOML integer too large for a float


def toml(tmp_path: Path, body: str) -> str:
    path = tmp_path / "pending-jobs.toml"
    path.write_text(body)
    return str(path)


# -- value parsers -------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [
    (5, 5.0), (2.5, 2.5), ("7", 7.0), ("0", 0.0), ("30s", 30.0), ("15m", 900.0), ("2h", 7200.0), ("7d", 604800.0),
    (" 15M ", 900.0), ("1.5H", 5400.0), ("0d", 0.0),
])
def test_a_duration_is_seconds_or_a_number_with_a_unit(value: Any, seconds: float) -> None:
    assert duration(value) == seconds


@pytest.mark.parametrize("value", ["", "m", "soon", "5x", "inf", "nanm", "1e400", True, None, [5], {"s": 1},
                                   dt.date(2024, 1, 1), pytest.param(HUGE, id="huge")])
def test_what_is_not_a_duration_is_refused_naming_the_value(value: Any) -> None:
    with pytest.raises(ValueError) as refused:
        duration(value)
    assert str(refused.value) == f"not a duration: {value!r} (use seconds or 30s, 15m, 2h, 7d)"
    assert refused.value.__cause__ is None and refused.value.__suppress_context__


@pytest.mark.parametrize("value", ["-1", -0.5, "-1m"])
def test_a_negative_duration_is_refused(value: Any) -> None:
    with pytest.raises(ValueError) as refused:
        duration(value)
    assert str(refused.value) == f"a duration cannot be negative: {value!r}"


@pytest.mark.parametrize(("value", "whole"), [(5, 5), ("12", 12), (" 12 ", 12), ("-3", -3), (0, 0)])
def test_an_integer_is_a_whole_number_or_a_string_of_one(value: Any, whole: int) -> None:
    assert integer(value) == whole


@pytest.mark.parametrize("value", [True, False, 2.9, 1.0, "2.9", "", "ten", None, [1]])
def test_what_is_not_a_whole_number_is_refused(value: Any) -> None:
    with pytest.raises(ValueError) as refused:
        integer(value)
    assert str(refused.value) == f"must be a whole number, not {value!r}"


@pytest.mark.parametrize("value", [None, "", "0", 0, 0.0])
def test_an_optional_integer_is_unset_when_empty_or_zero(value: Any) -> None:
    assert optional_integer(value) is None


@pytest.mark.parametrize(("value", "whole"), [(5, 5), ("5", 5), (-1, -1)])
def test_an_optional_integer_otherwise_is_a_whole_number(value: Any, whole: int) -> None:
    assert optional_integer(value) == whole


def test_false_is_not_an_unset_optional_integer() -> None:
    with pytest.raises(ValueError, match="must be a whole number, not False"):
        optional_integer(False)


@pytest.mark.parametrize(("value", "result"), [(2, 2.0), (2.5, 2.5), ("2.5", 2.5), (" 1e3 ", 1000.0)])
def test_a_number_is_finite(value: Any, result: float) -> None:
    assert number(value) == result


@pytest.mark.parametrize(("value", "message"), [
    (True, "not a number: True"), (None, "not a number: None"), ([1], "not a number: [1]"),
    ("x", "could not convert string to float: 'x'"),
    ("inf", "must be a finite number, not 'inf'"), (float("nan"), "must be a finite number, not nan"),
    ("-inf", "must be a finite number, not '-inf'"),
])
def test_what_is_not_a_finite_number_is_refused(value: Any, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        number(value)
    assert str(refused.value) == message


def test_an_integer_too_large_for_a_float_is_refused_not_an_overflow() -> None:
    """It once raised OverflowError: a 400-digit TOML integer crashed the command instead of naming the setting."""
    with pytest.raises(ValueError, match=r"^must be a finite number, not 1000"):
        number(HUGE)


def test_text_is_a_string() -> None:
    assert text("x") == "x"
    assert text("") == ""
    for value in (5, None, ["x"]):
        with pytest.raises(ValueError) as refused:
            text(value)
        assert str(refused.value) == f"must be a string, not {value!r}"


@pytest.mark.parametrize(("value", "items"), [
    ("a, b ,,c", ["a", "b", "c"]), ("", []), (" ", []), (["a ", " b", ""], ["a", "b"]), ([], []),
])
def test_a_list_is_an_array_or_a_comma_separated_string(value: Any, items: list[str]) -> None:
    assert str_list(value) == items


def test_a_list_of_anything_but_strings_is_refused() -> None:
    with pytest.raises(ValueError, match="must be a string, not 1"):
        str_list(["a", 1])
    with pytest.raises(ValueError, match="must be a string, not 5"):
        str_list(5)


@pytest.mark.parametrize(("value", "seconds"), [
    ("5, 1m,2h", [5.0, 60.0, 7200.0]), ([1, "2m", 0.5], [1.0, 120.0, 0.5]), ("", []), ([], []),
])
def test_a_duration_list_is_an_array_or_a_comma_separated_string(value: Any, seconds: list[float]) -> None:
    assert duration_list(value) == seconds


def test_a_duration_list_refuses_a_bad_element() -> None:
    with pytest.raises(ValueError, match="not a duration: 'soon'"):
        duration_list("5,soon")
    with pytest.raises(ValueError, match="a duration cannot be negative: -1"):
        duration_list([5, -1])


# -- ranges ----------------------------------------------------------------------------------------


LIMITED = Setting("limited", 1, integer, "", 1, 10)
SECONDS = Setting("seconds", 1.0, duration, "", 0, 86400)
SCHEDULE = Setting("schedule", [], duration_list, "", 0.5, 3600)
OPEN = Setting("open", None, optional_integer, "", 1, None)
BELOW = Setting("below", 0, integer, "", None, 5)
FREE = Setting("free", "", text, "")


@pytest.mark.parametrize(("setting", "value"), [
    (LIMITED, 1), (LIMITED, 10), (SECONDS, 0.0), (SECONDS, 86400.0), (SCHEDULE, [0.5, 3600.0]), (SCHEDULE, []),
    (OPEN, None), (OPEN, 10**9), (BELOW, -10**9), (BELOW, 5), (FREE, "anything"), (LIMITED, "not a number"),
])
def test_a_value_within_its_range_or_at_its_edge_passes(setting: Setting, value: Any) -> None:
    setting.check(value)


@pytest.mark.parametrize(("setting", "value", "message"), [
    (LIMITED, 0, "0 is outside 1 to 10"),
    (LIMITED, 11, "11 is outside 1 to 10"),
    (SECONDS, -0.5, "-0.5 s is outside 0 s to 1 d"),
    (SECONDS, 86401.0, "86401 s is outside 0 s to 1 d"),
    (SCHEDULE, [1.0, 3601.0], "3601 s is outside 0.5 s to 1 h"),
    (SCHEDULE, [0.25], "0.25 s is outside 0.5 s to 1 h"),
    (SCHEDULE, [3600.0, 7200.0], "2 h is outside 0.5 s to 1 h"),
    (OPEN, 0, "0 is outside 1 to ∞"),
    (BELOW, 6, "6 is outside ∞ to 5"),
])
def test_a_value_one_past_its_range_is_refused_naming_the_range(setting: Setting, value: Any, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        setting.check(value)
    assert str(refused.value) == message


def test_every_element_of_a_list_is_checked_past_one_that_has_no_number() -> None:
    with pytest.raises(ValueError, match="outside"):
        Setting("mixed", [], str_list, "", 0, 1).check([None, "x", 5])


@pytest.mark.parametrize(("setting", "shown"), [
    (LIMITED, "1 to 10"), (OPEN, "1 to ∞"), (BELOW, "∞ to 5"), (FREE, ""), (SECONDS, "0 s to 1 d"),
    (Setting("big", 0, integer, "", 0, 100_000_000), "0 to 1e+08"),
])
def test_the_range_text(setting: Setting, shown: str) -> None:
    assert setting.range_text() == shown


@pytest.mark.parametrize(("seconds", "shown"), [
    (0.0, "0 s"), (30.0, "30 s"), (59.0, "59 s"), (60.0, "1 m"), (90.0, "90 s"), (120.0, "2 m"), (3540.0, "59 m"),
    (3600.0, "1 h"), (5400.0, "90 m"), (7200.0, "2 h"), (86400.0, "1 d"), (90000.0, "25 h"), (172800.0, "2 d"),
    (0.1, "0.1 s"), (61.0, "61 s"), (3660.0, "61 m"), (3601.0, "3601 s"), (86460.0, "1441 m"),
])
def test_durations_are_shown_in_their_largest_whole_unit(seconds: float, shown: str) -> None:
    assert config._shown(seconds, SECONDS) == shown
    assert config._shown(seconds, SCHEDULE) == shown


def test_other_numbers_are_shown_as_they_are() -> None:
    assert config._shown(3600, LIMITED) == "3600"
    assert config._shown(0.5, LIMITED) == "0.5"
    assert config._shown(None, LIMITED) == "∞"
    assert config._shown(None, SECONDS) == "∞"


def test_a_settings_environment_variable_is_its_upper_case_name() -> None:
    assert LIMITED.env == "PENDING_JOBS_LIMITED"
    assert config.BY_NAME["callback_schedule"].env == "PENDING_JOBS_CALLBACK_SCHEDULE"


# -- load: sources and their precedence ------------------------------------------------------------


def test_defaults_when_nothing_is_given() -> None:
    settings = config.load({}, environ={})
    assert settings == config.load(None, environ={})
    for setting in config.SETTINGS:
        assert getattr(settings, setting.name) == setting.default
    assert settings.declared_tasks == {}


def test_a_flag_beats_the_environment_which_beats_the_file(tmp_path: Path) -> None:
    path = toml(tmp_path, "batch_size = 3\nconcurrency = 3\ngrace = 3\n")
    environ = {"PENDING_JOBS_BATCH_SIZE": "2", "PENDING_JOBS_CONCURRENCY": "2"}
    settings = config.load({"batch_size": 1, "concurrency": None, "lease": None}, environ, path)
    assert (settings.batch_size, settings.concurrency, settings.grace, settings.lease) == (1, 2, 3.0, 300.0)


def test_the_file_is_named_by_the_environment_unless_given(tmp_path: Path) -> None:
    named = toml(tmp_path, "batch_size = 9\n")
    other = tmp_path / "other.toml"
    other.write_text("batch_size = 8\n")
    assert config.load({}, {"PENDING_JOBS_CONFIG": named}).batch_size == 9
    assert config.load({}, {"PENDING_JOBS_CONFIG": named}, str(other)).batch_size == 8


def test_the_process_environment_is_read_when_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENDING_JOBS_BATCH_SIZE", "42")
    monkeypatch.delenv("PENDING_JOBS_CONFIG", raising=False)
    assert config.load({}).batch_size == 42
    assert config.load().batch_size == 42
    assert config.load({}, environ={}).batch_size == 100


def test_a_bad_value_names_where_it_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        config.load({"batch_size": 0}, environ={})
    assert str(refused.value) == "--batch-size: 0 is outside 1 to 10000"
    with pytest.raises(ConfigError) as refused:
        config.load({"callback_connect_timeout": "x"}, environ={})
    assert str(refused.value) == "--callback-connect-timeout: could not convert string to float: 'x'"
    with pytest.raises(ConfigError) as refused:
        config.load({}, environ={"PENDING_JOBS_BATCH_SIZE": "x"})
    assert str(refused.value) == "PENDING_JOBS_BATCH_SIZE: must be a whole number, not 'x'"
    path = toml(tmp_path, "batch_size = 10001\n")
    with pytest.raises(ConfigError) as refused:
        config.load({}, environ={}, config_file=path)
    assert str(refused.value) == f"{path}: batch_size: 10001 is outside 1 to 10000"
    assert refused.value.__suppress_context__


def test_a_huge_integer_in_the_file_is_a_configuration_error(tmp_path: Path) -> None:
    path = toml(tmp_path, f"grace = {HUGE}\n")
    with pytest.raises(ConfigError, match=f"^{path}: grace: not a duration"):
        config.load({}, environ={}, config_file=path)


def test_a_huge_integer_for_a_whole_number_setting_is_refused_by_its_range(tmp_path: Path) -> None:
    """It once raised OverflowError: the range's message formatted the value as a float."""
    path = toml(tmp_path, f"batch_size = {HUGE}\n")
    with pytest.raises(ConfigError) as refused:
        config.load({}, environ={}, config_file=path)
    assert str(refused.value) == f"{path}: batch_size: {HUGE} is outside 1 to 10000"


@pytest.mark.parametrize("value", ["text", "json"])
def test_log_format_is_text_or_json(value: str) -> None:
    assert config.load({"log_format": value}, environ={}).log_format == value


def test_another_log_format_is_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        config.load({"log_format": "xml"}, environ={})
    assert str(refused.value) == "log_format must be text or json, not 'xml'"


@pytest.mark.parametrize("value", ["on", "off", "only"])
def test_callbacks_is_on_off_or_only(value: str) -> None:
    assert config.load({"callbacks": value}, environ={}).callbacks == value


def test_another_callbacks_value_is_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        config.load({"callbacks": "maybe"}, environ={})
    assert str(refused.value) == "callbacks must be on, off or only, not 'maybe'"


def test_replace_makes_a_changed_copy() -> None:
    settings = config.load({}, environ={})
    changed = settings.replace(batch_size=7, poll=0.0)
    assert (changed.batch_size, changed.poll, changed.lease) == (7, 0.0, settings.lease)
    assert settings.batch_size == 100


# -- the file --------------------------------------------------------------------------------------


def test_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.toml")
    with pytest.raises(ConfigError) as refused:
        config.read_file(path)
    assert str(refused.value) == f"cannot read config file {path}: No such file or directory"
    assert refused.value.__suppress_context__


def test_a_file_that_is_not_toml_is_a_configuration_error(tmp_path: Path) -> None:
    path = toml(tmp_path, "batch_size = = 3\n")
    with pytest.raises(ConfigError) as refused:
        config.read_file(path)
    assert str(refused.value) == f"config file {path} is not valid TOML: Invalid value (at line 1, column 14)"
    assert refused.value.__suppress_context__


def test_a_file_nested_past_pythons_recursion_limit_is_a_configuration_error(tmp_path: Path) -> None:
    # tomllib raised RecursionError, and every command printed a traceback (exit 1)
    path = toml(tmp_path, "[schedules.deep]\npayload = " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ConfigError) as refused:
        config.read_file(path)
    assert str(refused.value) == f"config file {path} nests arrays or tables deeper than it can be read"


def test_a_file_that_is_not_utf8_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"batch_size = 3\n# caf\xe9\n")
    with pytest.raises(ConfigError) as refused:
        config.read_file(str(path))
    assert str(refused.value) == f"config file {path} is not valid TOML: byte 0xe9 at offset 20 is not UTF-8"
    assert refused.value.__suppress_context__


def test_settings_beside_the_table_are_named_all(tmp_path: Path) -> None:
    path = toml(tmp_path, "batch_size = 1\nlease = 5\n[pending_jobs]\nconcurrency = 2\n")
    with pytest.raises(ConfigError) as refused:
        config.read_file(path)
    assert str(refused.value) == (f"{path}: batch_size, lease outside the [pending_jobs] table; put every setting "
                                  "inside it, or drop the table and keep them all at the top level")


def test_unknown_settings_are_named_all(tmp_path: Path) -> None:
    path = toml(tmp_path, "nope = 1\nbatch_size = 1\nalso_nope = 2\n")
    with pytest.raises(ConfigError) as refused:
        config.read_file(path)
    assert str(refused.value) == f"{path}: unknown setting(s): also_nope, nope"
    path = toml(tmp_path, "[pending_jobs]\nnope = 1\n")
    with pytest.raises(ConfigError, match=r"unknown setting\(s\): nope$"):
        config.read_file(path)


def test_a_pending_jobs_key_that_is_not_a_table_is_refused(tmp_path: Path) -> None:
    path = toml(tmp_path, "pending_jobs = [1]\n")
    with pytest.raises(ConfigError) as refused:
        config.read_file(path)
    assert str(refused.value) == f"{path}: pending_jobs must be a table ([pending_jobs]), not [1]"


def test_task_tables_beside_the_settings_table_join_those_inside_it(tmp_path: Path) -> None:
    path = toml(tmp_path, '[pending_jobs]\nbatch_size = 2\n[pending_jobs.task.inner]\ncommand = ["a"]\n'
                          '[task.outer]\ncommand = ["b"]\n')
    assert config.read_file(path) == {"batch_size": 2, "task": {"inner": {"command": ["a"]},
                                                                "outer": {"command": ["b"]}}}
    settings = config.load({}, environ={}, config_file=path)
    assert settings.declared_tasks == {"inner": {"command": ["a"]}, "outer": {"command": ["b"]}}
    assert settings.batch_size == 2


def test_task_tables_only_beside_the_settings_table(tmp_path: Path) -> None:
    path = toml(tmp_path, '[pending_jobs]\nbatch_size = 2\n[task.outer]\ncommand = ["b"]\n')
    assert config.read_file(path) == {"batch_size": 2, "task": {"outer": {"command": ["b"]}}}


def test_no_task_tables_leaves_none(tmp_path: Path) -> None:
    path = toml(tmp_path, "[pending_jobs]\nbatch_size = 2\n")
    assert config.read_file(path) == {"batch_size": 2}
    path = toml(tmp_path, "[pending_jobs]\nbatch_size = 2\n[task]\n")
    assert config.read_file(path) == {"batch_size": 2}


def test_a_task_declared_inside_and_beside_the_table_is_refused(tmp_path: Path) -> None:
    path = toml(tmp_path, '[pending_jobs.task.same]\ncommand = ["a"]\n[task.same]\ncommand = ["b"]\n')
    with pytest.raises(ConfigError) as refused:
        config.read_file(path)
    assert str(refused.value) == f"{path}: task 'same' is declared twice: [task.same] and [pending_jobs.task.same]"


def test_a_task_key_inside_the_table_that_is_not_a_table_is_left_to_the_task_check(tmp_path: Path) -> None:
    path = toml(tmp_path, '[pending_jobs]\ntask = 5\n[task.outer]\ncommand = ["b"]\n')
    assert config.read_file(path) == {"task": {"outer": {"command": ["b"]}}}


def test_top_level_task_tables_are_kept(tmp_path: Path) -> None:
    path = toml(tmp_path, 'batch_size = 2\n[task.one]\ncommand = ["a"]\n')
    assert config.load({}, environ={}, config_file=path).declared_tasks == {"one": {"command": ["a"]}}


@pytest.mark.parametrize("body", ["task = 5\n", 'task = "x"\n', "[task]\none = 1\n"])
def test_a_task_key_that_is_not_one_table_per_task_is_refused(tmp_path: Path, body: str) -> None:
    path = toml(tmp_path, body)
    with pytest.raises(ConfigError) as refused:
        config.load({}, environ={}, config_file=path)
    assert str(refused.value) == (f"{path}: task must hold one table per declared task, [task.NAME] "
                                  "(handler modules go in tasks = [...])")


def test_task_tables_are_copied_with_string_names() -> None:
    table = {"command": ["a"]}
    tables = config._task_tables({"one": table}, "f.toml")
    assert tables == {"one": {"command": ["a"]}} and tables["one"] is not table
    assert config._task_tables({}, None) == {}


# -- help ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "help_text"), [
    ("callback_schedule", "seconds between callback attempts; exhausted: failed (env PENDING_JOBS_CALLBACK_SCHEDULE; "
                          "default 5,300,1800,7200,18000,36000,36000; 0 s to 30 d)"),
    ("max_jobs", "stop after this many jobs (unset or 0: no limit) (env PENDING_JOBS_MAX_JOBS; default unset; 1 to ∞)"),
    ("tasks", "comma-separated modules that define handlers (env PENDING_JOBS_TASKS; default unset)"),
    ("database_url", "SQLAlchemy URL of the database (env PENDING_JOBS_DATABASE_URL; default "
                     "sqlite:///pending_jobs.sqlite3)"),
    ("payload_limit", "largest payload in bytes; larger rows fail (env PENDING_JOBS_PAYLOAD_LIMIT; default 1000000; "
                      "1 to 1e+08)"),
    ("metrics_file", "write Prometheus textfile metrics here after each run (env PENDING_JOBS_METRICS_FILE; "
                     "default unset)"),
    ("lease", "seconds a claim is held before another run may rescue it (env PENDING_JOBS_LEASE; default 300.0; "
              "1 s to 1 d)"),
])
def test_the_help_names_variable_default_and_range(name: str, help_text: str) -> None:
    assert config.env_help(name) == help_text


def test_a_list_default_of_strings_is_shown_joined(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(config.BY_NAME, "queues", Setting("queues", ["a", "b"], str_list, "queues"))
    assert config.env_help("queues") == "queues (env PENDING_JOBS_QUEUES; default a,b)"
