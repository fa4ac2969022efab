"""Settings, with one precedence everywhere: flag, then environment, then config file, then default.

Every value is checked once, here, where settings are read: its type (a TOML `true` is not a batch
size, `2.9` is not a thread count), finite, and within the documented range of its setting. A bad one
is a configuration error naming the setting (exit 2), never a run that breaks later.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigError, did_you_mean

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DAY = 86400.0
_WHOLE = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: int() also takes "1_0" and other scripts' digits
TABLES = ("pending_jobs", "task", "queue", "schedules", "web")
"""Top-level TOML tables that are not settings themselves: `[pending_jobs]` (every setting, when the
file keeps them in one table), `[task.NAME]` (declared tasks, see pending_jobs.declared, and a task's
limits), `[queue.NAME]` (a queue's limits, pending_jobs.limits) and `[schedules.NAME]` (recurring jobs,
pending_jobs.schedules) and `[web]` (the console's settings, read by `load_web`)."""
NAMED_TABLES = ("task", "queue", "schedules", "web")
"""The tables holding one table per name, which may stand beside a `[pending_jobs]` table too."""


def number(value: Any) -> float:
    """A finite number (an integer, a float, or a string of one)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a number: {value!r}")
    try:
        parsed = float(value)
    except OverflowError:  # a TOML integer too large for a float: a setting's error, not a crash
        parsed = math.inf
    if not math.isfinite(parsed):
        raise ValueError(f"must be a finite number, not {value!r}")
    return parsed


def duration(value: Any) -> float:
    """Seconds, or a number with a unit: 30s, 15m, 2h, 7d; finite and not negative."""
    text = str(value).strip().lower() if isinstance(value, str) else value
    try:
        if isinstance(text, str) and text and text[-1] in UNITS:
            seconds = number(text[:-1]) * UNITS[text[-1]]
        else:
            seconds = number(text)
    except ValueError:
        raise ValueError(f"not a duration: {value!r} (use seconds or 30s, 15m, 2h, 7d)") from None
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {value!r}")
    return seconds


def integer(value: Any) -> int:
    """A whole number: an integer, or a string of ASCII digits (TOML `true`, `2.9` and `"1_0"` are refused)."""
    if isinstance(value, bool | float) or (isinstance(value, str) and not _WHOLE.fullmatch(value.strip())):
        raise ValueError(f"must be a whole number, not {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"must be a whole number, not {value!r}") from None


def optional_integer(value: Any) -> int | None:
    """A whole number, or unset (empty, 0)."""
    return None if value in (None, "", "0") or (value == 0 and not isinstance(value, bool)) else integer(value)


def text(value: Any) -> str:
    """A string (a TOML number or table is refused)."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {value!r}")
    return value


def str_list(value: Any) -> list[str]:
    """A TOML array of strings, or one comma-separated string."""
    items = [text(item) for item in value] if isinstance(value, list) else text(value).split(",")
    return [item.strip() for item in items if item.strip()]


def queue_list(value: Any) -> list[str]:
    """Queue names, each one `run --queue` takes: validation.queue_names (imported here: it imports this module)."""
    from .validation import queue_names

    return queue_names(value)


