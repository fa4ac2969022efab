"""Concurrency and rate limits from the config file: `[queue.NAME]` and `[task.NAME]` tables.

    [queue.mail]
    max_running = 10           # at most 10 jobs of the queue run at once, on every host together
    rate_limit = "50/s"        # at most 50 jobs of the queue start per second (also /m, /h)
    concurrency_limit = 1      # per concurrency_key within the queue

    [task.report]              # a Python task's settings (a declared task may hold them too)
    concurrency_limit = 2      # at most 2 jobs of `report` with the same concurrency_key at once
    rate_limit = "100/m"

Each limit becomes scopes (`Scope`): the claim locks a scope's row in `pending_job_limits` and admits a
job only while every scope it falls under has room. Plain Python: the store and `check` both read it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping
from typing import Any, Literal

from .errors import ConfigError
from .validation import queue_problem

QUEUE_KEYS = ("max_running", "concurrency_limit", "rate_limit")
TASK_KEYS = ("concurrency_limit", "rate_limit")
PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
LIMIT_HIGH = 100_000
PERIOD_HIGH = 86_400.0  # seconds: the longest rate period ("1/24h")
NAME_LIMIT = 255  # pending_job_limits.name
BURST_SHARE = 0.1
"""A rate limit's bucket holds a tenth of one period's allowance (at least one token): jobs start evenly
rather than a whole period's worth at once, and no window of one period sees more than 110 % of the rate."""


@dataclasses.dataclass(frozen=True)
class Rate:
    """At most `count` jobs started per `period` seconds."""

    count: int
    period: float
    text: str

    @property
    def per_second(self) -> float:
        return self.count / self.period

    @property
    def burst(self) -> float:
        """Tokens the bucket holds at most."""
        return max(1.0, self.count * BURST_SHARE)


@dataclasses.dataclass(frozen=True)
class Scope:
    """One limit a job falls under: its row name, and what is counted against it.

    kind `running`: at most `limit` jobs matching (queue, task, key) run at once (None fields match all);
    kind `rate`: `rate` jobs started per period, from a token bucket.
    """

    name: str
    kind: Literal["running", "rate"]
    limit: int = 0
    rate: Rate | None = None
    queue: str | None = None
    task: str | None = None
    key: str | None = None


@dataclasses.dataclass(frozen=True)
class QueueLimits:
    """A `[queue.NAME]` table."""

    max_running: int | None = None
    concurrency_limit: int | None = None
    rate: Rate | None = None


@dataclasses.dataclass(frozen=True)
class TaskLimits:
    """The limit keys of a `[task.NAME]` table."""

    concurrency_limit: int | None = None
    rate: Rate | None = None


@dataclasses.dataclass(frozen=True)
class Limits:
    """Every configured limit; empty (falsy) when none is, and then every claim takes the plain path."""

    queues: Mapping[str, QueueLimits] = dataclasses.field(default_factory=dict)
    tasks: Mapping[str, TaskLimits] = dataclasses.field(default_factory=dict)
    held_tasks: frozenset[str] = frozenset()
    held_queues: frozenset[str] = frozenset()
    """Tasks and queues whose jobs are held (held.py): claimed under no limit, they take no token and no slot
    from the jobs that run (admitted, a backlog of them took a rate-limited queue's every token, for ever)."""

    def __bool__(self) -> bool:
        return bool(self.queues or self.tasks)

    def applies(self, queue: str) -> bool:
        """Whether claims from `queue` must go through the limits (a task limit may bind in any queue)."""
        return queue in self.queues or bool(self.tasks)

    def cap_only(self, queue: str) -> Scope | None:
        """The queue's max_running scope when it is the only limit a claim from `queue` keeps (no task limit
        anywhere, no per-key or rate limit on the queue): such a claim needs only the room the cap leaves. Not while
        a task is held: its jobs, claimed under no limit, would take that room (the limited claim leaves it them)."""
        q = self.queues.get(queue)
        if (self.tasks or self.held_tasks or q is None or q.max_running is None or q.concurrency_limit is not None
                or q.rate is not None):
            return None
        return self.queue_scopes(queue)[0]

    def queue_scopes(self, queue: str) -> list[Scope]:
        """The scopes every job of `queue` falls under, whatever its task and key (max_running, rate)."""
        return [scope for scope in self.scopes(queue, "", None) if scope.task is None and scope.key is None]

    def scopes(self, queue: str, task: str, key: str | None) -> list[Scope]:
        """The scopes a job of `task` in `queue` with `key` falls under (per-key limits need a key: not None)."""
        found: list[Scope] = []
        if task in self.held_tasks or queue in self.held_queues:  # put back unrun at once: nothing to limit
            return found
        q = self.queues.get(queue)
        if q is not None:
            if q.max_running is not None:
                found.append(Scope(_name("queue", queue), "running", q.max_running, queue=queue))
            # '' is a key (SQL and PHP producers can write one): only NULL is no key, as documented.
            if q.concurrency_limit is not None and key is not None:
                found.append(Scope(_name("key:queue", queue, key), "running", q.concurrency_limit, queue=queue,
                                   key=key))
            if q.rate is not None:
                found.append(Scope(_name("rate:queue", queue), "rate", rate=q.rate, queue=queue))
        t = self.tasks.get(task)
        if t is not None:
            if t.concurrency_limit is not None and key is not None:
                found.append(Scope(_name("key:task", task, key), "running", t.concurrency_limit, task=task, key=key))
            if t.rate is not None:
                found.append(Scope(_name("rate:task", task), "rate", rate=t.rate, task=task))
        return found


