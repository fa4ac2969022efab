"""Settings, with one precedence everywhere: flag, then environment, then config file, then default."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigError


def _str_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [part.strip() for part in str(value).split(",") if part.strip()]


def _float_list(value: Any) -> list[float]:
    return [float(v) for v in _str_list(value)]


def _duration(value: Any) -> float:
    """Seconds, or a number with a unit: 30s, 15m, 2h, 7d."""
    text = str(value).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise ValueError(f"not a duration: {value!r} (use seconds or 30s, 15m, 2h, 7d)") from None


def _optional_int(value: Any) -> int | None:
    return None if value in (None, "", 0, "0") else int(value)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: its name, environment variable, TOML key (the name), default and parser."""

    name: str
    default: Any
    parse: Callable[[Any], Any]
    help: str

    @property
    def env(self) -> str:
        return "PENDING_JOBS_" + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("database_url", "sqlite:///pending_jobs.sqlite3", str, "SQLAlchemy URL of the database"),
    Setting("tasks", [], _str_list, "comma-separated modules that define handlers"),
    Setting("max_runtime", 50.0, _duration, "seconds a run may take before it stops claiming"),
    Setting("max_jobs", None, _optional_int, "stop after this many jobs (unset: no limit)"),
    Setting("batch_size", 100, int, "jobs claimed per claim transaction"),
    Setting("concurrency", 4, int, "handler threads"),
    Setting("lease", 300.0, _duration, "seconds a claim is held before another run may rescue it"),
    Setting("queues", [], _str_list, "queues to run, comma-separated (unset: every queue)"),
    Setting("poll", 0.0, _duration, "poll interval while waiting for new jobs (0: stop when none due)"),
    Setting("grace", 10.0, _duration, "seconds in-flight jobs get to finish after SIGTERM"),
    Setting("payload_limit", 1_000_000, int, "largest payload in bytes; larger rows fail"),
    Setting("callback_secret", [], _str_list, "whsec_ secrets that sign callbacks (two during rotation)"),
    Setting("callback_allow", [], _str_list, "CIDRs or host names callbacks may reach despite the guard"),
    Setting("callback_schedule", [5, 300, 1800, 7200, 18000, 36000, 36000], _float_list,
            "seconds between callback attempts; exhausted: failed"),
    Setting("callback_connect_timeout", 5.0, float, "callback connect timeout in seconds"),
    Setting("callback_timeout", 15.0, float, "whole callback request timeout in seconds"),
    Setting("callback_concurrency", 8, int, "callbacks delivered at once"),
    Setting("retention_succeeded", 7 * 86400.0, _duration, "keep succeeded/cancelled jobs this long (0: forever)"),
    Setting("retention_failed", 30 * 86400.0, _duration, "keep failed jobs this long (0: forever)"),
    Setting("metrics_file", "", str, "write Prometheus textfile metrics here after each run"),
    Setting("log_format", "text", str, "text or json"),
    Setting("log_file", "", str, "append logs to this file instead of stderr"),
)
BY_NAME = {s.name: s for s in SETTINGS}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Resolved settings; build with `load`."""

    database_url: str
    tasks: list[str]
    max_runtime: float
    max_jobs: int | None
    batch_size: int
    concurrency: int
    lease: float
    queues: list[str]
    poll: float
    grace: float
    payload_limit: int
    callback_secret: list[str]
    callback_allow: list[str]
    callback_schedule: list[float]
    callback_connect_timeout: float
    callback_timeout: float
    callback_concurrency: int
    retention_succeeded: float
    retention_failed: float
    metrics_file: str
    log_format: str
    log_file: str
    declared_tasks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """The file's `[task.NAME]` tables as written (file only: no flag or variable); pending_jobs.declared
    parses them into handlers, so its errors name the task and the key."""

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed (tests and the Python API)."""
        return dataclasses.replace(self, **changes)


def load(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Resolve every setting: flag (not None) > PENDING_JOBS_* > TOML file > default."""
    flags = flags or {}
    environ = os.environ if environ is None else environ
    path = config_file or environ.get("PENDING_JOBS_CONFIG")
    file_values = _read_toml(path) if path else {}
    declared_tasks = _task_tables(file_values.pop("task", {}), path)
    unknown = set(file_values) - set(BY_NAME)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if flags.get(setting.name) is not None:
            raw, source = flags[setting.name], "--" + setting.name.replace("_", "-")
        elif setting.env in environ:
            raw, source = environ[setting.env], setting.env
        elif setting.name in file_values:
            raw, source = file_values[setting.name], f"{path}: {setting.name}"
        else:
            values[setting.name] = setting.default
            continue
        try:
            values[setting.name] = setting.parse(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: {exc}") from None
    settings = Settings(**values, declared_tasks=declared_tasks)
    _validate(settings)
    return settings


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    # Accept both a bare file and one with a [pending_jobs] table.
    section = data.get("pending_jobs", data)
    values = dict(section) if isinstance(section, dict) else {}
    if section is not data and "task" in data:  # [task.NAME] tables beside a [pending_jobs] table
        inner, outer = values.get("task", {}), data["task"]
        if isinstance(inner, dict) and isinstance(outer, dict):
            both = sorted(set(inner) & set(outer))
            if both:
                raise ConfigError(f"{path}: task {both[0]!r} is declared twice: [task.{both[0]}] and "
                                  f"[pending_jobs.task.{both[0]}]")
            outer = {**inner, **outer}
        values["task"] = outer
    return values


def _task_tables(value: Any, path: str | None) -> dict[str, dict[str, Any]]:
    """The `task` key: one table per declared task (`tasks`, plural, names handler modules)."""
    if not isinstance(value, dict) or not all(isinstance(table, dict) for table in value.values()):
        raise ConfigError(f"{path}: task must hold one table per declared task, [task.NAME] "
                          "(handler modules go in tasks = [...])")
    return {str(name): dict(table) for name, table in value.items()}


def _validate(s: Settings) -> None:
    checks = [
        (s.batch_size >= 1, "batch_size must be at least 1"),
        (s.concurrency >= 1, "concurrency must be at least 1"),
        (s.lease >= 1, "lease must be at least 1 second"),
        (s.max_runtime > 0, "max_runtime must be positive"),
        (s.poll >= 0, "poll must be 0 or positive"),
        (s.payload_limit >= 1, "payload_limit must be positive"),
        (s.log_format in ("text", "json"), "log_format must be text or json"),
        (all(v >= 0 for v in s.callback_schedule), "callback_schedule must hold non-negative seconds"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def env_help(name: str) -> str:
    """The `--help` text of a setting, naming its environment variable and default."""
    setting = BY_NAME[name]
    default = setting.default
    shown = ",".join(str(v) for v in default) if isinstance(default, list) else default
    return f"{setting.help} (env {setting.env}; default {shown if shown not in ('', None, []) else 'unset'})"