def duration_list(value: Any) -> list[float]:
    """A TOML array, or a comma-separated string, of durations."""
    return [duration(item) for item in (value if isinstance(value, list) else str_list(value))]


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: its name (also its TOML key), default, parser, help, and range (numbers: each value)."""

    name: str
    default: Any
    parse: Callable[[Any], Any]
    help: str
    low: float | None = None
    high: float | None = None

    @property
    def env(self) -> str:
        return "PENDING_JOBS_" + self.name.upper()

    def check(self, value: Any) -> None:
        """Raise ValueError when a parsed value (or an element of a list) is outside the range."""
        for item in value if isinstance(value, list) else [value]:
            if item is None or not isinstance(item, int | float):
                continue
            if (self.low is not None and item < self.low) or (self.high is not None and item > self.high):
                raise ValueError(f"{_shown(item, self)} is outside {self.range_text()}")

    def range_text(self) -> str:
        """The documented range, e.g. `1 s to 1 d`."""
        if self.low is None and self.high is None:
            return ""
        return f"{_shown(self.low, self)} to {_shown(self.high, self)}"


def _shown(value: float | None, setting: Setting) -> str:
    if value is None:
        return "∞"
    if setting.parse in (duration, duration_list):
        for unit, size in (("d", DAY), ("h", 3600), ("m", 60)):
            if value >= size and value % size == 0:
                return f"{value / size:g} {unit}"
        return f"{value:g} s"
    try:
        return f"{value:g}"
    except OverflowError:  # a TOML integer too large for a float, refused by its range
        return str(value)


SETTINGS: tuple[Setting, ...] = (
    Setting("database_url", "sqlite:///pending_jobs.sqlite3", text, "SQLAlchemy URL of the database"),
    Setting("tasks", [], str_list, "comma-separated modules that define handlers"),
    Setting("python_path", [], str_list, "folders searched first for the task modules (your app's root: cron "
            "starts the runner without your PYTHONPATH)"),
    Setting("max_runtime", 3600.0, duration, "seconds a run serves at most before it stops claiming (under cron "
            "the next tick's run takes over long before)", 0.1, 365 * DAY),
    Setting("max_jobs", None, optional_integer, "stop after this many jobs (unset or 0: no limit)", 1, None),
    Setting("batch_size", 100, integer, "jobs claimed per claim transaction", 1, 10_000),
    Setting("concurrency", 4, integer, "handler threads", 1, 1000),
    Setting("lease", 300.0, duration, "seconds a claim is held before another run may rescue it", 1, DAY),
    Setting("queues", [], queue_list, "queues to run, comma-separated (unset: every queue)"),
    Setting("poll", 0.2, duration, "seconds between looks for newly due jobs while a run serves (0: stop when "
            "nothing is due, as --drain)", 0, 3600),
    Setting("grace", 10.0, duration, "seconds in-flight jobs get to finish after SIGTERM", 0, 3600),
    Setting("payload_limit", 1_000_000, integer, "largest payload in bytes; larger rows fail", 1, 100_000_000),
    Setting("callback_secret", [], str_list, "whsec_ secrets that sign callbacks (two during rotation)"),
    Setting("callback_allow", [], str_list, "CIDRs or host names callbacks may reach despite the guard"),
    Setting("callback_schedule", [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0], duration_list,
            "seconds between callback attempts; exhausted: failed", 0, 30 * DAY),
    Setting("callback_connect_timeout", 5.0, number, "callback connect timeout in seconds", 0.1, 600),
    Setting("callback_timeout", 15.0, number, "whole callback request timeout in seconds", 0.1, 600),
    Setting("callback_concurrency", 8, integer, "callbacks delivered at once", 1, 1000),
    Setting("retention_succeeded", 7 * DAY, duration, "keep succeeded/cancelled jobs this long (0: forever)",
            0, 3650 * DAY),
    Setting("retention_failed", 30 * DAY, duration, "keep failed jobs this long (0: forever)", 0, 3650 * DAY),
    Setting("callbacks", "on", text, "on: deliver callbacks while serving jobs; off: leave them to another "
            "run; only: deliver callbacks, claim no jobs"),
    Setting("lock_file", "", text, "the serving run's lock, handed from one cron tick's run to the next "
            "(unset: one per user, database and queues in /tmp, not $TMPDIR; none: no lock)"),
    Setting("metrics_file", "", text, "write Prometheus textfile metrics here after each run"),
    Setting("log_format", "text", text, "text or json"),
    Setting("log_file", "", text, "append logs to this file instead of stderr"),
)
BY_NAME = {s.name: s for s in SETTINGS}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Resolved settings; build with `load`."""

    database_url: str
    tasks: list[str]
    python_path: list[str]
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
    callbacks: str
    lock_file: str
    metrics_file: str
    log_format: str
    log_file: str
    declared_tasks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """The file's `[task.NAME]` tables as written (file only); pending_jobs.declared parses them into handlers."""
    queue_tables: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """The file's `[queue.NAME]` tables as written; pending_jobs.limits parses them."""
    schedule_tables: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """The file's `[schedules.NAME]` tables as written; pending_jobs.schedules parses them."""

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed (tests and the Python API)."""
        return dataclasses.replace(self, **changes)


def load(flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
         config_file: str | None = None) -> Settings:
    """Resolve every setting: flag (not None) > PENDING_JOBS_* > TOML file > default."""
    flags = flags or {}
    environ = os.environ if environ is None else environ
    path = config_file or environ.get("PENDING_JOBS_CONFIG")
    file_values = read_file(path) if path else {}
    declared_tasks = _task_tables(file_values.pop("task", {}), path)
    queue_tables = _named_tables("queue", file_values.pop("queue", {}), path)
    schedule_tables = _named_tables("schedules", file_values.pop("schedules", {}), path)
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if flags.get(setting.name) is not None:
            raw, source = flags[setting.name], "--" + setting.name.replace("_", "-")
        elif environ.get(setting.env):  # set and empty counts as unset (compose's `${UNSET}`, systemd)
            raw, source = environ[setting.env], setting.env
        elif setting.name in file_values:
            raw, source = file_values[setting.name], f"{path}: {setting.name}"
        else:
            values[setting.name] = setting.default
            continue
        values[setting.name] = parse_setting(setting, raw, source)
    settings = Settings(**values, declared_tasks=declared_tasks, queue_tables=queue_tables,
                        schedule_tables=schedule_tables)
    if settings.log_format not in ("text", "json"):
        raise ConfigError(f"log_format must be text or json, not {settings.log_format!r}")
    if settings.callbacks not in ("on", "off", "only"):
        raise ConfigError(f"callbacks must be on, off or only, not {settings.callbacks!r}")
    return settings


def parse_setting(setting: Setting, raw: Any, source: str) -> Any:
    """`raw` (a flag, variable, file entry, JobTester argument) parsed and in range, or ConfigError naming `source`."""
    try:
        value = setting.parse(raw)
        setting.check(value)
    except ValueError as error:
        meant = isinstance(raw, dict) and setting.name in ("tasks", "queues")  # a [tasks.x] table meant as [task.x]
        hint = "; declared tasks are [task.NAME] tables, queue limits [queue.NAME]" if meant else ""
        raise ConfigError(f"{source}: {error}{hint}") from None
    return value


def read_file(path: str) -> dict[str, Any]:
    """The settings of a TOML file: at top level, or under a `[pending_jobs]` table (not both)."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    except UnicodeDecodeError as error:  # TOML is UTF-8: a Latin-1 comment is not
        raise ConfigError(f"config file {path} is not valid TOML: byte {error.object[error.start]:#04x} at offset "
                          f"{error.start} is not UTF-8") from None
    except RecursionError:  # tomllib reads nested arrays and inline tables by recursion
        raise ConfigError(f"config file {path} nests arrays or tables deeper than it can be read") from None
    if "pending_jobs" in data:
        section = data["pending_jobs"]
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: pending_jobs must be a table ([pending_jobs]), not {section!r}")
        beside = sorted(key for key in data if key not in TABLES)
        if beside:
            raise ConfigError(f"{path}: {', '.join(beside)} outside the [pending_jobs] table; put every setting "
                              "inside it, or drop the table and keep them all at the top level")
        outside = {table: data.get(table, {}) for table in NAMED_TABLES}
        data = dict(section)
        for table, outer in outside.items():
            if not outer:
                continue
            # [task.NAME] (or queue, schedules) tables beside the [pending_jobs] table
            inner = data.get(table, {})
            if isinstance(inner, dict) and isinstance(outer, dict):
                both = sorted(set(inner) & set(outer))
                if both:
                    raise ConfigError(f"{path}: {table} {both[0]!r} is declared twice: [{table}.{both[0]}] and "
                                      f"[pending_jobs.{table}.{both[0]}]")
                outer = {**inner, **outer}
            data[table] = outer
    if unknown := [key + did_you_mean(key, [*BY_NAME, *TABLES]) for key in sorted(set(data) - {*BY_NAME, *TABLES})]:
        raise ConfigError(f"{path}: unknown setting(s): {', '.join(unknown)}")
    return data


