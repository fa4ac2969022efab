"""Every failed attempt's error, kept beside the job row (whose last_error holds only the newest).

Written on failure paths only (a retry scheduled, a job failed for good, a lease rescued, a cancel that
ended a handler's failure), inside the transaction that records the outcome: one read of the rows the
outcome will change, one executemany INSERT for the batch, and a DELETE of old entries only for jobs past
ERRORS_KEPT attempts (rare), so a succeeding run pays nothing and a failing batch pays two statements.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from ..models import count
from ..schema import job_errors as E
from ..schema import pending_jobs as J

ERRORS_KEPT = 20
"""Errors kept per job: the newest ones (a job retried for days keeps a bounded history)."""

_INSERT = sa.insert(E).values(job_id=sa.bindparam("e_job"), attempt=sa.bindparam("e_attempt"),
                              error=sa.bindparam("e_error"))
_TRIM = sa.delete(E).where(E.c.job_id == sa.bindparam("t_job"), E.c.attempt <= sa.bindparam("t_upto"))


def record(conn: sa.Connection, where: Sequence[sa.ColumnElement[bool]], params: Mapping[str, Any],
           error_of: Callable[[Any], str | None]) -> int:
    """Insert an error row for each job `where` selects now (the rows the outcome's UPDATE will change:
    read before it, under the same guard, so a repeat after a lost commit finds nothing and writes
    nothing); `error_of(row)` (row: id, task, attempts, max_attempts, cancel_requested) gives its text."""
    columns = (J.c.id, J.c.task, J.c.attempts, J.c.max_attempts, J.c.cancel_requested)
    found = conn.execute(sa.select(*columns).where(*where), dict(params)).all()
    entries: list[tuple[int, int, str]] = []
    for row in found:
        error = error_of(row)
        if error is not None:
            entries.append((int(row.id), count(row.attempts), error))
    return add(conn, entries)


def add(conn: sa.Connection, entries: Sequence[tuple[int, int, str]]) -> int:
    """Insert these (job id, attempt, error) entries, dropping each job's entries older than ERRORS_KEPT."""
    if not entries:
        return 0
    conn.execute(_INSERT, [{"e_job": job, "e_attempt": attempt, "e_error": error} for job, attempt, error in entries])
    old = [{"t_job": job, "t_upto": attempt - ERRORS_KEPT} for job, attempt, _ in entries if attempt > ERRORS_KEPT]
    if old:
        conn.execute(_TRIM, old)
    return len(entries)


def forget(conn: sa.Connection, ids: Sequence[int]) -> None:
    """Delete the error history of jobs being deleted (purge and retention)."""
    if ids:
        conn.execute(sa.delete(E).where(E.c.job_id.in_(sa.bindparam("ids", expanding=True))), {"ids": list(ids)})
