"""What a handler receives besides its payload: one `Context` protocol for thread and process handlers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .models import ClaimedJob

if TYPE_CHECKING:  # only for the type of `connection`; handlers that use it import SQLAlchemy themselves
    import sqlalchemy as sa


class Context(Protocol):
    """The job a handler runs for, its time limit, a logger, cancellation and (in a thread) a connection."""

    job_id: int
    task: str
    queue: str
    attempt: int
    """1 on the first run."""
    max_attempts: int
    deadline: float | None
    """`time.monotonic()` value by which the handler should return (None: the task has no timeout)."""
    log: logging.LoggerAdapter[logging.Logger]

    @property
    def connection(self) -> sa.Connection:
        """A connection in a transaction that commits together with the job's `succeeded` status."""

    def cancel_requested(self) -> bool:
        """Whether an operator ran `pending-jobs cancel` on this job while it runs."""

    def time_left(self) -> float | None:
        """Seconds until the deadline, or None when there is none."""


Handler = Callable[[dict[str, Any], Context], Any]
"""`handler(payload, ctx) -> result`: what `@task` registers."""


class HandlerTransaction(Protocol):
    """The store's side of `ctx.connection`: opened on first use, committed with the job's success."""

    @property
    def connection(self) -> sa.Connection:
        """The connection, in a transaction (opened on first use)."""

    def cancel_requested(self) -> bool:
        """Read the job's cancel flag (through the open connection when there is one)."""


class JobContext:
    """The context of a handler running in a runner thread."""

    def __init__(self, job: ClaimedJob, transaction: HandlerTransaction, deadline: float | None,
                 logger: logging.Logger, max_attempts: int | None = None) -> None:
        self.job_id = job.id
        self.task = job.task
        self.queue = job.queue
        self.attempt = job.attempt
        self.max_attempts = job.max_attempts if max_attempts is None else max_attempts  # the task's may be fewer
        self.deadline = deadline
        self.log = logging.LoggerAdapter(logger, {"job_id": job.id, "task": job.task})
        self._transaction = transaction

    @property
    def connection(self) -> sa.Connection:
        """A connection in an open transaction that commits together with the job's `succeeded` status.

        Writes made through it happen exactly once: if the handler raises, or its lease was taken
        over, the transaction is rolled back with them.
        """
        return self._transaction.connection

    def cancel_requested(self) -> bool:
        """Whether an operator ran `pending-jobs cancel` on this job while it runs (one query per call).

        A handler that sees it should stop and raise (for example `Retry()`): instead of being
        retried the job then ends `cancelled`.
        """
        return self._transaction.cancel_requested()

    def time_left(self) -> float | None:
        """Seconds until the deadline, or None when there is none."""
        return time_left(self.deadline)

    def __repr__(self) -> str:
        return f"JobContext(job_id={self.job_id}, task={self.task!r}, attempt={self.attempt})"


def time_left(deadline: float | None) -> float | None:
    """Seconds until a monotonic deadline, never negative; None without one."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())