def _task_tables(value: Any, path: str | None) -> dict[str, dict[str, Any]]:
    """The `task` key: one table per declared task (`tasks`, plural, names handler modules)."""
    if not isinstance(value, dict) or not all(isinstance(table, dict) for table in value.values()):
        raise ConfigError(f"{path}: task must hold one table per declared task, [task.NAME] "
                          "(handler modules go in tasks = [...])")
    return {str(name): dict(table) for name, table in value.items()}


def _named_tables(kind: str, value: Any, path: str | None) -> dict[str, dict[str, Any]]:
    """A `[queue.NAME]` or `[schedules.NAME]` key: one table per name."""
    if not isinstance(value, dict) or not all(isinstance(table, dict) for table in value.values()):
        raise ConfigError(f"{path}: {kind} must hold one table per name, [{kind}.NAME]")
    return {str(name): dict(table) for name, table in value.items()}


def env_help(name: str, among: tuple[Setting, ...] | None = None) -> str:
    """The `--help` text of a setting (of SETTINGS, or of `among`: WEB_SETTINGS): its variable, default, range."""
    setting = BY_NAME[name] if among is None else next(s for s in among if s.name == name)
    default = setting.default
    shown = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default) if isinstance(default, list) \
        else default
    within = f"; {setting.range_text()}" if setting.range_text() else ""
    return (f"{setting.help} (env {setting.env}; default {shown if shown not in ('', None, []) else 'unset'}"
            f"{within})")


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise ValueError(f"must be true or false, not {value!r}")


