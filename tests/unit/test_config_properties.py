"""Property tests (Hypothesis) of the settings: any value, from a flag, a variable or a TOML file, is
either a configuration error naming where it came from (the command exits 2) or a setting that is
finite and within its documented range. Nothing else: no other exception, no NaN, no infinity."""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pending_jobs import config
from pending_jobs.errors import ConfigError

EXAMPLES = int(os.environ.get("PENDING_JOBS_PROPERTY_EXAMPLES", "25")) * 20  # no database: cheap
BUDGET = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=os.environ.get("CI") == "true")

scalars = (st.text(max_size=12) | st.integers(-(2**70), 2**70) | st.floats() | st.booleans()
           | st.sampled_from(["nan", "inf", "-inf", "1e309", "-7d", "30s", "15m", "2h", "7d", "0", " 5 ", "1_000",
                              "0x10", "", "on", "off", "only", "none", "text", "json"]))
toml_values = scalars | st.lists(scalars, max_size=3) | st.dictionaries(st.text(max_size=4), scalars, max_size=2)
names = st.sampled_from([s.name for s in config.SETTINGS])


def _check(loaded: config.Settings) -> None:
    for setting in config.SETTINGS:
        value = getattr(loaded, setting.name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float | int) and not isinstance(item, bool):
                assert math.isfinite(item), (setting.name, item)
                if setting.low is not None:
                    assert item >= setting.low, (setting.name, item)
                if setting.high is not None:
                    assert item <= setting.high, (setting.name, item)
    assert loaded.callbacks in ("on", "off", "only") and loaded.log_format in ("text", "json")


@BUDGET
@given(flags=st.dictionaries(names, toml_values, max_size=4))
def test_any_flag_value_is_a_setting_in_range_or_an_error_naming_the_flag(flags: dict[str, Any]) -> None:
    try:
        loaded = config.load(flags, environ={})
    except ConfigError as error:
        named = [f"--{name.replace('_', '-')}" for name in flags] + ["log_format", "callbacks"]
        assert any(name in str(error) for name in named), str(error)
        return
    _check(loaded)


@BUDGET
@given(environ=st.dictionaries(names.map(lambda n: config.BY_NAME[n].env),
                               scalars.map(str).filter(lambda s: "\x00" not in s), max_size=4))
def test_any_environment_value_is_a_setting_in_range_or_an_error_naming_the_variable(
        environ: dict[str, str]) -> None:
    try:
        loaded = config.load({}, environ=environ)
    except ConfigError as error:
        assert any(name in str(error) for name in [*environ, "log_format", "callbacks"]), str(error)
        return
    _check(loaded)


@pytest.fixture(scope="module")
def toml_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("toml")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return "{" + ", ".join(f"{_toml(k)} = {_toml(v)}" for k, v in value.items()) + "}"


@BUDGET
@given(values=st.dictionaries(names, toml_values, max_size=4), nested=st.booleans())
def test_any_toml_file_is_settings_in_range_or_an_error_naming_the_file(toml_dir: Path, values: dict[str, Any],
                                                                        nested: bool) -> None:
    lines = ["[pending_jobs]"] if nested else []
    lines += [f"{name} = {_toml(value)}" for name, value in values.items()]
    text = "\n".join(lines) + "\n"
    try:
        tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError):
        return  # not TOML (an integer beyond 64 bits, say): the file's own error, covered by test_config
    path = toml_dir / "pending-jobs.toml"
    path.write_text(text)
    try:
        loaded = config.load({}, environ={}, config_file=str(path))
    except ConfigError as error:
        assert str(path) in str(error) or "log_format" in str(error) or "callbacks" in str(error), str(error)
        return
    _check(loaded)
