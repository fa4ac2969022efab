"""The producer API: insert jobs, inside the caller's transaction when given a Connection."""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from . import validation
from .store import insert_jobs

DEFAULT_PAYLOAD_LIMIT = 1_000_000
DELAY_MAX = 100 * 365 * 86_400.0  # seconds: as far ahead as a producer may schedule a job


def enqueue(
    bind: sa.Connection | sa.Engine,
    task: str,
    payload: Mapping[str, Any] | None = None,
    *,
    queue: str = "default",
    priority: int = 0,
    delay: float | None = None,
    run_at: dt.datetime | None = None,
    max_attempts: int | None = None,
    callback_url: str | None = None,
    idempotency_key: str | None = None,
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
    concurrency_key: str | None = None,
) -> int:
    """Insert one job and return its id (an existing job's id when the idempotency key is taken)."""
    row = job_row(
        task, payload, queue=queue, priority=priority, delay=delay, run_at=run_at, max_attempts=max_attempts,
        callback_url=callback_url, idempotency_key=idempotency_key, payload_limit=payload_limit,
        concurrency_key=concurrency_key,
    )
    with _connection(bind) as conn:
        return insert_jobs(conn, [row])[0]


def enqueue_many(bind: sa.Connection | sa.Engine, jobs: Iterable[Mapping[str, Any]]) -> list[int]:
    """Insert many jobs (dicts of `enqueue`'s arguments) in multi-row statements; return ids in order."""
    rows = [_row_of(number, job) for number, job in enumerate(jobs)]
    with _connection(bind) as conn:
        return insert_jobs(conn, rows)


def _row_of(number: int, job: object) -> dict[str, Any]:
    """One of enqueue_many's jobs as its row; a ValueError saying which job (counted from 0) and why."""
    if not isinstance(job, Mapping):
        raise ValueError(f"job {number}: must be a dict of enqueue's arguments, not {type(job).__name__}")
    unknown = sorted(str(name) for name in job if name not in OPTIONS)
    if unknown or "task" not in job:  # job_row(**job) raised TypeError ("unexpected keyword argument")
        reason = f"unknown option {unknown[0]!r}; the options are {', '.join(OPTIONS)}" if unknown else "no task"
        raise ValueError(f"job {number}: {reason}")
    try:
        return job_row(**job)
    except ValueError as error:
        raise ValueError(f"job {number}: {error}") from None


def job_row(
    task: str,
    payload: Mapping[str, Any] | None = None,
    *,
    queue: str = "default",
    priority: int = 0,
    delay: float | None = None,
    run_at: dt.datetime | None = None,
    max_attempts: int | None = None,
    callback_url: str | None = None,
    idempotency_key: str | None = None,
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
    concurrency_key: str | None = None,
) -> dict[str, Any]:
    """Validate one job's arguments and return its column values; raise ValueError saying what is wrong."""
    problem = validation.task_name_problem(task)
    if problem:
        raise ValueError(f"task {problem}")
    problem = validation.key_problem(queue, validation.QUEUE_LIMIT)
    if problem:
        raise ValueError(f"queue {problem}")
    _integer("payload_limit", payload_limit, 1, None)
    payload = {} if payload is None else payload
    problem = validation.payload_problem(payload)
    if problem:
        raise ValueError(problem)
    validation.dump_json(payload, "payload", payload_limit, allow_nul=False)
    _integer("priority", priority, validation.PRIORITY_MIN, validation.PRIORITY_MAX)
    if max_attempts is not None:
        _integer("max_attempts", max_attempts, 1, validation.MAX_ATTEMPTS_LIMIT)
    if callback_url is not None:
        if not isinstance(callback_url, str):
            raise ValueError(f"callback_url must be a string, not {type(callback_url).__name__}")
        problem = validation.callback_url_problem(callback_url)
        if problem:
            raise ValueError(problem)
    for name, key in (("idempotency_key", idempotency_key), ("concurrency_key", concurrency_key)):
        problem = None if key is None else validation.key_problem(key)
        if problem:
            raise ValueError(f"{name} {problem}")
    if delay is not None and run_at is not None:
        raise ValueError("give delay or run_at, not both")
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int | float)):
        raise ValueError(f"delay must be a number of seconds, not {type(delay).__name__}")
    if delay is not None and not 0 <= delay <= DELAY_MAX:  # also NaN; inf overflowed PostgreSQL's interval
        raise ValueError("delay must be from 0 seconds to 100 years (as the PHP client's)")
    # int(): a subclass of int reached the database as its str() (PyMySQL picks its converter by exact type).
    row: dict[str, Any] = {"task": task, "payload": dict(payload), "queue": queue, "priority": int(priority)}
    if max_attempts is not None:
        row["max_attempts"] = int(max_attempts)
    if callback_url is not None:
        row["callback_url"] = callback_url
    if idempotency_key is not None:
        row["idempotency_key"] = idempotency_key
    if concurrency_key is not None:
        row["concurrency_key"] = concurrency_key
    if delay:
        row["run_at_delay"] = float(delay)
    if run_at is not None:
        row["run_at"] = _utc(run_at)
    return row


OPTIONS = tuple(inspect.signature(job_row).parameters)
"""job_row's arguments: the keys an enqueue_many job may have."""


def _utc(run_at: object) -> dt.datetime:
    """run_at as the naive UTC datetime the databases store, rebuilt as a plain datetime (a subclass reached
    MariaDB as its str()); within the years 1..9999 in UTC, as the PHP client's."""
    if not isinstance(run_at, dt.datetime):
        raise ValueError(f"run_at must be a timezone-aware datetime, not {type(run_at).__name__}")
    if run_at.tzinfo is None:
        raise ValueError("run_at must be timezone-aware (times are stored in UTC)")
    try:
        utc = run_at.astimezone(dt.UTC)
    except OverflowError:  # 9999-12-31 23:00 -05:00 is past datetime's last year in UTC
        raise ValueError(f"run_at must be in the years 1..9999 in UTC, not {run_at.isoformat()}") from None
    return dt.datetime(utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second, utc.microsecond)


def _integer(name: str, value: object, low: int, high: int | None) -> None:
    # A bool is an int to Python, and 2.5 or "3" reached the database: MariaDB rounded, SQLite kept 2.5.
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"in {low}..{high}" if high is not None else f"of at least {low}"
        raise ValueError(f"{name} must be an integer {span}, not {value!r}")


@contextmanager
def _connection(bind: sa.Connection | sa.Engine) -> Iterator[sa.Connection]:
    if isinstance(bind, sa.Connection):
        yield bind  # the caller's transaction decides
    else:
        with bind.begin() as conn:
            yield conn

