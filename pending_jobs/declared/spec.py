"""`[task.NAME]` tables: tasks declared in the config file, checked into specs whose errors name task and key."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, TypeVar

import sqlalchemy as sa

from ..callbacks.guard import Refused, parse
from ..config import duration
from ..errors import ConfigError
from ..validation import LONGEST_TIMEOUT, MAX_ATTEMPTS_LIMIT, task_name_problem

T = TypeVar("T")
KINDS = {"sql": "sql", "url": "http", "command": "command"}
"""The key that makes a table a task of each kind."""
COMMON_KEYS = ("timeout", "max_attempts", "backoff", "result_limit")
LIMIT_KEYS = ("concurrency_limit", "rate_limit")
"""Keys read by pending_jobs.limits, not here: a table holding only these is a Python task's limits."""
KIND_KEYS = {
    "sql": ("sql", "database_url", "max_rows"),
    "http": ("url", "secret", "connect_timeout"),
    "command": ("command", "cwd", "env", "kill_after"),
}
HTTP_TIMEOUT, COMMAND_TIMEOUT = 30.0, 240.0
DEFAULT_TIMEOUT = {"sql": None, "http": HTTP_TIMEOUT, "command": COMMAND_TIMEOUT}
"""Seconds: an HTTP request or a process that never ends must not hold a worker for the whole run. A
command's, with its kill_after and the runner's margin, stays within the default 300 s lease (at 300 s,
`check` warned about every command task of a config that set neither)."""
RESULT_LIMIT = 1_000_000  # bytes of a result by default (payload_limit's default); the runner's cap too
MAX_ROWS = 100
KILL_AFTER = 5.0  # seconds between SIGTERM and SIGKILL: time for a PHP or shell script to clean up
CONNECT_TIMEOUT = 5.0
LONGEST = LONGEST_TIMEOUT  # a task's timeout, kill_after or connect_timeout: a week, far past any job cron serves


@dataclasses.dataclass(frozen=True)
class Policy:
    """What every kind shares: the timeout, attempts and backoff, and how big a result may be."""

    timeout: float | None
    max_attempts: int | None
    """At most this many attempts whatever the row says (min of the two); None: the row's."""
    backoff: tuple[float, ...] | None
    """Seconds before retry n (n-th entry, the last repeating); None: the default doubling backoff."""
    result_limit: int


@dataclasses.dataclass(frozen=True)
class SqlSpec:
    """`sql = "…"` or a list of statements, run in order in one transaction."""

    name: str
    statements: tuple[str, ...]
    database_url: str | None
    """Another database (not exactly-once); None: the job database, in the job's own transaction."""
    max_rows: int
    policy: Policy


@dataclasses.dataclass(frozen=True)
class HttpSpec:
    """`url = "…"`: POST the payload as signed JSON."""

    name: str
    url: str
    secret: tuple[str, ...] | None
    """whsec_ secrets of this task; None: the callback secret."""
    connect_timeout: float
    policy: Policy


@dataclasses.dataclass(frozen=True)
class CommandSpec:
    """`command = [...]`: run a program, without a shell, with the payload on stdin."""

    name: str
    argv: tuple[str, ...]
    cwd: str | None
    env: Mapping[str, str]
    kill_after: float
    policy: Policy


Spec = SqlSpec | HttpSpec | CommandSpec


def parse_all(tables: Mapping[str, Mapping[str, Any]]) -> dict[str, Spec]:
    """Every `[task.NAME]` table as a spec (tables holding only limits set a Python task's: skipped);
    raises ConfigError naming the task and the key."""
    specs, problems = parse_each(tables)
    if problems:
        raise ConfigError(next(iter(problems.values())))
    return specs


def parse_each(tables: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, Spec], dict[str, str]]:
    """(specs, errors by task name): each table alone, so one with an error never costs the others theirs."""
    specs: dict[str, Spec] = {}
    problems: dict[str, str] = {}
    for name, table in tables.items():
        if limits_only(table):
            continue
        try:
            specs[name] = parse_one(name, table)
        except ConfigError as error:
            problems[name] = str(error)
    return specs, problems


def limits_only(table: Mapping[str, Any]) -> bool:
    """A table with no kind whose keys are all limits: the limits of a Python task of that name."""
    return bool(table) and not any(key in table for key in KINDS) and set(table) <= set(LIMIT_KEYS)


def parse_one(name: str, table: Mapping[str, Any]) -> Spec:
    """One `[task.NAME]` table as a spec."""
    where = f"[task.{name}]"
    problem = task_name_problem(name)
    if problem:
        raise ConfigError(f"{where}: the task name {problem}")
    kinds = [key for key in KINDS if key in table]
    if not kinds:
        raise ConfigError(f"{where}: needs one of sql, url or command (a table holding only "
                          f"{' or '.join(LIMIT_KEYS)} sets the limits of a Python task)")
    if len(kinds) > 1:
        raise ConfigError(f"{where}: has both {kinds[0]!r} and {kinds[1]!r}; a task is one kind (declare two tasks)")
    kind = KINDS[kinds[0]]
    allowed = (*KIND_KEYS[kind], *COMMON_KEYS, *LIMIT_KEYS)
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed with {kinds[0]!r}: {', '.join(allowed)})")
    reader = _Reader(where, table)
    policy = Policy(
        timeout=_or(reader.duration("timeout", positive=True), DEFAULT_TIMEOUT[kind]),
        max_attempts=reader.integer("max_attempts", 1, MAX_ATTEMPTS_LIMIT),
        backoff=reader.backoff("backoff"),
        result_limit=_or(reader.integer("result_limit", 256, 100_000_000), RESULT_LIMIT),
    )
    if kind == "sql":
        return SqlSpec(name, reader.statements("sql"), reader.database_url("database_url"),
                       _or(reader.integer("max_rows", 1, 10_000), MAX_ROWS), policy)
    if kind == "http":
        return HttpSpec(name, reader.url("url"), reader.secrets("secret"),
                        _or(reader.duration("connect_timeout", positive=True), CONNECT_TIMEOUT), policy)
    return CommandSpec(name, reader.argv("command"), reader.directory("cwd"), reader.env("env"),
                       _or(reader.duration("kill_after", positive=False), KILL_AFTER), policy)


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


