"""Config tables that fail alone: a `[task.NAME]`, `[queue.NAME]` or `[schedules.NAME]` table with an error
stops neither the run nor the other tables.

The jobs of a task or queue whose table has an error are *held*: claimed, then put back pending with their
attempt uncounted and the error as `last_error`, due again HOLD_DELAY later, so a run after the fix (cron's
next tick) runs them. Running them without the table (its timeout, attempts, limits) could do what the table
was written to prevent, and failing them would lose them. A schedule with an error is skipped; once fixed,
its `catch_up` decides what becomes of the slots it missed. Every run logs each error at ERROR and ends with
exit 2 after serving the rest; `check` fails on it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

from . import limits, schedules
from .config import Settings
from .registry import Task

log = logging.getLogger(__name__)

HOLD_DELAY = 60.0
"""Seconds a held job waits before a run looks at it again: cron's tick, so a fix is picked up at the next
run, while a backlog of held jobs costs each run one claim and one UPDATE per job a minute at most."""


@dataclasses.dataclass(frozen=True)
class Tables:
    """The run's view of the config tables: what it applies, what it holds back, and why."""

    limits: limits.Limits
    schedules: dict[str, schedules.Schedule]
    tasks: dict[str, Task]
    """The run's tasks, those whose table has an error marked `held`."""
    queues: dict[str, str]
    """Held queues: the error of their `[queue.NAME]` table, by name."""
    problems: list[str]
    """Every table's error, as the log and the exit code report them."""


def read(settings: Settings, tasks: Mapping[str, Task], schedules_too: bool = True) -> Tables:
    """The tables of `settings`, each alone: one with an error is held or skipped, never raised."""
    applied, queue_problems, limit_problems = limits.parse_each(settings.queue_tables, settings.declared_tasks)
    plan, schedule_problems = (schedules.parse_each(settings.schedule_tables, settings.payload_limit)
                               if schedules_too else ({}, {}))
    run_tasks = dict(tasks)
    for name, problem in limit_problems.items():
        task = run_tasks.get(name)
        if task is not None and not task.held:  # unlimited, it could hammer what the limit protects
            run_tasks[name] = dataclasses.replace(task, held=problem, shared=None)
    problems = [f"{task.held}: its jobs are held back until it is fixed"
                for _, task in sorted(run_tasks.items()) if task.held]
    problems += [f"{problem}: a limit of a task this run does not have (ignored)"
                 for name, problem in limit_problems.items() if name not in run_tasks]
    problems += [f"{problem}: its jobs are held back until it is fixed" for problem in queue_problems.values()]
    problems += [f"{problem}: skipped until it is fixed" for problem in schedule_problems.values()]
    applied = dataclasses.replace(applied, held_tasks=frozenset(name for name, task in run_tasks.items() if task.held),
                                  held_queues=frozenset(queue_problems))
    return Tables(applied, plan, run_tasks, queue_problems, problems)


def report(tables: Tables) -> None:
    """Log every table's error at ERROR: cron mails it, and `run -v` shows it."""
    for problem in tables.problems:
        log.error("config: %s", problem)

