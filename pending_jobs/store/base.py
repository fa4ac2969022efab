"""The store: every SQL statement the runner needs, spoken as verbs, on any of the three databases.

The verbs are written once; what differs between databases is asked of the dialect (`self.sql`, see
dialect.py). Every status change is a guarded UPDATE (`status = 'running' AND lease_token = :token`)
whose row count is returned, so a runner whose lease was taken over can never overwrite an outcome.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from operator import attrgetter
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc

from ..errors import ConfigError, DatabaseUnavailable
from ..models import Claim, ClaimedJob, Completion, Finished, Job, Rescued, Together
from ..schema import db_now
from ..schema import pending_jobs as J
from ..states import JOB_PENDING, JOB_RUNNING, JobStatus
from . import columns, putback, transactions
from .columns import CLAIM_COLUMNS, JOB_COLUMNS, claim_order, one_more
from .dialect import Dialect
from .due import due_priorities
from .handler import HandlerSession
from .hang import HangWatch
from .history import record
from .rescue import rescue_expired
from .shared import claim_together, run_together

log = logging.getLogger(__name__)
T = TypeVar("T")
Where = Callable[[], Sequence[sa.ColumnElement[bool]]]  # a claim's WHERE, built only with its statement


class Store:
    """Job verbs on one database; one instance per engine, safe to share between threads."""

    def __init__(self, engine: sa.Engine, sql: Dialect) -> None:
        self.engine = engine
        self.sql = sql
        """The dialect: every SQL difference between databases (callbacks.py and ops.py use it too)."""
        self._caught_up: set[str] = set()  # queues whose last claim was short or bounded: dive first (due.py)
        self.watch: HangWatch | None = None  # set by a run where reads have no bound of their own (hang.py)

    @property
    def dialect(self) -> str:
        """'mysql' (MariaDB too), 'postgresql' or 'sqlite'."""
        return self.sql.name

    @property
    def concurrent_writers(self) -> bool:
        """Whether a second transaction may write while another does (not on SQLite)."""
        return self.sql.concurrent_writers

    @property
    def json_accepts_nul(self) -> bool:
        """Whether a JSON result may hold `\\u0000` (not in PostgreSQL's jsonb)."""
        return self.sql.json_accepts_nul

    # -- transactions --------------------------------------------------------------------------

    def transaction(
        self, work: Callable[[sa.Connection], T], tries: int = 5, settle: Callable[[sa.Connection], T] | None = None
    ) -> T:
        """Run `work` in its own transaction; retry deadlocks and lock-wait timeouts a few times.

        `engine.begin()` rolls the whole transaction back on any error, which MySQL needs after a
        lock-wait timeout (1205 rolls back only the statement, leaving earlier ones in place).
        A dropped connection is retried once on a fresh one, so `work` must be safe to repeat after
        a commit of unknown outcome (every guarded verb is); `settle`, when given, runs first on
        that retry and its truthy answer is taken as the outcome of the lost commit. So is an error
        no rule explains, on a fresh connection: the pooled one's session may be the cause
        (transactions.py).
        """
        return transactions.run(self.engine, self.sql, work, tries, settle, self.watch)

    def ping(self) -> None:
        """Raise DatabaseUnavailable unless the database answers and accepts writes."""
        self.transaction(lambda conn: conn.execute(sa.select(db_now())).scalar_one())
        self.check_writable()

    def check_writable(self) -> None:
        """Raise DatabaseUnavailable when the database is read-only (nothing may be claimed)."""
        reason = self.transaction(self.sql.read_only)
        if reason:
            raise DatabaseUnavailable(reason)

    def check_version(self) -> None:
        """Raise ConfigError when the server is too old for SKIP LOCKED."""
        problem = self.transaction(self.sql.version_problem)
        if problem:
            raise ConfigError(problem)

    # -- claim ---------------------------------------------------------------------------------

    def due_queues(self) -> list[str]:
        """Queues that have pending jobs (the runner takes them round robin)."""
        return self.transaction(self.sql.due_queues)

    def claim(self, queue: str, limit: int, owner: str, lease: float) -> Claim:
        """Lock up to `limit` due jobs of `queue`, mark them running under a new lease, commit. After a claim
        of the queue came back short, index dives first say whether, and at which priority, to (due.py)."""
        params: dict[str, Any] = {"claim_queue": queue}
        if (where := self.due_where(queue, params)) is None:
            return Claim(secrets.token_hex(16), [])
        return self.caught_up(queue, self._claim(("claim", *where[0]), where[1], params, limit, owner, lease), limit,
                              params)

    def due_where(self, queue: str, params: dict[str, Any]) -> tuple[tuple[str, ...], Where] | None:
        """(cache key suffix, WHERE) of the next claim of `queue`, adding what it binds to `params`; None when
        the queue has caught up and the dives find no due job (no claim to make)."""
        if queue not in self._caught_up:
            return (), columns.due_in_queue
        due = self.transaction(lambda conn: due_priorities(conn, self.sql, queue))
        if due == []:
            return None
        if due is not None and len(due) == 1:
            params["claim_priority"] = due[0]
            return ("at",), columns.due_at_priority
        return (), columns.due_in_queue

    def caught_up(self, queue: str, claim: Claim, limit: int, params: dict[str, Any]) -> Claim:
        """Note whether `queue` has caught up after `claim`; returns it."""
        # Caught up while claims come back short, and while the dives bound them: a burst at one priority
        # then costs a few dives a claim, and its end no read through the jobs scheduled for later.
        if len(claim.jobs) < limit or "claim_priority" in params:
            self._caught_up.add(queue)
        else:
            self._caught_up.discard(queue)
        return claim

    def claim_job(self, job_id: int, owner: str, lease: float) -> Claim:
        """Claim one pending job now, whatever its run_at and queue (`run --job`)."""
        return self._claim(("claim_job",), columns.pending_by_id, {"claim_id": job_id}, 1, owner, lease)

    def _claim(self, key: tuple[Any, ...], where: Where,
               params: dict[str, Any], limit: int, owner: str, lease: float,
               cap: Callable[[sa.Connection], dict[str, Any] | None] | None = None) -> Claim:
        """Claim with the statements cached under `key` + the batch size; `where()` builds their WHERE
        (bindparams only), called only when a statement is built: building SQL expressions costs more than
        the rest of a claim's Python (≈ 1-3 µs per claimed job at a batch of 100). With `cap` (a queue cap:
        LimitedStore), which locks its row first (None: claim nothing), at most the room it leaves."""
        token = secrets.token_hex(16)
        params = {**params, "claim_owner": owner[:128], "claim_token": token, "claim_lease": float(lease)}

        def select_of(size: int) -> Callable[[Sequence[sa.ColumnElement[Any]]], sa.Select[Any]]:
            return lambda cols: sa.select(*cols).where(*where()).order_by(*claim_order()).limit(
                size if cap is None else self.sql.room_limit(size, columns.cap_room()))

        def work(conn: sa.Connection) -> list[ClaimedJob]:
            if (bound := {} if cap is None else cap(conn)) is None:
                return []
            locked = self.sql.lock_mark_return(conn, (*key, limit), select_of(limit), self._claim_values, CLAIM_COLUMNS,
                                               {**params, **bound}, lambda: (J.c.status == JOB_PENDING,),
                                               cap and columns.cap_room)
            if locked.marked != len(locked.rows):
                # The locking read returned a row that was no longer pending: hand out only what this
                # token marked, never a job another runner holds.
                log.warning("claim: %d of %d locked rows were no longer pending",
                            len(locked.rows) - locked.marked, len(locked.rows))
                return self._claimed_under(conn, token)
            # Read before the UPDATE (MySQL), the rows lack the attempt it counted.
            attempted = 0 if locked.after_mark else 1
            return [ClaimedJob.from_row(row, token, attempted) for row in locked.rows]

        settle = functools.partial(self._claimed_under, token=token)
        try:
            jobs = self.transaction(work, settle=settle)
        except exc.DBAPIError as error:
            if not self.sql.undecodable(error):
                raise
            failed = self.transaction(lambda conn: self.sql.quarantine(conn, select_of(limit), params))
            log.warning("claim: failed %d job(s) whose rows hold text that is not valid UTF-8", failed)
            jobs = self.transaction(work, settle=settle)
        # Higher priority first, then id: two stable sorts on C-level keys cost a third of one on a tuple.
        jobs.sort(key=attrgetter("id"))
        jobs.sort(key=attrgetter("priority"), reverse=True)
        return Claim(token, jobs)

    def _claimed_under(self, conn: sa.Connection, token: str) -> list[ClaimedJob]:
        """Jobs a claim whose commit was lost did mark running (settles the unknown outcome)."""
        stmt = sa.select(*CLAIM_COLUMNS).where(J.c.lease_token == token, J.c.status == JOB_RUNNING)
        return [ClaimedJob.from_row(row, token) for row in conn.execute(stmt)]

    def _claim_values(self) -> dict[str, Any]:
        return {
            "status": JOB_RUNNING,
            "attempts": one_more(J.c.attempts),
            "lease_owner": sa.bindparam("claim_owner", type_=sa.String),
            "lease_token": sa.bindparam("claim_token", type_=sa.String),
            "lease_expires_at": self.sql.after(sa.bindparam("claim_lease", type_=sa.Float)),
            "started_at": db_now(),
            "updated_at": db_now(),
        }

    # -- finish --------------------------------------------------------------------------------

    def held(self, token: sa.ColumnElement[Any] | str) -> tuple[sa.ColumnElement[bool], ...]:
        """Rows this lease still holds: the guard of every change a runner makes to its jobs."""
        return (self.sql.id_in(), columns.running_by_id(), J.c.lease_token == token)

    def terminal_values(self, status: JobStatus) -> dict[str, Any]:
        """The SET of a change to a terminal status; the job's callback becomes due in the same statement."""
        has_callback = sa.and_(J.c.callback_url.is_not(None), J.c.callback_url != "")
        return {
            "status": status.value,
            "finished_at": db_now(),
            "updated_at": db_now(),
            "lease_expires_at": None,
            "callback_status": sa.case((has_callback, "pending"), else_=sa.null()),
            "callback_next_at": sa.case((has_callback, db_now()), else_=sa.null()),
        }

    def finish_many(self, completions: Sequence[Completion]) -> list[Finished]:
        """Record the outcomes of several claims in one transaction: one guarded statement per outcome
        kind per claim. Safe to repeat after a commit whose outcome is unknown: rows already finished
        no longer match the guard, so a repeat changes nothing."""
        if all(completion.empty for completion in completions):
            return [Finished() for _ in completions]  # e.g. only outcomes recorded in the handler's transaction

        def work(conn: sa.Connection) -> list[Finished]:
            finished = []
            for c in completions:
                retried, cancelled_retries = self._retry(conn, c.token, c.retried)
                failed, cancelled_failures = self._fail(conn, c.token, c.failed)
                held, cancelled_held = putback.hold(self, conn, c.token, c.held)
                finished.append(Finished(self._succeed(conn, c.token, c.succeeded), retried, failed,
                                         cancelled_retries + cancelled_failures + cancelled_held, held))
            return finished

        return self.transaction(work)

    def _succeed(self, conn: sa.Connection, token: str, jobs: Sequence[tuple[int, Any]],
                 locked: dict[str, Any] | None = None) -> int:
        """Mark (job id, result) pairs succeeded: running under `token`, or pending and locked (`locked`'s binds)."""
        if not jobs:
            return 0
        params: dict[str, Any] = {"ids": [job_id for job_id, _ in jobs], "held_token": token, **(locked or {})}
        ordered = locked is not None
        kind = ("succeed", "locked") if ordered else ("succeed",)
        results = {job_id: result for job_id, result in jobs if result is not None}
        if not results:  # the common case: one cached statement whatever the batch
            stmt = self.sql.cached(kind, lambda: self._succeed_with_results(None, ordered))
            return int(conn.execute(stmt, params).rowcount)
        # One statement per number of results, built and compiled once (a CASE of new bindparams built per call
        # cost ≈ 0.3 ms of CPU per job of a shared transaction); one every job shares (a row count) bound once.
        first = repr(next(iter(results.values())))  # repr: 1, 1.0 and True are equal in Python, not in JSON
        if len(results) == len(jobs) and all(repr(result) == first for result in results.values()):
            stmt = self.sql.cached((*kind, "same"), lambda: self._succeed_with_results(0, ordered))
            return int(conn.execute(stmt, {**params, "result": jobs[0][1]}).rowcount)
        stmt = self.sql.cached((*kind, size := len(results)), lambda: self._succeed_with_results(size, ordered))
        for number, (job_id, result) in enumerate(results.items()):
            params[f"result_id_{number}"] = job_id
            params[f"result_{number}"] = result
        return int(conn.execute(stmt, params).rowcount)

    def _succeed_with_results(self, size: int | None, locked: bool) -> sa.Update:
        """The UPDATE to succeeded: no result (None), one all share (0), or `size` of them by id."""
        values = self.terminal_values(JobStatus.SUCCEEDED)
        if size is not None:
            by_id = [(sa.bindparam(f"result_id_{n}", type_=J.c.id.type),
                      sa.bindparam(f"result_{n}", type_=J.c.result.type)) for n in range(size)]
            values["result"] = sa.case(*by_id, value=J.c.id, else_=sa.null()) if size else sa.bindparam(
                "result", type_=J.c.result.type)
        token = sa.bindparam("held_token", type_=sa.String)
        if not locked:
            return sa.update(J).where(*self.held(token)).values(values)
        values.update(columns.ordered(token))
        return sa.update(J).where(self.sql.id_in(), columns.pending_by_ids()).values(values)

    def _cancel_instead(self, conn: sa.Connection, token: str, errors: dict[int, str]) -> int:
        """The handler of a job an operator asked to cancel gave up: it ends cancelled, not retried or failed."""
        values = self.terminal_values(JobStatus.CANCELLED)
        values["last_error"] = sa.case(errors, value=J.c.id)
        stmt = sa.update(J).where(*self.held(token), J.c.cancel_requested == sa.true()).values(values)
        return int(conn.execute(stmt, {"ids": list(errors)}).rowcount)

    def _retry(self, conn: sa.Connection, token: str, jobs: Sequence[tuple[int, float, str]]) -> tuple[int, int]:
        if not jobs:
            return 0, 0
        errors = {job_id: error for job_id, _, error in jobs}
        record(conn, self.held(token), {"ids": list(errors)}, lambda row: errors.get(int(row.id)))
        cancelled = self._cancel_instead(conn, token, errors)
        delays = sa.case({job_id: float(delay) for job_id, delay, _ in jobs}, value=J.c.id)
        stmt = sa.update(J).where(*self.held(token)).values(
            status=JOB_PENDING, run_at=self.sql.after(sa.cast(delays, sa.Float)),
            last_error=sa.case(errors, value=J.c.id), lease_expires_at=None, updated_at=db_now())
        return int(conn.execute(stmt, {"ids": list(errors)}).rowcount), cancelled

    def _fail(self, conn: sa.Connection, token: str, jobs: Sequence[tuple[int, str]]) -> tuple[int, int]:
        if not jobs:
            return 0, 0
        errors = dict(jobs)
        record(conn, self.held(token), {"ids": list(errors)}, lambda row: errors.get(int(row.id)))
        cancelled = self._cancel_instead(conn, token, errors)
        values = self.terminal_values(JobStatus.FAILED)
        values["last_error"] = sa.case(errors, value=J.c.id)
        stmt = sa.update(J).where(*self.held(token)).values(values)
        return int(conn.execute(stmt, {"ids": list(errors)}).rowcount), cancelled

    def succeed_all(self, conn: sa.Connection, token: str, jobs: Sequence[tuple[int, Any]]) -> int:
        """Mark (job id, result) pairs succeeded in the caller's transaction; how many the lease still held."""
        return self._succeed(conn, token, jobs)

    def succeed_locked(self, conn: sa.Connection, token: str, owner: str, claimed_at: Any,
                       jobs: Sequence[tuple[int, Any]]) -> int:
        """Mark pending rows this transaction locked succeeded, claimed at `claimed_at`; how many were still pending."""
        return self._succeed(conn, token, jobs, {"claim_owner": owner, "claimed_at": claimed_at})

    def claims_together(self, queue: str) -> bool:
        """Whether jobs of `queue` may be claimed by the transaction that runs them: not on SQLite (one writer)."""
        return self.concurrent_writers

    def claim_together(self, queue: str, tasks: Sequence[str], limit: int, owner: str,
                       work: Callable[[sa.Connection, Sequence[ClaimedJob]], Sequence[Any]]
                       ) -> tuple[list[ClaimedJob], Together]:
        """Due jobs of `queue` and `tasks` locked, run and marked succeeded in one transaction; see shared.py."""
        return claim_together(self, queue, tasks, limit, owner, work)

    def run_together(self, jobs: Sequence[ClaimedJob],
                     work: Callable[[sa.Connection, Sequence[ClaimedJob]], Sequence[Any]]) -> Together:
        """Jobs of one claim in one transaction, committed with all their `succeeded`; see shared.py."""
        return run_together(self, jobs, work)

    def handler_transaction(self, job: ClaimedJob) -> HandlerSession:
        """The handler's own transaction (`ctx.connection`), opened on first use; see handler.py."""
        return HandlerSession(self, job)

    def succeed_in(self, conn: sa.Connection, job: ClaimedJob, result: Any) -> bool:
        """Mark one job succeeded inside the handler's own transaction; False when its lease is gone."""
        values = self.terminal_values(JobStatus.SUCCEEDED)
        values["result"] = sa.bindparam(None, result, type_=J.c.result.type) if result is not None else sa.null()
        stmt = sa.update(J).where(*self.held(job.token)).values(values)
        return conn.execute(stmt, {"ids": [job.id]}).rowcount == 1

    def outcome_of(self, job: ClaimedJob) -> str | None:
        """The status of a job as last written under `job.token` (settles a commit of unknown outcome)."""
        stmt = sa.select(J.c.status).where(J.c.id == job.id, J.c.lease_token == job.token)
        return self.transaction(lambda conn: conn.execute(stmt).scalar_one_or_none())

    def cancel_requested(self, bind: sa.Engine | sa.Connection, job_id: int) -> bool:
        """Whether an operator asked to cancel this job (what `ctx.cancel_requested()` reads)."""
        stmt = sa.select(J.c.cancel_requested).where(J.c.id == job_id)
        if isinstance(bind, sa.Connection):
            return bool(bind.execute(stmt).scalar_one_or_none())
        with bind.connect() as conn:
            return bool(conn.execute(stmt).scalar_one_or_none())

    def cancels_asked(self, ids: Sequence[int]) -> set[int]:
        """Those of these jobs an operator asked to cancel: the producer's look at jobs waiting for a worker."""
        stmt = sa.select(J.c.id).where(self.sql.id_in(), J.c.cancel_requested == sa.true())
        return self.transaction(lambda conn: set(map(int, conn.execute(stmt, {"ids": list(ids)}).scalars())))

    def release(self, token: str, ids: Sequence[int]) -> tuple[int, int]:
        """Put claimed jobs that never started back to pending, without counting the attempt (putback.py)."""
        return putback.release(self, token, ids)

    def heartbeat(self, held: Sequence[tuple[int, str]], lease: float) -> int:
        """Extend the lease of these (job id, token) pairs that are still running.

        By primary key: a scan of the `running` range would lock other runners' rows on MySQL.
        """
        if not held:
            return 0
        stmt = sa.update(J).where(
            self.sql.id_in(), J.c.lease_token.in_(sa.bindparam("tokens", expanding=True)), columns.running_by_id(),
        ).values(lease_expires_at=self.sql.after(self.sql.seconds(lease)))
        params = {"ids": [job_id for job_id, _ in held], "tokens": sorted({token for _, token in held})}
        return self.transaction(lambda conn: int(conn.execute(stmt, params).rowcount))

    def rescue_expired(self, task_limits: Mapping[str, int] | None = None,
                       held: tuple[Collection[str], Collection[str]] = ((), ())) -> Rescued:
        """Running jobs whose lease expired (or that have none): back to pending, failed when attempts
        are spent (the row's, or `task_limits[task]` when fewer), or cancelled when an operator asked for
        that; those of `held` (tasks, queues) back uncounted; see rescue.py."""
        return rescue_expired(self, task_limits, held)

    def get(self, job_id: int) -> Job | None:
        """One whole row, or None."""
        rows = self.jobs(sa.select(*JOB_COLUMNS).where(J.c.id == job_id))
        return rows[0] if rows else None

    def jobs(self, stmt: sa.Select[Any]) -> list[Job]:
        """Whole rows (a select of JOB_COLUMNS), read so that no row's content can break the read."""
        return self.read(lambda conn: [Job.from_row(row) for row in conn.execute(stmt).mappings()])

    def read(self, work: Callable[[sa.Connection], T]) -> T:
        """A read for people (status, list, show): text a producer wrote that cannot be decoded is shown
        with replacement characters instead of failing the command."""

        def tolerant(conn: sa.Connection) -> T:
            with self.sql.tolerant_reads(conn):
                return work(conn)

        return self.transaction(tolerant)
