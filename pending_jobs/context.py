"""What a handler receives besides its payload."""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa

from .store.models import ClaimedJob
from .store.ops import cancel_requested


class JobContext:
    """The job's id, attempt, deadline, a logger, and a lazily opened transactional connection."""

    def __init__(self, job: ClaimedJob, engine: sa.Engine, deadline: float | None, logger: logging.Logger) -> None:
        self.job_id = job.id
        self.task = job.task
        self.queue = job.queue
        self.attempt = job.attempt
        self.max_attempts = job.max_attempts
        self.deadline = deadline
        """`time.monotonic()` value by which the handler should return (None: no limit)."""
        self.log = logging.LoggerAdapter(logger, {"job_id": job.id, "task": job.task})
        self._engine = engine
        self._connection: sa.Connection | None = None

    @property
    def connection(self) -> sa.Connection:
        """A connection in an open transaction that commits together with the job's `succeeded` status.

        Writes made through it happen exactly once: if the handler raises, or its lease was taken
        over, the transaction is rolled back with them.
        """
        if self._connection is None:
            self._connection = self._engine.connect()
            self._connection.begin()
        return self._connection

    def cancel_requested(self) -> bool:
        """Whether an operator ran `pending-jobs cancel` on this job while it runs (one query per call).

        A handler that sees it should stop and raise (for example `Retry()`): instead of being
        retried the job then ends `cancelled`.
        """
        if self._connection is not None:  # SQLite: a second connection would wait for this one's lock
            return cancel_requested(self._connection, self.job_id)
        return cancel_requested(self._engine, self.job_id)

    def time_left(self) -> float | None:
        """Seconds until the deadline, or None when there is none."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def _take_connection(self) -> sa.Connection | None:
        conn, self._connection = self._connection, None
        return conn

    def __repr__(self) -> str:
        return f"JobContext(job_id={self.job_id}, task={self.task!r}, attempt={self.attempt})"