class _Reader:
    """Typed reads of one table's keys, each error naming `[task.NAME] key`."""

    def __init__(self, where: str, table: Mapping[str, Any]) -> None:
        self.where = where
        self.table = table

    def _error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where} {key}: {problem}")

    def duration(self, key: str, positive: bool) -> float | None:
        if key not in self.table:
            return None
        value = self.table[key]
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise self._error(key, f"must be seconds or a duration like '30s', not {_kind(value)}")
        try:
            seconds = duration(value)
        except ValueError as error:
            raise self._error(key, str(error)) from None
        if seconds < 0 or (positive and seconds == 0) or seconds != seconds:
            raise self._error(key, f"must be {'more than' if positive else 'at least'} 0 seconds, not {value!r}")
        if seconds > LONGEST:  # past about 9.2e9 s a socket's or a lock's timeout overflows: every attempt failed
            raise self._error(key, f"must be at most 7 days ({LONGEST:g} seconds), not {value!r}")
        return seconds

    def integer(self, key: str, low: int, high: int) -> int | None:
        if key not in self.table:
            return None
        value = self.table[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._error(key, f"must be a whole number, not {_kind(value)}")
        if not low <= value <= high:
            raise self._error(key, f"must be {low}..{high}, not {value}")
        return value

    def backoff(self, key: str) -> tuple[float, ...] | None:
        if key not in self.table:
            return None
        value = self.table[key]
        items = value if isinstance(value, list) else [value]
        if not items:
            raise self._error(key, "must be a duration or a non-empty list of durations")
        delays = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int | float | str):
                raise self._error(key, f"must be a duration or a list of durations, not {_kind(item)}")
            try:
                delays.append(duration(item))
            except ValueError as error:
                raise self._error(key, str(error)) from None
        if any(delay < 0 or delay != delay for delay in delays):
            raise self._error(key, "delays must be 0 or more seconds")
        return tuple(delays)

    def text(self, key: str) -> str | None:
        if key not in self.table:
            return None
        value = self.table[key]
        if not isinstance(value, str) or not value.strip():
            raise self._error(key, f"must be a non-empty string, not {_kind(value)}")
        return value

    def statements(self, key: str) -> tuple[str, ...]:
        value = self.table[key]
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(item, str) and item.strip() for item in items):
            raise self._error(key, "must be an SQL statement or a non-empty list of statements (strings)")
        return tuple(items)

    def database_url(self, key: str) -> str | None:
        url = self.text(key)
        if url is not None:
            try:
                sa.make_url(url)
            except (sa.exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
                # Never echo the URL: it usually holds a password.
                raise self._error(key, "is not a valid SQLAlchemy URL (mysql://…, postgresql://…, sqlite:///…)") \
                    from None
        return url

    def url(self, key: str) -> str:
        url = self.text(key) or ""
        try:
            parse(url)
        except Refused as error:
            raise self._error(key, str(error).removeprefix("refused: ").replace("callback URL", "URL")) from None
        return url

    def secrets(self, key: str) -> tuple[str, ...] | None:
        if key not in self.table:
            return None
        value = self.table[key]
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(item, str) and item for item in items):
            raise self._error(key, "must be a whsec_ secret or a list of them (two while rotating)")
        return tuple(items)

    def argv(self, key: str) -> tuple[str, ...]:
        value = self.table[key]
        if isinstance(value, str):
            raise self._error(key, f'must be a list of arguments, e.g. ["php", "artisan", "report:build"]: '
                                   f"no shell is used, so a string is not split ({value!r})")
        if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value) \
                or not value[0]:
            raise self._error(key, "must be a non-empty list of strings: the program, then its arguments")
        if any("\x00" in item for item in value):
            raise self._error(key, "an argument holds a NUL character")
        return tuple(value)

    def directory(self, key: str) -> str | None:
        path = self.text(key)
        if path is not None and not os.path.isabs(path):
            raise self._error(key, f"must be an absolute path, not {path!r} (a run takes a relative one from its own "
                                   "working directory: under cron the user's home, not where `check` ran)")
        return path

    def env(self, key: str) -> dict[str, str]:
        if key not in self.table:
            return {}
        value = self.table[key]
        if not isinstance(value, dict):
            raise self._error(key, f"must be a table of NAME = \"value\", not {_kind(value)}")
        env: dict[str, str] = {}
        for name, item in value.items():
            if not name or "=" in name or "\x00" in name:
                raise self._error(key, f"{name!r} is not a valid variable name")
            if name.upper().startswith("PENDING_JOBS_"):
                raise self._error(key, f"{name} is reserved: the runner sets PENDING_JOBS_* for each job")
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise self._error(key, f"{name} must be a string or a number, not {_kind(item)}")
            if "\x00" in str(item):
                raise self._error(key, f"{name} holds a NUL character")
            env[name] = str(item)
        return env


def _kind(value: Any) -> str:
    kinds = {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "a table"}
    return kinds.get(type(value), type(value).__name__)
