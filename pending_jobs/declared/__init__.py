"""Tasks declared in the config file, next to the Python handlers: `[task.NAME]` tables of three kinds.

`sql = "…"` runs statements with the payload bound by name, `url = "…"` POSTs the payload as signed
JSON, `command = [...]` runs a program with the payload on stdin. Each becomes a `registry.Task`
whose handler keeps the handler contract (`fn(payload, ctx)`, Retry, Fail), so the runner treats
it like any Python handler: same retries, backoff, timeouts, cancellation, results and callbacks.
See docs/tasks.md.
"""

from __future__ import annotations

import sqlalchemy as sa

from ..config import Settings
from ..errors import ConfigError
from ..registry import Task
from ..schedules import Schedule
from ..store import dialect_of_url
from . import checks, command, http, sql
from .spec import CommandSpec, HttpSpec, Spec, SqlSpec, limits_only, parse_all

__all__ = ["CommandSpec", "HttpSpec", "Spec", "SqlSpec", "build", "check", "limits_only", "load", "merge",
           "schedule_problems", "specs"]


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
    """Every declared task as a registry entry, by name."""
    return {name: build(spec, settings) for name, spec in specs(settings).items()}


def merge(handlers: dict[str, Task], declared: dict[str, Task]) -> dict[str, Task]:
    """Python handlers and declared tasks together; a name may be only one of them."""
    both = sorted(set(handlers) & set(declared))
    if both:
        raise ConfigError(f"task {both[0]!r} is both declared in the config ([task.{both[0]}]) and registered "
                          "by a Python handler module: keep one of them")
    return {**handlers, **declared}


def check(settings: Settings, engine: sa.Engine) -> tuple[list[str], list[str]]:
    """(problems, notes) of every declared task, for `pending-jobs check`; nothing is run."""
    return checks.check(specs(settings), settings, engine)


def schedule_problems(settings: Settings, plan: dict[str, Schedule]) -> list[str]:
    """The schedules whose payload their declared sql task refuses, for `pending-jobs check`."""
    return checks.schedule_problems(specs(settings), plan, settings.payload_limit)