def _name(*parts: str) -> str:
    """A scope's row name; a long one (task and key of up to 191 characters each) is hashed to fit, and so
    is one ending in a space: MariaDB's collation compares 'user:1 ' equal to 'user:1' (PAD SPACE), and
    the second key's row would never be found under its own name (its jobs waited for ever)."""
    name = ":".join(parts)
    if len(name) <= NAME_LIMIT and not name.endswith(" "):
        return name
    return f"{parts[0]}:sha256:{hashlib.sha256(name.encode()).hexdigest()}"


def parse(queue_tables: Mapping[str, Any], task_tables: Mapping[str, Mapping[str, Any]]) -> Limits:
    """The limits of the `[queue.NAME]` tables and of the limit keys in `[task.NAME]` tables; raises
    ConfigError naming the table and the key."""
    limits, queue_problems, task_problems = parse_each(queue_tables, task_tables)
    for problem in (*queue_problems.values(), *task_problems.values()):
        raise ConfigError(problem)
    return limits


def parse_each(queue_tables: Mapping[str, Any],
               task_tables: Mapping[str, Mapping[str, Any]]) -> tuple[Limits, dict[str, str], dict[str, str]]:
    """(limits, errors by queue, errors by task): each table alone. A run holds back the jobs of a queue or
    task whose limits it cannot read (run unlimited, they could hammer what the limit protects)."""
    queues: dict[str, QueueLimits] = {}
    queue_problems: dict[str, str] = {}
    for name, table in queue_tables.items():
        try:
            queues[name] = _queue_limits(name, table)
        except ConfigError as error:
            queue_problems[name] = str(error)
    tasks: dict[str, TaskLimits] = {}
    task_problems: dict[str, str] = {}
    for name, table in task_tables.items():
        where = f"[task.{name}]"
        try:
            limits = TaskLimits(_count(where, table, "concurrency_limit"), _rate(where, table))
        except ConfigError as error:
            task_problems[name] = str(error)
            continue
        if limits != TaskLimits():
            tasks[name] = limits
    return Limits(queues, tasks), queue_problems, task_problems


def _queue_limits(name: str, table: Any) -> QueueLimits:
    where = f"[queue.{name}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table of {', '.join(QUEUE_KEYS)}")
    problem = queue_problem(name)
    if problem:
        raise ConfigError(f"{where}: {problem}")
    unknown = sorted(set(table) - set(QUEUE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(QUEUE_KEYS)})")
    return QueueLimits(_count(where, table, "max_running"), _count(where, table, "concurrency_limit"),
                       _rate(where, table))


def _count(where: str, table: Mapping[str, Any], key: str) -> int | None:
    if key not in table:
        return None
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= LIMIT_HIGH:
        raise ConfigError(f"{where} {key}: must be a whole number from 1 to {LIMIT_HIGH}, not {value!r}")
    return value


def _rate(where: str, table: Mapping[str, Any]) -> Rate | None:
    if "rate_limit" not in table:
        return None
    value = table["rate_limit"]
    try:
        return parse_rate(value)
    except ValueError as error:
        raise ConfigError(f"{where} rate_limit: {error}") from None


def parse_rate(value: Any) -> Rate:
    """`"50/s"`, `"100/m"`, `"1000/h"` (also `"10/5s"`): jobs started per period."""
    if not isinstance(value, str) or "/" not in value:
        raise ValueError(f'must be a string like "50/s", "100/m" or "1000/h", not {value!r}')
    count_text, period_text = (part.strip().lower() for part in value.split("/", 1))
    try:
        count = int(count_text)
        unit = period_text[-1:] if period_text else ""
        size = float(period_text[:-1]) if period_text[:-1] else 1.0
    except ValueError:
        raise ValueError(f'must be a string like "50/s", "100/m" or "1000/h", not {value!r}') from None
    if unit not in PERIODS or not math.isfinite(size) or size <= 0:
        raise ValueError(f'the period must be s, m or h (e.g. "50/s", "10/5m"), not {period_text!r}')
    if size * PERIODS[unit] > PERIOD_HIGH:  # "1/1e300h" gave a bucket that never refills: a drain never ended
        raise ValueError(f"the period must be at most a day (24h), not {period_text!r}")
    if not 1 <= count <= LIMIT_HIGH * 10:
        raise ValueError(f"the count must be from 1 to {LIMIT_HIGH * 10}, not {count_text}")
    return Rate(count, size * PERIODS[unit], value.strip())
