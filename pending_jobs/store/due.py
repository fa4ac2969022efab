"""Before the claim of a run that has caught up: which priorities of a queue have a due job, by index dives.

The claim index orders priority before run_at (claim order), so a claim that finds fewer due jobs than
it asks for reads on through every not-yet-due entry of the queue: 250,000 index entries read for none
due with 1,000,000 jobs scheduled ahead (docs/performance.md). A drain's claims come back full and stop
early; a run that has caught up (idle, or jobs trickling in) claims short at every poll. For such a
queue the plain claim, and the capped claim of a queue whose one limit is its max_running (limited.py),
first ask this module, a few dives into the same index (each reads one entry):

- no priority has a due job: no claim is made;
- one has: the claim is bounded to it (equality on priority, so its range ends at the first entry
  that is not due yet), which covers the usual table where every job has priority 0;
- several, more distinct priorities than MOST, or a priority that is not a whole number within the
  column's range (SQLite stores what a producer gives it: text, a real, a number too large to bind):
  the plain claim, which orders and reads such rows as it always has.

The dives run again before every claim (their answers are not kept), so a job that becomes due without
a new row (a retry's backoff ends, an operator's retry, another host's released job) is found by the
next poll's dives. A job of another priority that comes due between the dives and the bounded claim
waits for the next claim.
"""

from __future__ import annotations

import sqlalchemy as sa

from ..schema import db_now
from ..schema import pending_jobs as J
from ..states import JOB_PENDING
from .dialect import Dialect

MOST = 4  # distinct priorities looked at; a queue that uses more takes the plain claim
BOUND = 2**31  # a priority a dive may bind: the column is a 32-bit INTEGER on MariaDB and PostgreSQL


def due_priorities(conn: sa.Connection, sql: Dialect, queue: str) -> list[int] | None:
    """The priorities of `queue` with a due pending job, highest first; None past MOST priorities."""
    top = sql.cached(("due_priorities", "top"), lambda: sa.select(J.c.priority).where(*_pending())
                     .order_by(J.c.priority.desc()).limit(1))
    below = sql.cached(("due_priorities", "below"), lambda: sa.select(J.c.priority).where(
        *_pending(), J.c.priority < sa.bindparam("below", type_=sa.Integer)).order_by(J.c.priority.desc()).limit(1))
    due = sql.cached(("due_priorities", "due"), lambda: sa.select(J.c.id).where(
        *_pending(), J.c.priority == sa.bindparam("priority", type_=sa.Integer), J.c.run_at <= db_now()).limit(1))
    found: list[int] = []
    row = conn.execute(top, {"due_queue": queue}).first()
    for _ in range(MOST):
        if row is None:
            return found
        priority = row[0]
        if type(priority) is not int or not -BOUND <= priority < BOUND:
            return None
        if conn.execute(due, {"due_queue": queue, "priority": priority}).first() is not None:
            found.append(priority)
        row = conn.execute(below, {"due_queue": queue, "below": priority}).first()
    return found if row is None else None


def _pending() -> tuple[sa.ColumnElement[bool], ...]:
    """The dives' shared WHERE; built only when a dive's statement is (they are cached per dialect)."""
    return (J.c.status == JOB_PENDING, J.c.queue == sa.bindparam("due_queue", type_=sa.String))