WEB_SETTINGS: tuple[Setting, ...] = (
    Setting("web_host", "127.0.0.1", text, "address the console listens on (beyond loopback only with a token or "
            "basic auth)"),
    Setting("web_port", 8080, integer, "port the console listens on", 1, 65535),
    Setting("web_token", "", text, "bearer token the console requires (Authorization: Bearer ...)"),
    Setting("web_basic_user", "", text, "basic auth user the console requires (with web_basic_password)"),
    Setting("web_basic_password", "", text, "basic auth password the console requires"),
    Setting("web_read_only", False, _flag, "serve pages and the read API only: no action"),
    Setting("web_push_secret", "", text, "secret the application signs job-scoped push tokens with"),
    Setting("web_allowed_origins", [], str_list, "origins whose pages may open the push endpoint"),
    Setting("web_push_poll_interval", 0.25, number, "seconds between looks for finished jobs (no NOTIFY)", 0.05, 10),
)


@dataclasses.dataclass(frozen=True)
class WebSettings:
    """The console's `[web]` settings (env PENDING_JOBS_WEB_*); build with `load_web`."""

    host: str
    port: int
    token: str
    basic_user: str
    basic_password: str
    read_only: bool
    push_secret: str
    allowed_origins: list[str]
    push_poll_interval: float

    @property
    def auth_configured(self) -> bool:
        return bool(self.token or (self.basic_user and self.basic_password))


def load_web(flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
             config_file: str | None = None) -> WebSettings:
    """Resolve the `[web]` settings: flag (not None) > PENDING_JOBS_WEB_* > the file's [web] table > default."""
    flags, environ = flags or {}, os.environ if environ is None else environ
    path = config_file or environ.get("PENDING_JOBS_CONFIG")
    table = read_file(path).get("web", {}) if path else {}
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: web must be a table ([web]), not {table!r}")
    names = [s.name[4:] for s in WEB_SETTINGS]
    if unknown := [key + did_you_mean(key, names) for key in sorted(set(table) - set(names))]:
        raise ConfigError(f"{path}: unknown setting(s) in [web]: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for setting in WEB_SETTINGS:
        key = setting.name[4:]
        if flags.get(key) is not None:
            raw, source = flags[key], "--" + key.replace("_", "-")
        elif environ.get(setting.env):  # set and empty counts as unset (compose's `${UNSET}`, systemd)
            raw, source = environ[setting.env], setting.env
        elif key in table:
            raw, source = table[key], f"{path}: [web] {key}"
        else:
            values[key] = setting.default
            continue
        values[key] = parse_setting(setting, raw, source)
    if bool(values["basic_user"]) != bool(values["basic_password"]):
        raise ConfigError("web basic auth needs both basic_user and basic_password")
    return WebSettings(**values)
