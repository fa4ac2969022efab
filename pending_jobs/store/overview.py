"""The console overview's counts, read in a time that does not grow with the table.

Counting every row by queue x status is one pass over the whole claim index: 0.2 to 0.45 s at 1,000,000
rows, and more as the table grows. So, as Oban Met does above its `estimate_limit`, a count is exact only
up to a bound:

- the (status, queue) pairs present are found by a skip scan over the claim index (status, queue, ...):
  one index dive per pair, so a queue whose jobs have all finished is still listed;
- each pair is counted by reading at most `BOUND + 1` of its index entries, in the index's own order
  (which also keeps PostgreSQL on the index when the visibility map is not yet set). At or below the
  bound the count is exact: pending, running and failed usually are, and those are the ones to act on;
- above it, the count shown is the planner's row estimate (`Dialect.estimate`: PostgreSQL's statistics,
  MariaDB's dive into the index), rounded to two figures and flagged `estimate` (≈); where the database
  gives none (SQLite) or its estimate is not above the bound (statistics behind the table), the count is
  flagged `more_than` the bound (>).

So the overview reads at most `BOUND + 1` index entries per queue x status, whatever the table holds, and
no counter is kept on write: claims and outcomes pay nothing for it. `bound=None` counts every pair exactly
(/metrics did, for its depth gauge: it now counts the pending jobs alone, ConsoleStore.counters).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from ..schema import db_now
from ..schema import pending_jobs as J
from ..states import JOB_PENDING, JobStatus
from .columns import claim_order, lenient_time
from .dialect import Dialect

BOUND = 10_000
"""Counts up to this are exact; above it they are estimates. Oban Met's default is 50,000; here reading
10,001 index entries costs about 3 ms on MariaDB, and the overview of benchmarks.console's 1,000,000 jobs
(15 queue x status pairs at or above the bound) took 96 ms on MariaDB and 33 ms on PostgreSQL on a loaded
2-core machine. "≈ 180,000 succeeded" serves an operator as well as the exact figure."""
ESTIMATE, MORE_THAN = "estimate", "more_than"
CLAIM_ORDER = claim_order()
"""The claim index's order after (status, queue): a bounded read in this order stays on the index."""

_FIRST_QUEUE = sa.select(sa.func.min(J.c.queue)).where(J.c.status == sa.bindparam("status"))
_NEXT_QUEUE = _FIRST_QUEUE.where(J.c.queue > sa.bindparam("after"))
_PAIR = (J.c.status == sa.bindparam("status"), J.c.queue == sa.bindparam("queue"))
# The first entry of each priority level of a queue's pending jobs is that level's earliest run_at.
_LEVEL = (sa.select(J.c.priority, lenient_time(J.c.run_at), J.c.id, db_now().label("now"),
                    sa.case((J.c.run_at <= db_now(), 1), else_=0).label("due"))
          .where(J.c.status == JOB_PENDING, J.c.queue == sa.bindparam("queue")).order_by(*CLAIM_ORDER).limit(1))
_LOWER_LEVEL = _LEVEL.where(J.c.priority < sa.bindparam("below"))


@dataclasses.dataclass(frozen=True)
class Tally:
    n: int
    inexact: str | None = None
    """None when `n` is exact; ESTIMATE (n is the planner's estimate) or MORE_THAN (there are more than n)."""


def pairs(conn: sa.Connection) -> list[tuple[str, str]]:
    """Every (status, queue) that has jobs, by a skip scan over the claim index."""
    found = []
    for status in JobStatus:
        queue = conn.execute(_FIRST_QUEUE, {"status": status.value}).scalar()
        while queue is not None:
            found.append((status.value, str(queue)))
            queue = conn.execute(_NEXT_QUEUE, {"status": status.value, "after": queue}).scalar()
    return found


def bounded_count(where: Sequence[sa.ColumnElement[bool]], order: Sequence[sa.ColumnElement[Any]],
                  bound: int | None) -> sa.Select[Any]:
    """COUNT(*) of the first bound + 1 rows `where` selects in `order` (of every row for bound None)."""
    rows = sa.select(J.c.id).where(*where)
    if bound is not None:
        rows = rows.order_by(*order).limit(bound + 1)
    return sa.select(sa.func.count()).select_from(rows.subquery())


def tally(conn: sa.Connection, sql: Dialect, where: Sequence[sa.ColumnElement[bool]],
          order: Sequence[sa.ColumnElement[Any]], params: dict[str, Any], bound: int | None) -> Tally:
    """How many rows `where` selects: exact up to `bound` (reading at most bound + 1 index entries in
    `order`, the order of the index that serves `where`), an estimate or a lower bound above it."""
    n = int(conn.execute(bounded_count(where, order, bound), params).scalar_one())
    if bound is None or n <= bound:
        return Tally(n)
    guess = sql.estimate(conn, sa.select(J.c.id).where(*where), params)
    rounded = round(guess, 2 - len(str(guess))) if guess is not None else 0
    return Tally(rounded, ESTIMATE) if rounded > bound else Tally(bound, MORE_THAN)


def by_pair(conn: sa.Connection, sql: Dialect, bound: int | None) -> dict[tuple[str, str], Tally]:
    """A tally of every (status, queue) that has jobs."""
    return {(status, queue): tally(conn, sql, _PAIR, CLAIM_ORDER, {"status": status, "queue": queue}, bound)
            for status, queue in pairs(conn)}


def oldest_due(conn: sa.Connection, sql: Dialect, queue: str) -> sa.Row[Any] | None:
    """The queue's due pending job with the earliest run_at (id, run_at, now), or None.

    The claim index orders a queue's pending jobs by priority first, so the earliest run_at may be at any
    priority: one index dive per priority level present reads each level's first entry, and the earliest
    of those that are due wins. A backlog of any size costs as many dives as it has priority levels.
    """
    best: sa.Row[Any] | None = None
    row = conn.execute(_LEVEL, {"queue": queue}).first()
    while row is not None:
        if row.due and (best is None or _waited(sql, row) < _waited(sql, best)):
            best = row
        row = conn.execute(_LOWER_LEVEL, {"queue": queue, "below": row.priority}).first()
    return best


def _waited(sql: Dialect, row: sa.Row[Any]) -> tuple[dt.datetime, int]:
    """A due row's place in waiting order. A run_at that is not a time yet due by the database's comparison
    (a zero date on MariaDB, -infinity on PostgreSQL) has waited longest: the claim takes it first too."""
    return sql.clock_value(row.run_at) or dt.datetime.min.replace(tzinfo=dt.UTC), int(row.id)
