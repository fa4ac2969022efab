"""Test helpers for people writing handlers: run the jobs a test enqueued, inline and in order, and assert
what was enqueued.

    from pending_jobs.testing import JobTester

    def test_signup_sends_welcome_mail(job_tester):        # the pytest fixture, or JobTester() yourself
        signup(job_tester.engine, "ann@example.com")      # your code enqueues
        job_tester.assert_enqueued(task="send_mail", payload={"to": "ann@example.com"})
        report = job_tester.run()                         # a real run: claim, handler, outcome, callback row
        assert report.succeeded == 1

A run here is `pending-jobs run --drain` with one handler thread: the same claim, Retry/Fail, results,
cancellation and callback rows as production, against a real database (a temporary SQLite file by
default, or the test's own database by URL), so what passes here passes there. Callbacks are recorded
(`callback_status = 'pending'`) but not sent unless `run(send_callbacks=True)`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, overload

import sqlalchemy as sa

from . import config, declared, migrate, registry
from .context import Handler
from .enqueue import enqueue
from .errors import ConfigError
from .models import Job, RunReport
from .registry import Task
from .run import run_once
from .states import JobStatus
from .store import create_engine, open_store
from .store.testing import TestingStore

MAX_ROUNDS = 100  # runs of `run(delayed=True)` at most: a handler that always retries still ends
INLINE = {"concurrency": 1, "max_runtime": 300.0}
"""What an inline run changes from the runner's defaults, unless the test gives its own value: one handler
thread, so jobs run one at a time in claim order; and a time box, so a run that never drains still ends."""
NOT_INLINE = {
    "poll": "run() drains, stopping when nothing is due; a poll would keep it waiting for new jobs",
    "callbacks": "use run(send_callbacks=True) to send them",
    "max_jobs": "use run(max_jobs=...)",
}
"""Settings a JobTester refuses, and why: `run()` decides them on every call."""
STATUSES = tuple(status.value for status in JobStatus)
TABLES = ("declared_tasks", "queue_tables", "schedule_tables")  # as the config file's tables, parsed by the run


class JobTester:
    """A job database for one test, and inline runs of its jobs with the registered handlers."""

    __test__ = False

    def __init__(self, database_url: str | None = None, *,
                 tasks: Mapping[str, Task | Handler] | Iterable[str] | None = None, migrate_schema: bool = True,
                 **settings: Any) -> None:
        """`database_url`: the test's own database (migrated here unless `migrate_schema=False`); None: a
        new SQLite file in a temporary folder. `tasks`: handlers by name, or modules to import (None: every
        `@task` imported so far). `settings`: any setting of the config file by its name (`batch_size=10`,
        `payload_limit=…`, `callback_allow=[…]`), checked as the file's are (ConfigError naming it), or its
        tables as `queue_tables={…}`. `concurrency` and `max_runtime` replace INLINE's values (`concurrency=2`
        runs two handlers at once, as the runner would: no longer one at a time in claim order); `poll`,
        `callbacks` and `max_jobs` are refused, as `run()` decides them (NOT_INLINE says how)."""
        checked = _checked(settings)  # before the temporary folder: a refused setting leaves nothing behind
        if database_url is None and not migrate_schema:
            raise ValueError("migrate_schema=False needs the test's own database_url: the temporary SQLite "
                             "database starts empty, so it is always migrated")
        self._folder: str | None = None
        if database_url is None:
            self._folder = tempfile.mkdtemp(prefix="pending-jobs-test-")
            database_url = f"sqlite:///{Path(self._folder) / 'jobs.sqlite3'}"
        self.database_url = database_url
        self.settings = config.load(environ={}).replace(database_url=database_url, poll=0.0,
                                                        **{**INLINE, **checked})
        self.engine: sa.Engine = create_engine(database_url, create=migrate_schema)
        """The job database's engine: give it (or `database_url`) to the code under test."""
        try:
            if migrate_schema:
                migrate.upgrade(self.engine)
            else:  # a database not migrated failed at run() with the driver's "no such table"
                migrate.require_head(self.engine)
            if tasks is None:
                handlers = registry.load([])
            elif isinstance(tasks, Mapping):  # registry entries, or plain `handler(payload, ctx)` functions
                handlers = {name: _entry(name, given) for name, given in tasks.items()}
            else:
                handlers = registry.load(list(tasks))
            # `declared_tasks={...}` (the config file's [task.NAME] tables) run too, as `pending-jobs run` runs
            # them; a table with a mistake is a ConfigError naming it, here (a run holds it back and serves the rest).
            self.tasks = declared.merge(handlers, declared.load(self.settings))
            wrong = [*declared.table_errors(self.settings), *(task.held for task in self.tasks.values() if task.held)]
            if wrong:
                raise ConfigError("; ".join(dict.fromkeys(wrong)))
            # A process-isolated handler's child imports its module again, by name, as a run's child imports
            # the `tasks` setting's modules: without them it found no handler (KeyError).
            isolated = {task.fn.__module__ for task in handlers.values() if task.isolation == "process"}
            self.settings = self.settings.replace(tasks=sorted({*self.settings.tasks, *isolated}))
        except BaseException:  # a module that does not import, a bad table: nothing is left behind either
            self.close()
            raise
        self._store = open_store(self.engine)
        self._reads = TestingStore(self._store)

    def enqueue(self, task: str, payload: Mapping[str, Any] | None = None, **options: Any) -> int:
        """Enqueue a job (the arguments of `pending_jobs.enqueue`, its payload_limit the tester's); its id."""
        return enqueue(self.engine, task, payload, **{"payload_limit": self.settings.payload_limit, **options})

    def clear(self) -> None:
        """Delete every job and what the runs recorded (callback attempts, runs, totals, pauses, limits,
        schedules, audit): a test on a database that other tests use starts from none. Never point a
        JobTester at a database whose jobs you want to keep."""
        self._reads.clear()

    def run(self, *, delayed: bool = False, send_callbacks: bool = False, max_jobs: int | None = None) -> RunReport:
        """Run every due job, and the jobs those enqueue, one at a time in claim order (priority, run_at, id),
        until none is due. `delayed`: jobs scheduled for later and retries waiting for their backoff are
        made due and run too, until none is pending. The report says what happened."""
        max_jobs = config.parse_setting(config.BY_NAME["max_jobs"], max_jobs, "run() max_jobs")
        settings = self.settings.replace(callbacks="on" if send_callbacks else "off", max_jobs=max_jobs)
        total = RunReport()
        for _ in range(MAX_ROUNDS):
            report = run_once(self._store, self.tasks, settings)
            for name in RunReport.STORED:
                setattr(total, name, getattr(total, name) + getattr(report, name))
            total.stopped_by, total.duration = report.stopped_by, total.duration + report.duration
            if not delayed or not self._reads.make_due():
                break
        return total

    def jobs(self, task: str | None = None, status: str | None = None, queue: str | None = None) -> list[Job]:
        """Every job (of this task, status, queue), oldest first."""
        if status is not None and status not in STATUSES:  # a typo matched nothing: assert_not_enqueued passed
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        return self._reads.jobs(task, status, queue)

    def job(self, job_id: int) -> Job:
        """One job; AssertionError when there is none."""
        job = self._store.get(job_id)
        assert job is not None, f"no job {job_id}"
        return job

    def enqueued(self, task: str | None = None, payload: Mapping[str, Any] | None = None,
                 status: str | None = None, queue: str | None = None) -> list[Job]:
        """Jobs of `task` whose payload holds every key of `payload` with that value (others may be there),
        compared as JSON values: a boolean equals only a boolean (True is not 1), and numbers by value (1
        equals 1.0: JSON has one number type); nested objects and arrays must match whole."""
        return [job for job in self.jobs(task, status, queue) if _holds(job.payload, payload)]

    # count=0 returns None; any other count a Job. A literal 0 is also an int, hence the overlap mypy reports.
    @overload
    def assert_enqueued(  # type: ignore[overload-overlap]
            self, task: str | None = None, payload: Mapping[str, Any] | None = None, *,
            count: Literal[0], status: str | None = None, queue: str | None = None) -> None: ...

    @overload
    def assert_enqueued(self, task: str | None = None, payload: Mapping[str, Any] | None = None, *,
                        count: int | None = None, status: str | None = None, queue: str | None = None) -> Job: ...

    def assert_enqueued(self, task: str | None = None, payload: Mapping[str, Any] | None = None, *,
                        count: int | None = None, status: str | None = None, queue: str | None = None) -> Job | None:
        """Assert such a job exists (exactly `count` of them, when given); the newest one (None for count=0)."""
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
            raise ValueError(f"count must be a whole number of jobs, 0 or more, not {count!r}")
        found = self.enqueued(task, payload, status, queue)
        wanted = _described(task, payload, status, queue)
        if count is not None:
            assert len(found) == count, f"expected {count} job(s) with {wanted}, found {len(found)}{self._seen()}"
            if count == 0:
                return None
        assert found, f"no job with {wanted} was enqueued{self._seen()}"
        return found[-1]

    def assert_not_enqueued(self, task: str | None = None, payload: Mapping[str, Any] | None = None, *,
                            status: str | None = None, queue: str | None = None) -> None:
        """Assert no such job exists."""
        found = self.enqueued(task, payload, status, queue)
        assert not found, f"{len(found)} job(s) with {_described(task, payload, status, queue)} were enqueued: " \
                          f"{[job.id for job in found]}"

    def callbacks(self) -> list[Job]:
        """Jobs whose callback is recorded and waits to be sent (`callback_status = 'pending'`)."""
        return [job for job in self.jobs() if job.callback_status == "pending"]

    def _seen(self) -> str:
        jobs = self.jobs()[-10:]
        return "; jobs: " + ", ".join(f"#{job.id} {job.task} {job.payload!r} {job.status}" for job in jobs) \
            if jobs else "; no jobs at all"

    def close(self) -> None:
        """Close the engine and remove the temporary database."""
        self.engine.dispose()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> JobTester:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _entry(name: str, given: Task | Handler) -> Task:
    """A `tasks={...}` value as a registry entry: a Task as it is, a function as `@task(name)` would make it."""
    if isinstance(given, Task):
        return given
    if not callable(given):
        raise TypeError(f"JobTester tasks[{name!r}] must be a handler function or a registry Task, not {given!r}")
    return Task(name, given)


