"""Tasks declared in the config file, next to the Python handlers: `[task.NAME]` tables of three kinds.

`sql = "…"` runs statements with the payload bound by name, `url = "…"` POSTs the payload as signed
JSON, `command = [...]` runs a program with the payload on stdin. Each becomes a `registry.Task`
whose handler keeps the handler contract (`fn(payload, ctx)`, Retry, Fail), so the runner treats
it like any Python handler: same retries, backoff, timeouts, cancellation, results and callbacks.
See docs/tasks.md.
"""

from __future__ import annotations

import sqlalchemy as sa

from .. import limits, schedules
from ..config import Settings
from ..errors import ConfigError
from ..registry import Task, held_task
from ..schedules import Schedule
from ..store import dialect_of_url
from . import checks, command, http, sql
from .spec import CommandSpec, HttpSpec, Spec, SqlSpec, limits_only, parse_all, parse_each

__all__ = ["CommandSpec", "HttpSpec", "Spec", "SqlSpec", "build", "check", "limits_only", "load", "merge",
           "schedule_problems", "specs", "table_errors"]


def specs(settings: Settings) -> dict[str, Spec]:
    """The declared tasks of the settings, checked; raises ConfigError naming the task and the key."""
    return parse_all(settings.declared_tasks)


def build(spec: Spec, settings: Settings) -> Task:
    """The registry entry (handler, backoff, timeout) of one declared task."""
    if isinstance(spec, SqlSpec):
        # None for a bad database_url: reported where the engine is made, in the same words as ever.
        dialect = dialect_of_url(spec.database_url or settings.database_url)
        return sql.build(spec, settings.payload_limit, settings.concurrency, dialect)
    if isinstance(spec, HttpSpec):
        return http.build(spec, settings.callback_secret, settings.payload_limit, settings.concurrency)
    return command.build(spec, settings.payload_limit)


def load(settings: Settings) -> dict[str, Task]:
    """Every declared task as a registry entry, by name. A table with an error is a held task (held.py): its
    jobs wait, with the error as their reason, until the table is fixed; the other tasks run as ever."""
    good, problems = parse_each(settings.declared_tasks)
    tasks = {name: held_task(name, problem) for name, problem in problems.items()}
    for name, spec in good.items():
        try:
            tasks[name] = build(spec, settings)
        except ConfigError as error:  # a statement it may not run, a secret it cannot use
            tasks[name] = held_task(name, str(error))
    return tasks


def merge(handlers: dict[str, Task], declared: dict[str, Task]) -> dict[str, Task]:
    """Python handlers and declared tasks together; a name that is both is held (neither runs its jobs)."""
    merged = {**handlers, **declared}
    for name in sorted(set(handlers) & set(declared)):
        merged[name] = held_task(name, f"task {name!r} is both declared in the config ([task.{name}]) and "
                                       "registered by a Python handler module: keep one of them")
    return merged


def check(settings: Settings, engine: sa.Engine) -> tuple[list[str], list[str]]:
    """(problems, notes) of every declared task, for `pending-jobs check`; nothing is run."""
    return checks.check(specs(settings), settings, engine)


def schedule_problems(settings: Settings, plan: dict[str, Schedule]) -> list[str]:
    """The schedules whose payload their declared sql task refuses, for `pending-jobs check`."""
    return checks.schedule_problems(specs(settings), plan, settings.payload_limit)


def table_errors(settings: Settings) -> list[str]:
    """Every `[task.NAME]`, `[queue.NAME]` and `[schedules.NAME]` table's error, as `check` lists them (a run
    holds back or skips each one alone: held.py)."""
    _, task_problems = parse_each(settings.declared_tasks)
    _, queue_problems, limit_problems = limits.parse_each(settings.queue_tables, settings.declared_tasks)
    _, schedule_problems = schedules.parse_each(settings.schedule_tables, settings.payload_limit)
    return [*task_problems.values(), *(p for name, p in limit_problems.items() if name not in task_problems),
            *queue_problems.values(), *schedule_problems.values()]
