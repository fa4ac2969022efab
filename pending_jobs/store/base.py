"""The store: every SQL statement the runner and the CLI need, spoken as verbs.

Dialect subclasses override only what must differ: the claim, the clock arithmetic and inserts that
return ids. Every status change is a guarded UPDATE (`status = 'running' AND lease_token = :token`)
whose row count is returned, so a runner whose lease was taken over can never overwrite an outcome.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc

from .. import db
from ..errors import DatabaseUnavailable
from ..schema import db_now, pending_jobs
from ..states import JobStatus
from .models import Claim, ClaimedJob, Finished, Job

log = logging.getLogger(__name__)
T = TypeVar("T")
S = TypeVar("S")
J = pending_jobs
RUNNING = JobStatus.RUNNING.value
PENDING = JobStatus.PENDING.value

Outcomes = tuple[str, Sequence[tuple[int, Any]], Sequence[tuple[int, float, str]], Sequence[tuple[int, str]]]
"""One claim's outcomes for `finish_many`: (token, succeeded, retried, failed) as `finish` takes them."""

LEASE_EXPIRED = "lease expired while running: the runner was killed or lost the database"

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


def _ids() -> sa.BindParameter[Any]:
    return sa.bindparam("ids", expanding=True)


def due_in(queue: str | sa.BindParameter[str]) -> tuple[sa.ColumnElement[bool], ...]:
    """The claim's WHERE: pending, in this queue, due by the database clock."""
    return (J.c.status == PENDING, J.c.queue == queue, J.c.run_at <= db_now())


def _claim_order() -> tuple[sa.ColumnElement[Any], ...]:
    return (J.c.priority.desc(), J.c.run_at, J.c.id)


