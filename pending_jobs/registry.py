"""The `@task` decorator and the registry of handlers, loaded only from configured modules."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from .context import Handler
from .errors import ConfigError
from .validation import LONGEST_TIMEOUT, task_name_problem

Backoff = Callable[[int], float]
Isolation = Literal["thread", "process"]


def default_backoff(attempt: int) -> float:
    """Seconds before retry number `attempt`: 10 s doubling to a 1 h cap, with jitter (50-100 %)."""
    base = min(3600.0, 10.0 * 2 ** max(0, attempt - 1))
    return float(base * random.uniform(0.5, 1.0))


@dataclasses.dataclass(frozen=True)
class Task:
    """A registered handler and how the runner treats it."""

    name: str
    fn: Handler
    backoff: Backoff = default_backoff
    timeout: float | None = None
    isolation: Isolation = "thread"
    memory_limit: int | None = None
    """Bytes of address space a process-isolated handler may use (RLIMIT_AS); None: no limit."""
    shared: Callable[[Any, Any, Callable[[], bool]], Any] | None = None
    """`shared(payloads, connection, stopping) -> results`: the handler's work for several jobs, in order, on
    a job-database connection whose transaction other jobs of the claim share, committed with all their
    `succeeded` at once (runner/shared.py); where it runs them one by one, it stops before a job once
    `stopping()` (the run stops) and returns the results of those it ran. Set by declared sql tasks on the
    job database; None: the job runs alone, as `fn`."""
    max_attempts: int | None = None
    """The task's own limit on attempts (a declared task's `max_attempts`): a job gives up at it when it
    is fewer than the row's `max_attempts`; None: the row's alone."""
    held: str = ""
    """Why the task cannot run (its config table has an error, see held.py): its jobs are put back pending,
    their attempt uncounted, with this reason, until the table is fixed; empty: it runs."""


_TASKS: dict[str, Task] = {}


def task(
    name: str,
    *,
    backoff: Backoff | None = None,
    timeout: float | None = None,
    isolation: Isolation = "thread",
    memory_limit: int | None = None,
) -> Callable[[Handler], Handler]:
    """Register `fn(payload, ctx)` as the handler of rows whose `task` column is `name`."""
    problem = task_name_problem(name)
    if problem:  # enqueue refuses such a name: the handler would never get a job
        raise ValueError(f"task name {problem}, not {name!r}")
    if isolation not in ("thread", "process"):
        raise ValueError(f"isolation must be 'thread' or 'process', not {isolation!r}")
    if memory_limit is not None and isolation != "process":
        raise ValueError("memory_limit needs isolation='process' (a thread cannot be limited alone)")
    # Checked here, at import: a timeout of "5" killed the worker and timeout threads at the first job (the
    # run never ended), and 1e12 overflowed the waits it bounds.
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or not 0 < timeout <= LONGEST_TIMEOUT):
        raise ValueError(f"timeout must be seconds, more than 0 and at most {LONGEST_TIMEOUT:g} (7 days), "
                         f"not {timeout!r}")
    if backoff is not None and not callable(backoff):  # backoff=30 fell back to the default at every failure
        raise ValueError(f"backoff must be a function of the attempt number, returning seconds, not {backoff!r}")
    if memory_limit is not None and (isinstance(memory_limit, bool) or not isinstance(memory_limit, int)
                                     or memory_limit <= 0):
        raise ValueError(f"memory_limit must be a whole number of bytes, more than 0, not {memory_limit!r}")

    def register(fn: Handler) -> Handler:
        existing = _TASKS.get(name)
        if existing is not None and existing.fn is not fn and _qualname(existing.fn) != _qualname(fn):
            raise ConfigError(f"task {name!r} is registered twice: {_qualname(existing.fn)} and {_qualname(fn)}")
        _TASKS[name] = Task(name, fn, backoff or default_backoff, timeout, isolation, memory_limit)
        return fn

    return register


def held_task(name: str, reason: str) -> Task:
    """A task whose config table has an error: the runner puts its jobs back with `reason`, never runs them."""

    def refuse(payload: Any, ctx: Any) -> Any:  # the executor holds its jobs first: a safety net only
        raise RuntimeError(reason)

    return Task(name, refuse, held=reason)


def attempt_limits(tasks: Mapping[str, Task]) -> dict[str, int]:
    """The tasks with attempts of their own (a declared task's `max_attempts`): what the rescue of a dead
    runner's jobs counts too, besides each row's."""
    return {name: task.max_attempts for name, task in tasks.items() if task.max_attempts is not None}


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def load(modules: Sequence[str], python_path: Sequence[str] = ()) -> dict[str, Task]:
    """Import the configured handler modules and return every registered task. The `python_path`
    directories are searched first: cron and systemd start the runner with no PYTHONPATH of the app's."""
    for folder in reversed([os.path.abspath(folder) for folder in python_path]):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    for module in modules:
        try:
            importlib.import_module(module)
        # Any import-time error is a configuration error; SystemExit too: an app module's `sys.exit("APP_ENV is
        # not set")` ended `run` with its code (1; or 3, which `check` means as "database"), `check` with no report.
        except (Exception, SystemExit) as exc:
            hint = " (is its folder in python_path?)" if isinstance(exc, ModuleNotFoundError) else ""
            raise ConfigError(f"cannot import task module {module!r}: {type(exc).__name__}: {exc}{hint}") from exc
    return dict(_TASKS)


def source_of(task: Task) -> str:
    """The file a task's handler is defined in (what `check` shows), or how it was declared."""
    try:
        return inspect.getsourcefile(inspect.unwrap(task.fn)) or "?"
    except TypeError:  # a callable object (a declared task) or a builtin
        return f"declared ({type(inspect.unwrap(task.fn)).__name__})"
