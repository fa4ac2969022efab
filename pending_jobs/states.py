"""Job and callback states, and who may move a job between them."""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    """Where a job stands. Stored as plain strings so any SQL client can read them."""

    PENDING = "pending"
    """Waiting for `run_at`. A runner's claim moves it to RUNNING; `cancel` moves it to CANCELLED."""

    RUNNING = "running"
    """Claimed under a lease. Only the lease holder (matched by `lease_token`) moves it on: to
    SUCCEEDED, FAILED, back to PENDING for a retry, or to CANCELLED. Once the lease has expired, the
    rescue at the start of every run moves it back to PENDING (or FAILED when attempts are spent)."""

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
    """Due at `callback_next_at`. A delivering runner pushes `callback_next_at` forward as its lease."""

    DELIVERED = "delivered"
    """The receiver answered 2xx. Terminal."""

    FAILED = "failed"
    """Retries exhausted, 410 Gone, or the URL was refused. `callbacks retry` reopens it."""


TERMINAL: frozenset[JobStatus] = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.PENDING, JobStatus.CANCELLED}
    ),
    JobStatus.SUCCEEDED: frozenset({JobStatus.PENDING}),
    JobStatus.FAILED: frozenset({JobStatus.PENDING}),
    JobStatus.CANCELLED: frozenset({JobStatus.PENDING}),
}
"""Every status change the code makes; tests check each store verb against this table."""