def _checked(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The caller's settings, parsed and range-checked by config's own check, so `batch_size=0` is refused
    here rather than making every run() claim nothing."""
    values: dict[str, Any] = {}
    for name, raw in settings.items():
        if name in NOT_INLINE:
            raise ConfigError(f"JobTester {name}: not a setting of an inline run: {NOT_INLINE[name]}")
        if name in TABLES:
            values[name] = raw
        elif name in config.BY_NAME:
            values[name] = config.parse_setting(config.BY_NAME[name], raw, f"JobTester {name}")
        else:
            raise TypeError(f"JobTester() got an unknown setting {name!r}")
    return values


def _described(task: str | None, payload: Mapping[str, Any] | None, status: str | None, queue: str | None) -> str:
    asked = {"task": task, "payload": payload, "status": status, "queue": queue}
    return " ".join(f"{name}={value!r}" for name, value in asked.items() if value is not None) or "any task"


def _holds(payload: Any, wanted: Mapping[str, Any] | None) -> bool:
    if wanted is None:
        return True
    return isinstance(payload, dict) and all(key in payload and _json_equal(payload[key], value)
                                             for key, value in wanted.items())


def _json_equal(value: Any, wanted: Any) -> bool:
    # Python's == says True == 1 == 1.0; JSON keeps booleans apart from its one number type.
    if isinstance(value, bool) or isinstance(wanted, bool):
        return isinstance(value, bool) and isinstance(wanted, bool) and value == wanted
    if isinstance(value, int | float) or isinstance(wanted, int | float):
        return isinstance(value, int | float) and isinstance(wanted, int | float) and value == wanted
    if isinstance(wanted, Mapping):
        return isinstance(value, dict) and set(value) == set(wanted) and all(
            _json_equal(value[key], wanted[key]) for key in wanted)
    if isinstance(wanted, list | tuple):
        return isinstance(value, list) and len(value) == len(wanted) and all(map(_json_equal, value, wanted))
    return bool(value == wanted)
