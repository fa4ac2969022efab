"""Rescue: running jobs whose lease expired, or that have none, put back (pending, or failed when their
attempts are spent, or cancelled when an operator asked for that). Run at a run's start and every
RESCUE_EVERY while it serves (runner/producer.py); each rescued job's attempt is recorded with its reason.
Finished jobs whose callback is pending with no time set (by hand) are made due in the same pass.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..models import Rescued, count
from ..schema import db_now
from ..schema import pending_jobs as J
from ..states import CALLBACK_PENDING, JOB_PENDING, JOB_RUNNING, TERMINAL_VALUES, JobStatus
from .columns import LEASE_EXPIRED, NO_LEASE_BEYOND
from .history import record

HELD_UNRUN = "; its task's or queue's config table has an error: it was held back, not run (attempt uncounted)"

if TYPE_CHECKING:
    from .base import Store


def rescue_expired(store: Store, task_limits: Mapping[str, int] | None = None,
                   held: tuple[Collection[str], Collection[str]] = ((), ())) -> Rescued:
    """Rescue every expired lease in one transaction; what became of the jobs. `task_limits`: the attempts
    of tasks whose own limit is below the row's (a declared task's `max_attempts`): spent at that count.
    `held`: the (tasks, queues) whose jobs this run holds (held.py): a dead runner claimed them only to put
    them back, so they go back with their attempt uncounted and no history row (counted, a held job ended
    failed, never run, after as many crashes as it had attempts)."""
    callbacks = schedule_unscheduled_callbacks(store)
    lease = J.c.lease_expires_at
    # No lease, an expired one, or one no runner could have taken (unreadable, or further ahead than
    # the longest lease): a producer may insert any of these, and such a row must not stay running.
    spent = [lease < db_now(), lease.is_(None), lease > store.sql.after(store.sql.seconds(NO_LEASE_BEYOND))]
    unreadable = store.sql.unreadable_time(lease)
    expired = (J.c.status == JOB_RUNNING, sa.or_(*spent, *([unreadable] if unreadable is not None else [])))
    # A plain (non-locking) read first: an UPDATE that scanned the `running` range would lock
    # the index entries of other runners' in-flight jobs and deadlock with their handlers.
    # Whether a job is held is asked of the database, not read: a producer's task or queue may be text the
    # driver cannot decode (SQLite), and one such row must not stop the rescue, the run with it.
    is_held = sa.or_(J.c.task.in_(sorted(held[0])), J.c.queue.in_(sorted(held[1]))) if any(held) else sa.false()
    find = sa.select(J.c.id, is_held).where(*expired)
    found = store.transaction(lambda conn: conn.execute(find).all())
    if not found:
        return Rescued(callbacks=callbacks)
    ids = [int(row[0]) for row in found]
    unrun = [int(row[0]) for row in found if row[1]]
    mine = (store.sql.id_in(), *expired)
    cancel_values = store.terminal_values(JobStatus.CANCELLED)
    cancel_values["last_error"] = LEASE_EXPIRED + "; cancelled by an operator"
    to_cancelled = sa.update(J).where(*mine, J.c.cancel_requested == sa.true()).values(cancel_values)
    fail_values = store.terminal_values(JobStatus.FAILED)
    fail_values["last_error"] = LEASE_EXPIRED + "; no attempts left"
    to_failed = sa.update(J).where(*mine).values(fail_values)
    # run_at is kept: a rescued job keeps its place in claim order (a limit of 1 per key keeps order).
    to_pending = sa.update(J).where(*mine).values(
        status=JOB_PENDING, last_error=LEASE_EXPIRED, lease_expires_at=None, updated_at=db_now())
    # A row a producer wrote `running` by hand may have no attempt counted: never below 0.
    one_less = sa.case((J.c.attempts > 0, J.c.attempts - 1), else_=0)
    to_uncounted = sa.update(J).where(*mine).values(  # after to_cancelled
        status=JOB_PENDING, attempts=one_less, started_at=None, last_error=LEASE_EXPIRED + HELD_UNRUN,
        lease_expires_at=None, updated_at=db_now())
    # Which jobs' attempts are spent is decided here, from the rows the error history reads: the row's
    # max_attempts, or its task's own limit when fewer (put back by the row's alone, a `max_attempts = 1`
    # command ran a second time). One SQL term per limited task overflowed SQLite's expression depth at
    # about a thousand tasks, and MariaDB's padding collation matched 'once ' to 'once' where this dict does not.
    limits = dict(task_limits or {})

    def work(conn: sa.Connection) -> Rescued:
        failing: set[int] = set()
        uncounting = set(unrun)

        def error_of(row: Any) -> str | None:  # called once per rescued row, before the UPDATEs below
            if row.cancel_requested:
                return str(cancel_values["last_error"])
            if int(row.id) in uncounting:
                return None
            limit = min(count(row.max_attempts), limits.get(row.task, count(row.max_attempts)))
            if count(row.attempts) < limit:
                return LEASE_EXPIRED
            failing.add(int(row.id))
            return str(fail_values["last_error"])

        record(conn, mine, {"ids": ids}, error_of)
        cancelled = conn.execute(to_cancelled, {"ids": ids}).rowcount
        uncounted = conn.execute(to_uncounted, {"ids": unrun}).rowcount if unrun else 0
        failed = conn.execute(to_failed, {"ids": sorted(failing)}).rowcount if failing else 0
        pending = int(conn.execute(to_pending, {"ids": ids}).rowcount) + int(uncounted)
        return Rescued(pending, int(failed), int(cancelled), callbacks)

    return store.transaction(work)


def schedule_unscheduled_callbacks(store: Store) -> int:
    """Make due now every finished job's pending callback that has no time: an operator's `UPDATE …
    SET callback_status = 'pending'` of a failed one (whose time is NULL) was never claimed, as a claim
    takes only `callback_next_at <= now`. Served by the callback index; how many were made due."""
    stmt = sa.update(J).where(J.c.callback_status == CALLBACK_PENDING, J.c.callback_next_at.is_(None),
                              J.c.status.in_(TERMINAL_VALUES)).values(callback_next_at=db_now())
    return store.transaction(lambda conn: int(conn.execute(stmt).rowcount))
