"""The totals that keep /metrics' counters from going down across purge, retention and retry.

/metrics counts ended jobs (by queue, task and outcome) and callback outcomes from the rows. A purge
deletes ended rows and a retry moves a job (or only its callback) out of its outcome: counted from the
rows alone, a counter would go down, which Prometheus's rate() reads as a reset (a huge false spike). So
every verb that does either first locks the rows it will change and reads their outcomes (`lock`), then,
in the same transaction, adds them to pending_job_totals (`keep`: one upsert per group). A counter is
its total plus the rows that count now; `read` reads both in one statement, so one snapshot: a purge that
commits between two reads cannot make a scrape count its rows twice or not at all.

The runner's claim and finish write nothing here: rows only ever enter an outcome there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row

from ..schema import pending_jobs as J
from ..schema import totals as T
from ..states import TERMINAL_VALUES, CallbackStatus
from .dialect import Dialect

JOB, CALLBACK = "job", "callback"
"""The kinds of total: a job's outcome by queue and task; a callback's outcome (queue and task '')."""
CALLBACK_OUTCOMES = (CallbackStatus.DELIVERED.value, CallbackStatus.FAILED.value)
LEAVING = (J.c.id, J.c.queue, J.c.task, J.c.status, J.c.callback_status)
CHUNK = 1000  # ids per locking read: a bounded IN list (SQLite caps a statement's parameters)

Key = tuple[str, str, str, str]
"""(kind, queue, task, outcome)"""


def lock(conn: sa.Connection, where: Sequence[sa.ColumnElement[bool]],
         order: sa.ColumnElement[Any] = J.c.id, limit: int | None = None) -> list[Row[Any]]:
    """Lock the rows `where` selects (in `order`, at most `limit`) and read what `keep` needs of them.

    The verb then deletes or reopens exactly these rows by id: locked, none of them can change outcome
    meanwhile, so what `keep` adds is what the rows stop counting. The search is a plain read; only its
    finds are locked, by primary key in id order, and `where` is checked again on what each holds then
    (a row another verb changed meanwhile drops out). So a search over a big table locks no row it passes,
    and every verb locks in the same order. (SQLite has no row locks and needs none: every transaction
    there is BEGIN IMMEDIATE.)
    """
    search = sa.select(J.c.id).where(*where).order_by(order)
    if limit is not None:
        search = search.limit(limit)
    found = sorted(int(row[0]) for row in conn.execute(search))
    by_id: sa.BindParameter[Any] = sa.bindparam("ids", expanding=True)
    stmt: sa.Select[Any] = sa.select(*LEAVING).where(J.c.id.in_(by_id), *where).order_by(J.c.id).with_for_update()
    return [row for start in range(0, len(found), CHUNK)
            for row in conn.execute(stmt, {"ids": found[start:start + CHUNK]})]


def keep(conn: sa.Connection, sql: Dialect, rows: Sequence[Row[Any]], jobs: bool = True) -> None:
    """Add the outcomes of `rows` (locked by `lock`, about to be deleted or reopened) to the totals: the
    job's own outcome unless `jobs` is False (a callback retry leaves the job ended), and its callback's."""
    counts: Counter[Key] = Counter()
    for row in rows:
        if jobs and row.status in TERMINAL_VALUES:
            counts[(JOB, row.queue, row.task, row.status)] += 1
        if row.callback_status in CALLBACK_OUTCOMES:
            counts[(CALLBACK, "", "", row.callback_status)] += 1
    if counts:
        # In key order: two hosts adding to the same totals lock their rows in the same order.
        stmt = sql.cached(("totals_add",), lambda: sql.upsert_add(T, "total"))
        conn.execute(stmt, [{"kind": kind, "queue": queue, "task": task, "outcome": outcome, "total": n}
                            for (kind, queue, task, outcome), n in sorted(counts.items())])


def _counted() -> sa.CompoundSelect[Any]:
    jobs = (sa.select(sa.literal_column(f"'{JOB}'", sa.String), J.c.queue, J.c.task, J.c.status, sa.func.count())
            .where(J.c.status.in_(TERMINAL_VALUES)).group_by(J.c.queue, J.c.task, J.c.status))
    # By outcome only: (callback_status, callback_next_at) is an index, so this reads no row.
    callbacks = (sa.select(sa.literal_column(f"'{CALLBACK}'", sa.String), sa.literal_column("''", sa.String),
                           sa.literal_column("''", sa.String), J.c.callback_status, sa.func.count())
                 .where(J.c.callback_status.in_(CALLBACK_OUTCOMES)).group_by(J.c.callback_status))
    kept = sa.select(T.c.kind, T.c.queue, T.c.task, T.c.outcome, T.c.total)
    return sa.union_all(jobs, callbacks, kept)


COUNTED = _counted()


def read(conn: sa.Connection) -> dict[Key, int]:
    """Every counter: its total plus the rows that count now, read in one statement."""
    found: Counter[Key] = Counter()
    for kind, queue, task, outcome, n in conn.execute(COUNTED):
        found[(str(kind), str(queue), str(task), str(outcome))] += int(n)
    return dict(found)
