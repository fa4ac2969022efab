"""Job and callback states, and who may move a row between them.

`TRANSITIONS` and `CALLBACK_TRANSITIONS` are the whole truth: tests/contract/test_transitions.py drives
every store verb on every database and fails if one makes a change these tables do not list.
"""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    """Where a job stands. Stored as plain strings so any SQL client can read them."""

    PENDING = "pending"
    """Waiting for `run_at`. A runner's claim moves it to RUNNING; `cancel` moves it to CANCELLED. A row
    that cannot even be read (SQLite text that is not UTF-8) is moved to FAILED by the claim that met it."""

    RUNNING = "running"
    """Claimed under a lease. Only the lease holder (matched by `lease_token`) moves it on: to
    SUCCEEDED, FAILED, back to PENDING (a retry, or a release of a claimed job that never started), or
    to CANCELLED (its handler gave up after an operator asked). Once the lease has expired, the rescue
    at the start of every run moves it back to PENDING, or to FAILED when attempts are spent, or to
    CANCELLED when an operator asked."""

    SUCCEEDED = "succeeded"
    """The handler returned; `result` holds its value. Terminal; only a manual `retry` reopens it."""

    FAILED = "failed"
    """Attempts exhausted, `Fail` raised, or the row was unusable; `last_error` says why. Terminal;
    a manual `retry` moves it back to PENDING with attempts reset."""

    CANCELLED = "cancelled"
    """Cancelled by an operator before or while it ran. Terminal; a manual `retry` reopens it."""


class CallbackStatus(enum.StrEnum):
    """Delivery state of a job's callback; NULL in the table when the job has no callback_url."""

    PENDING = "pending"
    """Due at `callback_next_at`. A delivering runner pushes `callback_next_at` forward as its lease;
    the job's outcome moves NULL to PENDING, a 2xx to DELIVERED, spent retries or a refusal to FAILED."""

    DELIVERED = "delivered"
    """The receiver answered 2xx. Terminal but for `callbacks retry` (back to PENDING)."""

    FAILED = "failed"
    """Retries exhausted, 410 Gone, or the URL was refused. `callbacks retry` reopens it."""


JOB_PENDING = JobStatus.PENDING.value
JOB_RUNNING = JobStatus.RUNNING.value
CALLBACK_PENDING = CallbackStatus.PENDING.value

TERMINAL: frozenset[JobStatus] = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
TERMINAL_VALUES: tuple[str, ...] = tuple(sorted(status.value for status in TERMINAL))

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.PENDING, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset({JobStatus.PENDING}),
    JobStatus.FAILED: frozenset({JobStatus.PENDING}),
    JobStatus.CANCELLED: frozenset({JobStatus.PENDING}),
}
"""Every status change a store verb may make to a job, from → to."""

CALLBACK_TRANSITIONS: dict[CallbackStatus | None, frozenset[CallbackStatus | None]] = {
    None: frozenset({CallbackStatus.PENDING, CallbackStatus.FAILED}),
    CallbackStatus.PENDING: frozenset({CallbackStatus.DELIVERED, CallbackStatus.FAILED, None}),
    CallbackStatus.DELIVERED: frozenset({CallbackStatus.PENDING, None}),
    CallbackStatus.FAILED: frozenset({CallbackStatus.PENDING, None}),
}
"""Every change of `callback_status` a store verb may make (None is SQL NULL: no callback due). A job's
outcome makes its callback PENDING; a reopened job (`retry`) forgets its old callback outcome (NULL); a
row that cannot be read cannot be announced either (NULL to FAILED, with the reason)."""
