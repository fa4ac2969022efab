"""Several jobs' handlers in one transaction, committed with all their `succeeded` at once.

A declared sql task's handler on the job database commits its writes with its job's `succeeded`
(handler.py): one COMMIT, a log flush, per job. Jobs of one claim can share that transaction instead:
each job's work runs on one connection, then one UPDATE guarded by the claim's lease token marks them
all succeeded with their results, and one COMMIT makes the writes and the outcomes durable together.
Exactly once still: the guard must match every job, or nothing is kept.

All or nothing. The jobs' work is asked for all of them at once first (a task may send their
statements together: store/direct.py); when that raises, everything is rolled back and they are worked
one at a time in a new transaction. When a job's work raises there, everything is rolled back again and
the caller learns which job (`culprit`), so the others can share a transaction again without it and
it can run alone, where its error becomes its own verdict. When the guard matches fewer jobs than were
run (a lease was taken over) or the UPDATE or the COMMIT fails (in the database, or on a result the
driver cannot bind), everything is rolled back too and each job runs alone, its own guarded
transaction deciding. No savepoints: a SAVEPOINT and its RELEASE per job cost two round trips each,
more than the job's own statement, and a failing job is rare.

A group stops between its jobs when the run stops (a signal): `work` then returns the results of the
jobs it ran, the first ones, and stops before the others. Those it ran are committed with their
`succeeded`, as ever; the others were never run, nothing of theirs is written (`Together.unstarted`),
and the caller puts them back. A group therefore never holds a stopping run for longer than its
current job, however many jobs it has.

Claimed by the transaction that runs them (`claim_together`): where a queue's due jobs all share a
transaction, the claim need not mark them `running` and commit first. One transaction locks them (SELECT …
FOR UPDATE SKIP LOCKED, leaving them `pending`), runs them, and changes each row once, from `pending` to
`succeeded`, counting the attempt: one UPDATE and one COMMIT a batch fewer, and on PostgreSQL one row version
(an entry in every index) a job fewer. The row locks fence them instead of a lease: no other runner can
claim, cancel or change a locked row, and a runner that dies takes its transaction, and every write, with it.
Anything unusual (a row or payload with a problem, a statement that raises, a row count that does not add
up, a failed COMMIT) rolls it all back: the jobs stay `pending`, their attempt uncounted, for the plain
claim and `run_together` above, which give each its own verdict.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import exc

from .. import db
from ..errors import ConfigError, DatabaseUnavailable
from ..models import ClaimedJob, Together
from ..schema import db_now
from ..schema import pending_jobs as J
from ..states import JobStatus
from ..validation import describe_exception
from .columns import CLAIM_COLUMNS, claim_order, due_in_queue

if TYPE_CHECKING:
    from .base import Store

log = logging.getLogger(__name__)

Work = Callable[[sa.Connection, Sequence[ClaimedJob]], Sequence[Any]]
"""`work(conn, jobs) -> results`: the jobs' handlers on `conn`, one result per job, in order; fewer when it
stopped (the run stops): the results of the first jobs, the others not run."""


def run_together(store: Store, jobs: Sequence[ClaimedJob], work: Work) -> Together:
    """`work(conn, jobs)` in one transaction (its results, one per job, in order), then all of them
    `succeeded` with those results, guarded by their lease token, and one COMMIT. When `work` raises for
    several jobs, everything is rolled back and they are worked again one at a time, to find the one that
    raises. When `work` stops early, only the jobs it ran are marked and committed (see the module). Never
    raises for a database error."""
    if not jobs:
        return Together(True)
    token = jobs[0].token
    if any(job.token != token for job in jobs):
        raise ValueError("jobs run together must come from one claim (one lease token)")
    try:
        conn = store.engine.connect()
    except exc.DBAPIError as error:
        return Together(False, reason=db.describe(error))
    with conn:
        done = _all_at_once(conn, jobs, work) if len(jobs) > 1 else None
        if done is None:
            if conn.invalidated:
                return Together(False, reason="the connection was lost")
            one_by_one = _one_at_a_time(conn, jobs, work)
            if isinstance(one_by_one, Together):
                return one_by_one
            done = one_by_one
        unstarted = len(jobs) - len(done)
        if not done:  # stopped before its first job: nothing to keep
            _rollback(conn)
            return Together(True, unstarted=unstarted)
        try:
            marked = store.succeed_all(conn, token, done)
            if marked != len(done):
                conn.rollback()
                return Together(False, reason=f"{len(done) - marked} of {len(done)} leases were taken over")
            conn.commit()
        except Exception as error:  # the database's, or a result its driver cannot bind: each job runs alone
            _rollback(conn)
            return _settle(store, jobs[0], db.describe(error), unstarted)
    return Together(True, unstarted=unstarted)


def claim_together(store: Store, queue: str, tasks: Sequence[str], limit: int, owner: str,
                   work: Work) -> tuple[list[ClaimedJob], Together]:
    """Lock up to `limit` due jobs of `queue` whose task is one of `tasks`, run `work(conn, jobs)` and mark the
    jobs it ran `succeeded` (their attempt counted, `owner` and a new token on them) in that one transaction
    (see the module). Returns the jobs locked, and `Together`: recorded, the first `len(jobs) - unstarted` of
    them committed succeeded (the rest, never run, stay pending); or not, nothing written, `reason` why.
    Never raises for a database error or for `work`'s."""
    token = secrets.token_hex(16)
    params = {"claim_queue": queue, "claim_tasks": list(tasks)}
    stmt = store.sql.cached(("together", limit), lambda: sa.select(*CLAIM_COLUMNS, db_now().label("claimed_at")).where(
        *due_in_queue(), J.c.task.in_(sa.bindparam("claim_tasks", expanding=True))).order_by(*claim_order()).limit(
        limit).with_for_update(skip_locked=True))
    try:
        conn = store.engine.connect()
    except exc.DBAPIError as error:
        return [], Together(False, reason=db.describe(error))
    with conn:
        conn.begin()
        try:
            rows = conn.execute(stmt, params).all()
        except exc.DBAPIError as error:  # text that is not UTF-8 (MySQL), a deadlock: the plain claim's to settle
            _rollback(conn)
            return [], Together(False, reason=db.describe(error))
        # Read before the UPDATE that counts it: the job's attempt is one more than the row says.
        jobs = [ClaimedJob.from_row(row[:-1], token, attempted=1) for row in rows]
        if not jobs:
            _rollback(conn)
            return [], Together(True)
        claimed_at, started = rows[0].claimed_at, time.monotonic()
        try:
            results = work(conn, jobs)
            if len(results) > len(jobs):
                raise RuntimeError(f"{len(results)} results for {len(jobs)} jobs")
        except Exception as error:  # the handler's or the database's
            _rollback(conn)
            return jobs, Together(False, reason=describe_exception(error, 300).splitlines()[0])
        done = list(zip((job.id for job in jobs), results, strict=False))
        unstarted = len(jobs) - len(done)
        if not done:  # stopped before its first job
            _rollback(conn)
            return jobs, Together(True, unstarted=unstarted)
        try:
            marked = store.succeed_locked(conn, token, owner[:128], claimed_at, done)
            if marked != len(done):
                _rollback(conn)
                return jobs, Together(False, reason=f"{len(done) - marked} of {len(done)} locked jobs were not pending")
            conn.commit()
        except Exception as error:  # the database's, or a result its driver cannot bind
            _rollback(conn)
            settled = _settle(store, jobs[0], db.describe(error), unstarted)
            return jobs, settled
        log.debug("%d job(s) of queue %s claimed and run in one transaction in %.3fs", len(done), queue,
                  time.monotonic() - started)
    return jobs, Together(True, unstarted=unstarted)


