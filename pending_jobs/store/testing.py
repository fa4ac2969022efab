"""The SQL of the test helpers (pending_jobs.testing): read what a test enqueued, make later jobs due now,
clear a test database."""

from __future__ import annotations

import sqlalchemy as sa

from ..models import Job
from ..schema import db_now, metadata
from ..schema import pending_jobs as J
from ..states import JOB_PENDING
from .base import Store
from .columns import JOB_COLUMNS


class TestingStore:
    """Job reads and the clock jump a test needs, on a job store."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, store: Store) -> None:
        self.store = store

    def jobs(self, task: str | None = None, status: str | None = None, queue: str | None = None) -> list[Job]:
        """Jobs in insertion order, optionally of one task, status and queue."""
        stmt = sa.select(*JOB_COLUMNS).order_by(J.c.id)
        if task is not None:
            stmt = stmt.where(J.c.task == task)
        if status is not None:
            stmt = stmt.where(J.c.status == status)
        if queue is not None:
            stmt = stmt.where(J.c.queue == queue)
        return self.store.jobs(stmt)

    def make_due(self) -> int:
        """Pending jobs scheduled for later (delays, retries' backoff) become due now; how many."""
        stmt = sa.update(J).where(J.c.status == JOB_PENDING, J.c.run_at > db_now()).values(run_at=db_now())
        return self.store.transaction(lambda conn: int(conn.execute(stmt).rowcount))

    def clear(self) -> None:
        """Delete every row of every pending-jobs table (a test database's), children before parents."""
        def delete_all(conn: sa.Connection) -> None:
            for table in reversed(metadata.sorted_tables):
                conn.execute(sa.delete(table))

        self.store.transaction(delete_all)
