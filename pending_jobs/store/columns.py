"""The column lists and SQL expressions the store's verbs share: what a claim reads, what people read,
and the conditions and arithmetic that must hold whatever a producer's row contains."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ..models import COUNT_MAX
from ..schema import Time, db_now, paused_queues, statement_now
from ..schema import limits as L
from ..schema import pending_jobs as J
from ..states import JOB_PENDING, JOB_RUNNING

LEASE_EXPIRED = "lease expired while running: the runner was killed or lost the database"


class LenientTime(sa.TypeDecorator[Any]):
    """A time column read as the driver gives it, for models.utc to read: SQLAlchemy's DateTime fails the
    whole read on a value that is not a time, and a producer may have written one (any text on SQLite, a
    zero date on MariaDB, ±infinity on PostgreSQL: Dialect.tolerant_reads). Same SQL, no processing."""

    impl = sa.Text
    cache_ok = True


def lenient_time(column: sa.ColumnElement[Any], name: str | None = None) -> sa.ColumnElement[Any]:
    """The column (or an expression of it), read as LenientTime, labelled with its name."""
    return sa.type_coerce(column, LenientTime()).label(name or column.name)


CLAIM_COLUMNS = (
    J.c.id,
    J.c.task,
    J.c.queue,
    sa.cast(J.c.payload, sa.Text).label("payload_text"),
    J.c.attempts,
    J.c.max_attempts,
    J.c.priority,
    J.c.callback_url,
)
"""What a claim reads back: ClaimedJob's fields, in ClaimedJob.from_row's order (every extra column is
parsed per row, per claim)."""


JOB_COLUMNS = tuple(
    sa.cast(column, sa.Text).label(column.name) if column.name in ("payload", "result")
    else lenient_time(column) if isinstance(column.type, sa.DateTime) else column
    for column in J.c
)
"""A whole row for people (list, show, status): JSON read as text and times as the driver gives them, each
parsed leniently (Job.from_row), so a payload that is not JSON or a time that is not a time (SQLite stores
what it is given) is shown as it is stored, never breaks the listing."""
LIST_COLUMNS = tuple(sa.null().label(column.name) if column.name in ("payload", "result") else column
                     for column in JOB_COLUMNS)
"""JOB_COLUMNS without the payload and the result (NULL): the console's job list page shows neither, and reading
them for 50 jobs of a megabyte each, every 2 s while the page is open, cost the console 100 MB a refresh."""


NO_LEASE_BEYOND = 2 * 86400.0
"""Seconds ahead beyond which a lease is no runner's: the longest `lease` setting is a day, and a
heartbeat renews it to now + lease."""


def one_more(counter: sa.ColumnElement[int]) -> sa.ColumnElement[int]:
    """`counter + 1`, except at the column's largest value: a producer's row may hold any number, and an
    overflowing `+ 1` would fail the whole claim statement (every job of the batch) instead of this one
    job, which the runner then finds out of attempts and fails with the reason. Below zero (a producer's row too)
    it counts from zero, as the runner reads it (models.count): -1 + 1 said no attempt was made after one."""
    return sa.case((counter >= COUNT_MAX, counter), (counter < 0, 1), else_=counter + 1)


def due_in(queue: str | sa.BindParameter[str]) -> tuple[sa.ColumnElement[bool], ...]:
    """The claim's WHERE: pending, in this queue, due by the database clock, and the queue not paused
    (one primary-key lookup, evaluated once per claim: no extra round trip, and no race with `pause`)."""
    paused = sa.select(paused_queues.c.queue).where(paused_queues.c.queue == queue)
    return (J.c.status == JOB_PENDING, J.c.queue == queue, J.c.run_at <= db_now(), ~paused.exists())


def due_in_queue() -> tuple[sa.ColumnElement[bool], ...]:
    """The plain claim's WHERE, the queue a bindparam (one cached statement serves every queue)."""
    return due_in(sa.bindparam("claim_queue", type_=sa.String))


def due_at_priority() -> tuple[sa.ColumnElement[bool], ...]:
    """The plain claim's WHERE bounded to one priority (`claim_priority`, see due.py): its index range ends
    at the priority's first entry that is not due yet instead of reading on through the queue."""
    return (*due_in_queue(), J.c.priority == sa.bindparam("claim_priority", type_=sa.Integer))


def cap_room(of_locked_row: bool = False) -> sa.ColumnElement[int]:
    """How many more jobs of the `claim_queue` parameter's queue may run: the `cap_limit` parameter less
    the queue's running rows (the rows are the slots; a count served by the claim index). Read after the
    cap's row is locked (LimitedStore), so it sees every job the lock's last holder started: by the claim
    statement itself, or `of_locked_row`, by the statement that locks the cap's row `cap_name` (MySQL)."""
    running = sa.select(sa.func.count()).where(J.c.status == JOB_RUNNING,
                                               J.c.queue == sa.bindparam("claim_queue", type_=sa.String))
    if of_locked_row:
        # A reference to the locked row: the count cannot be read before that row is read, and locked.
        running = running.where(L.c.name == sa.bindparam("cap_name", type_=sa.String))
    return sa.bindparam("cap_limit", type_=sa.Integer) - running.scalar_subquery()


def pending_by_id() -> tuple[sa.ColumnElement[bool], ...]:
    """`run --job`'s claim: this one pending job, whatever its run_at and queue."""
    return J.c.status == JOB_PENDING, J.c.id == sa.bindparam("claim_id", type_=sa.Integer)


def claim_order() -> tuple[sa.ColumnElement[Any], ...]:
    """Higher priority first, then the longest due, then insertion order: served by the claim index."""
    return (J.c.priority.desc(), J.c.run_at, J.c.id)


def running_by_id() -> sa.ColumnElement[bool]:
    """`status = 'running'` in a guard that names its rows by id. Through coalesce (status is never NULL)
    no index on status can serve it, so the rows are looked up by id. PostgreSQL took the claim index
    for it otherwise (`running` was rare when the table was analyzed) and walked every dead `running`
    entry a drain leaves behind: a batch's finishing UPDATE took 3.4 ms at the start of a 100,000-job
    drain and 11.5 ms at its end, 1.3-2.3 ms throughout with this (docs/performance.md)."""
    return sa.func.coalesce(J.c.status, "") == JOB_RUNNING


def pending_by_ids() -> sa.ColumnElement[bool]:
    """`status = 'pending'` in a guard that names its rows by id, looked up by id (see `running_by_id`)."""
    return sa.func.coalesce(J.c.status, "") == JOB_PENDING


def ordered(token: sa.BindParameter[str]) -> dict[str, Any]:
    """What an order's UPDATE to succeeded sets besides a success's (store/shared.py): what a claim would have set,
    and the job's end by the statement's clock, `updated_at` too. PostgreSQL's now() is the transaction's start,
    before the order's jobs ran: the row read as changed before it finished."""
    return {"attempts": one_more(J.c.attempts), "lease_owner": sa.bindparam("claim_owner", type_=sa.String),
            "lease_token": token, "started_at": sa.bindparam("claimed_at", type_=Time),
            "finished_at": statement_now(), "updated_at": statement_now()}