def _all_at_once(conn: sa.Connection, jobs: Sequence[ClaimedJob], work: Work) -> list[tuple[int, Any]] | None:
    """(job id, result) of every job `work` ran (all, unless it stopped) from one call of it, in a new
    transaction; None when it raised (rolled back: which job it was is unknown)."""
    conn.begin()
    try:
        results = work(conn, jobs)
        if len(results) > len(jobs):
            raise RuntimeError(f"{len(results)} results for {len(jobs)} jobs")
        return list(zip((job.id for job in jobs), results, strict=False))
    except Exception as error:  # the handler's or the database's
        _rollback(conn)
        log.debug("a shared transaction's jobs run one at a time: %s", error)
        return None


def _one_at_a_time(conn: sa.Connection, jobs: Sequence[ClaimedJob], work: Work) -> list[tuple[int, Any]] | Together:
    """(job id, result) of each job from its own call of `work`, in a new transaction, up to the first that it
    did not run (it stopped); else rolled back and the job that raised, as the culprit."""
    conn.begin()
    done: list[tuple[int, Any]] = []
    for index, job in enumerate(jobs):
        try:
            results = work(conn, [job])
            if len(results) > 1:
                raise RuntimeError(f"{len(results)} results for one job")
        except Exception as error:  # the handler's or the database's: that job runs alone
            _rollback(conn)
            return Together(False, index, describe_exception(error, 300).splitlines()[0])
        if not results:  # stopped: this job and the next ones were not run
            break
        done.append((job.id, results[0]))
    return done


def _settle(store: Store, job: ClaimedJob, reason: str, unstarted: int) -> Together:
    """A COMMIT that failed midway may still have happened; one job's row (the first's: always one it ran),
    read back by its token, says for all of them (one transaction). Unsettled, each job runs alone: its
    guard then finds its row already succeeded, and its writes are rolled back with that."""
    try:
        recorded = store.outcome_of(job) == JobStatus.SUCCEEDED.value
    except (DatabaseUnavailable, ConfigError, exc.DBAPIError):
        recorded = False
    return Together(recorded, reason=reason, unstarted=unstarted if recorded else 0)


def _rollback(conn: sa.Connection) -> None:
    """Roll back; a connection that is gone has nothing left to roll back (the server does it)."""
    try:
        conn.rollback()
    except Exception as error:
        log.debug("rolling back a shared transaction failed: %s", error)
        try:
            conn.invalidate()
        except Exception:
            log.debug("invalidating its connection failed too", exc_info=True)