class Store:
    """Job verbs on one database; one instance per engine, safe to share between threads."""

    dialect = "base"
    json_accepts_nul = True
    concurrent_writers = True  # False: one writer at a time, so completions are not overlapped with claims

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._statements: dict[tuple[Any, ...], Any] = {}

    def _cached(self, key: tuple[Any, ...], build: Callable[[], S]) -> S:
        """A hot-path statement built once per store, with every varying value a named bindparam.

        Reusing the same object lets SQLAlchemy skip rebuilding it and recomputing its cache key
        (which it memoises on the object), and the compiled form comes straight from the cache.
        """
        stmt = self._statements.get(key)
        if stmt is None:
            stmt = self._statements[key] = build()
        return stmt

    def _id_in(self) -> sa.ColumnElement[bool]:
        """`id` is one of the `ids` parameter's values (PostgreSQL binds one array instead)."""
        return J.c.id.in_(_ids())

    # -- clock ---------------------------------------------------------------------------------

    def after(self, seconds: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """The database clock plus an SQL expression of seconds (float)."""
        raise NotImplementedError

    def _seconds(self, value: float | sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        if isinstance(value, sa.ColumnElement):
            return value
        return sa.literal(float(value), sa.Float)

    # -- transactions --------------------------------------------------------------------------

    def transaction(
        self, work: Callable[[sa.Connection], T], tries: int = 5, settle: Callable[[sa.Connection], T] | None = None
    ) -> T:
        """Run `work` in its own transaction; retry deadlocks and lock-wait timeouts a few times.

        `engine.begin()` rolls the whole transaction back on any error, which MySQL needs after a
        lock-wait timeout (1205 rolls back only the statement, leaving earlier ones in place).
        A dropped connection is retried once on a fresh one, so `work` must be safe to repeat after
        a commit of unknown outcome (every guarded verb is); `settle`, when given, runs first on
        that retry and its truthy answer is taken as the outcome of the lost commit.
        """
        reconnected = False
        for attempt in range(1, tries + 1):
            try:
                with self.engine.begin() as conn:
                    if reconnected and settle is not None:
                        settled = settle(conn)
                        if settled:
                            return settled
                    return work(conn)
            except exc.DBAPIError as error:
                if not reconnected and attempt < tries and db.is_connection_lost(error):
                    # A killed or timed-out connection; if the server is really gone, the reconnect
                    # fails with "cannot connect" and the run stops with DatabaseUnavailable.
                    reconnected = True
                    log.warning("connection lost (%s); retrying once on a fresh connection", _describe(error))
                    continue
                if db.is_unavailable(error):
                    raise DatabaseUnavailable(_describe(error)) from error
                if not db.is_retryable(error) or attempt == tries:
                    raise
                log.warning("retrying after %s (attempt %d of %d)", _describe(error), attempt, tries)
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    def ping(self) -> None:
        """Raise DatabaseUnavailable unless the database answers and accepts writes."""
        self.transaction(lambda conn: conn.execute(sa.select(db_now())).scalar_one())
        self.check_writable()

    def check_writable(self) -> None:
        """Raise DatabaseUnavailable when the database is read-only (nothing may be claimed)."""

    def check_version(self) -> None:
        """Raise ConfigError when the server is too old for SKIP LOCKED."""

    # -- claim ---------------------------------------------------------------------------------

    def due_queues(self) -> list[str]:
        """Queues that have pending jobs, found by a skip scan over the claim index."""
        sql = sa.text(
            "WITH RECURSIVE q(queue) AS ("
            " SELECT MIN(queue) FROM pending_jobs WHERE status = 'pending'"
            " UNION ALL"
            " SELECT (SELECT MIN(p.queue) FROM pending_jobs p WHERE p.status = 'pending' AND p.queue > q.queue)"
            " FROM q WHERE q.queue IS NOT NULL)"
            " SELECT queue FROM q WHERE queue IS NOT NULL"
        )
        return self.transaction(lambda conn: [row[0] for row in conn.execute(sql)])

    def claim(self, queue: str, limit: int, owner: str, lease: float) -> Claim:
        """Lock up to `limit` due jobs of `queue`, mark them running under a new lease, commit."""
        return self._claim("queue", lambda: due_in(sa.bindparam("claim_queue", type_=sa.String)),
                           {"claim_queue": queue}, limit, owner, lease)

    def claim_job(self, job_id: int, owner: str, lease: float) -> Claim:
        """Claim one pending job now, whatever its run_at and queue (`run --job`)."""
        return self._claim("job", lambda: (J.c.status == PENDING, J.c.id == sa.bindparam("claim_id", type_=sa.Integer)),
                           {"claim_id": job_id}, 1, owner, lease)

    def _claim(self, kind: str, where: Callable[[], Sequence[sa.ColumnElement[bool]]], params: dict[str, Any],
               limit: int, owner: str, lease: float) -> Claim:
        """Claim with the cached statement for `kind` and `limit`; `where` builds its WHERE (with bindparams)."""
        token = secrets.token_hex(16)

        def build() -> sa.Update:
            locked = (
                sa.select(J.c.id).where(*where()).order_by(*_claim_order()).limit(limit)
                .with_for_update(skip_locked=True)
            )
            return (
                sa.update(J)
                .where(J.c.id.in_(locked.scalar_subquery()))
                .values(self._claim_values())
                .returning(*CLAIM_COLUMNS)
            )

        stmt = self._cached(("claim", kind, limit), build)
        params = {**params, **self._lease_params(owner, token, lease)}

        def work(conn: sa.Connection) -> list[ClaimedJob]:
            return [ClaimedJob.from_row(row, token) for row in conn.execute(stmt, params)]

        jobs = self.transaction(work, settle=lambda conn: self._claimed_under(conn, token))
        jobs.sort(key=lambda job: (-job.priority, job.id))
        return Claim(token, jobs)

    def _claimed_under(self, conn: sa.Connection, token: str) -> list[ClaimedJob]:
        """Jobs a claim whose commit was lost did mark running (settles the unknown outcome)."""
        stmt = sa.select(*CLAIM_COLUMNS).where(J.c.lease_token == token, J.c.status == RUNNING)
        return [ClaimedJob.from_row(row, token) for row in conn.execute(stmt)]

    def _lease_params(self, owner: str, token: str, lease: float) -> dict[str, Any]:
        """The parameters of `_claim_values`."""
        return {"claim_owner": owner[:128], "claim_token": token, "claim_lease": float(lease)}

    def _claim_values(self) -> dict[str, Any]:
        return {
            "status": RUNNING,
            "attempts": J.c.attempts + 1,
            "lease_owner": sa.bindparam("claim_owner", type_=sa.String),
            "lease_token": sa.bindparam("claim_token", type_=sa.String),
            "lease_expires_at": self.after(sa.bindparam("claim_lease", type_=sa.Float)),
            "started_at": db_now(),
            "updated_at": db_now(),
        }

    # -- finish --------------------------------------------------------------------------------

    def _held(self, token: str) -> tuple[sa.ColumnElement[bool], ...]:
        return (self._id_in(), J.c.status == RUNNING, J.c.lease_token == token)

    def _terminal_values(self, status: JobStatus) -> dict[str, Any]:
        has_callback = sa.and_(J.c.callback_url.is_not(None), J.c.callback_url != "")
        return {
            "status": status.value,
            "finished_at": db_now(),
            "updated_at": db_now(),
            "lease_expires_at": None,
            # The callback becomes due in the same statement that records the outcome.
            "callback_status": sa.case((has_callback, "pending"), else_=sa.null()),
            "callback_next_at": sa.case((has_callback, db_now()), else_=sa.null()),
        }

    def finish(
        self,
        token: str,
        succeeded: Sequence[tuple[int, Any]] = (),
        retried: Sequence[tuple[int, float, str]] = (),
        failed: Sequence[tuple[int, str]] = (),
    ) -> Finished:
        """Record the outcomes of one claim's jobs: one guarded statement per outcome kind.

        Safe to repeat after a commit whose outcome is unknown: rows already finished no longer
        match the guard, so a repeat changes nothing.
        """

        return self.finish_many([(token, succeeded, retried, failed)])[0]

    def finish_many(self, batches: Sequence[Outcomes]) -> list[Finished]:
        """`finish` for several claims (token, succeeded, retried, failed) in one transaction."""
        if not any(succeeded or retried or failed for _, succeeded, retried, failed in batches):
            return [Finished() for _ in batches]  # e.g. only outcomes recorded in the handler's transaction

        def work(conn: sa.Connection) -> list[Finished]:
            return [
                Finished(
                    succeeded=self._succeed(conn, token, succeeded),
                    retried=self._retry(conn, token, retried),
                    failed=self._fail(conn, token, failed),
                )
                for token, succeeded, retried, failed in batches
            ]

        return self.transaction(work)

    def _succeed(self, conn: sa.Connection, token: str, jobs: Sequence[tuple[int, Any]]) -> int:
        if not jobs:
            return 0
        ids = [job_id for job_id, _ in jobs]
        results = {job_id: result for job_id, result in jobs if result is not None}
        if not results:  # the common case: one cached statement whatever the batch
            stmt = self._cached(("succeed",), lambda: sa.update(J).where(
                self._id_in(), J.c.status == RUNNING, J.c.lease_token == sa.bindparam("held_token", type_=sa.String)
            ).values(self._terminal_values(JobStatus.SUCCEEDED)))
            return int(conn.execute(stmt, {"ids": ids, "held_token": token}).rowcount)
        values = self._terminal_values(JobStatus.SUCCEEDED)
        values["result"] = sa.case(
            {job_id: sa.bindparam(None, result, type_=J.c.result.type) for job_id, result in results.items()},
            value=J.c.id,
            else_=sa.null(),
        )
        stmt = sa.update(J).where(*self._held(token)).values(values)
        return int(conn.execute(stmt, {"ids": ids}).rowcount)

    def _retry(self, conn: sa.Connection, token: str, jobs: Sequence[tuple[int, float, str]]) -> int:
        if not jobs:
            return 0
        ids = {"ids": [job_id for job_id, _, _ in jobs]}
        errors = sa.case({job_id: error for job_id, _, error in jobs}, value=J.c.id)
        # The handler of a job an operator cancelled gave up: the job ends cancelled, not pending.
        cancel_values = self._terminal_values(JobStatus.CANCELLED)
        cancel_values["last_error"] = errors
        conn.execute(sa.update(J).where(*self._held(token), J.c.cancel_requested == sa.true())
                     .values(cancel_values), ids)
        delays = sa.case({job_id: float(delay) for job_id, delay, _ in jobs}, value=J.c.id)
        stmt = (
            sa.update(J)
            .where(*self._held(token))
            .values(
                status=PENDING,
                run_at=self.after(sa.cast(delays, sa.Float)),
                last_error=errors,
                lease_expires_at=None,
                updated_at=db_now(),
            )
        )
        return int(conn.execute(stmt, ids).rowcount)

    def _fail(self, conn: sa.Connection, token: str, jobs: Sequence[tuple[int, str]]) -> int:
        if not jobs:
            return 0
        values = self._terminal_values(JobStatus.FAILED)
        values["last_error"] = sa.case({job_id: error for job_id, error in jobs}, value=J.c.id)
        stmt = sa.update(J).where(*self._held(token)).values(values)
        return int(conn.execute(stmt, {"ids": [job_id for job_id, _ in jobs]}).rowcount)

    def succeed_in(self, conn: sa.Connection, job: ClaimedJob, result: Any) -> bool:
        """Mark one job succeeded inside the handler's own transaction (`ctx.connection`)."""
        values = self._terminal_values(JobStatus.SUCCEEDED)
        values["result"] = sa.bindparam(None, result, type_=J.c.result.type) if result is not None else sa.null()
        stmt = sa.update(J).where(*self._held(job.token)).values(values)
        return conn.execute(stmt, {"ids": [job.id]}).rowcount == 1

    def commit_success(self, conn: sa.Connection, job: ClaimedJob, result: Any) -> tuple[str, str]:
        """Record success in the handler's transaction and commit it with the handler's writes.

        Returns ("recorded", ""), ("stale", "") when the lease was taken over (all rolled back), or
        ("error", reason). A commit that fails midway may still have happened: the row, read back by
        its token, settles it.
        """
        try:
            with conn:
                if not self.succeed_in(conn, job, result):
                    conn.rollback()
                    return "stale", ""
                conn.commit()
            return "recorded", ""
        except exc.DBAPIError as error:
            try:
                status = self.outcome_of(job)
            except DatabaseUnavailable:
                status = None
            return ("recorded", "") if status == JobStatus.SUCCEEDED.value else ("error", _describe(error))

    def outcome_of(self, job: ClaimedJob) -> str | None:
        """The status of a job as last written under `job.token` (settles a commit of unknown outcome)."""
        stmt = sa.select(J.c.status).where(J.c.id == job.id, J.c.lease_token == job.token)
        return self.transaction(lambda conn: conn.execute(stmt).scalar_one_or_none())

    def release(self, token: str, ids: Sequence[int]) -> int:
        """Put claimed jobs that never started back to pending, without counting the attempt."""
        if not ids:
            return 0
        stmt = (
            sa.update(J)
            .where(*self._held(token))
            .values(
                status=PENDING,
                attempts=J.c.attempts - 1,
                lease_expires_at=None,
                started_at=None,
                updated_at=db_now(),
            )
        )
        return self.transaction(lambda conn: int(conn.execute(stmt, {"ids": list(ids)}).rowcount))

    def heartbeat(self, held: Sequence[tuple[int, str]], lease: float) -> int:
        """Extend the lease of these (job id, token) pairs that are still running.

        By primary key: a scan of the `running` range would lock other runners' rows on MySQL.
        """
        if not held:
            return 0
        stmt = (
            sa.update(J)
            .where(J.c.id.in_(_ids()), J.c.lease_token.in_(sa.bindparam("tokens", expanding=True)),
                   J.c.status == RUNNING)
            .values(lease_expires_at=self.after(self._seconds(lease)))
        )
        params = {"ids": [job_id for job_id, _ in held], "tokens": sorted({token for _, token in held})}
        return self.transaction(lambda conn: int(conn.execute(stmt, params).rowcount))

    def rescue_expired(self) -> tuple[int, int]:
        """Jobs whose lease expired: back to pending, failed when attempts are spent, or cancelled
        when an operator asked for that. Returns (back to pending, ended)."""
        expired = (J.c.status == RUNNING, J.c.lease_expires_at < db_now())
        # A plain (non-locking) read first: an UPDATE that scanned the `running` range would lock
        # the index entries of other runners' in-flight jobs and deadlock with their handlers.
        find = sa.select(J.c.id).where(*expired)
        ids = self.transaction(lambda conn: [int(row[0]) for row in conn.execute(find)])
        if not ids:
            return 0, 0
        mine = (J.c.id.in_(_ids()), *expired)
        spent = J.c.attempts >= J.c.max_attempts
        cancel_values = self._terminal_values(JobStatus.CANCELLED)
        cancel_values["last_error"] = LEASE_EXPIRED + "; cancelled by an operator"
        to_cancelled = sa.update(J).where(*mine, J.c.cancel_requested == sa.true()).values(cancel_values)
        fail_values = self._terminal_values(JobStatus.FAILED)
        fail_values["last_error"] = LEASE_EXPIRED + "; no attempts left"
        to_failed = sa.update(J).where(*mine, spent).values(fail_values)
        to_pending = sa.update(J).where(*mine).values(
            status=PENDING, run_at=db_now(), last_error=LEASE_EXPIRED, lease_expires_at=None, updated_at=db_now()
        )

        def work(conn: sa.Connection) -> tuple[int, int]:
            ended = conn.execute(to_cancelled, {"ids": ids}).rowcount + conn.execute(to_failed, {"ids": ids}).rowcount
            return int(conn.execute(to_pending, {"ids": ids}).rowcount), int(ended)

        return self.transaction(work)

    # -- reading -------------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        """One whole row, or None."""
        stmt = sa.select(J).where(J.c.id == job_id)
        row = self.transaction(lambda conn: conn.execute(stmt).mappings().first())
        return Job.from_row(row) if row is not None else None

    def counts(self) -> list[tuple[str, str, int]]:
        """(queue, status, count) for every pair present."""
        stmt = (
            sa.select(J.c.queue, J.c.status, sa.func.count())
            .group_by(J.c.queue, J.c.status)
            .order_by(J.c.queue, J.c.status)
        )
        return self.transaction(lambda conn: [(q, s, int(n)) for q, s, n in conn.execute(stmt)])

    def oldest_due_age(self) -> float | None:
        """Seconds the oldest due pending job has waited, by the database clock; None when none is due."""
        oldest = (
            sa.select(sa.func.min(J.c.run_at)).where(J.c.status == PENDING, J.c.run_at <= db_now()).scalar_subquery()
        )
        stmt = sa.select(db_now().label("now"), oldest.label("oldest"))

        def work(conn: sa.Connection) -> float | None:
            row = conn.execute(stmt).one()
            if row.oldest is None:
                return None
            return max(0.0, float((_as_datetime(row.now) - _as_datetime(row.oldest)).total_seconds()))

        return self.transaction(work)

    def expired_leases(self) -> list[Job]:
        """Running jobs whose lease has expired (their runner died; the next run rescues them)."""
        stmt = sa.select(J).where(J.c.status == RUNNING, J.c.lease_expires_at < db_now()).order_by(J.c.id)
        return self.transaction(lambda conn: [Job.from_row(row) for row in conn.execute(stmt).mappings()])


def _as_datetime(value: Any) -> Any:
    """SQLite returns the clock expression as text; the others return datetimes."""
    import datetime as dt

    from .models import utc

    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return utc(value)


def _describe(error: BaseException) -> str:
    """A short, single-line description of a database error, without SQL or parameters."""
    orig = getattr(error, "orig", None) or error
    text = " ".join(str(orig).split())
    return f"{type(orig).__name__}: {text[:300]}"
