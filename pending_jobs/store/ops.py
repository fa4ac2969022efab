"""Operator SQL: list, retry, cancel, purge and retention; the runs table; status and metrics reads.

Every change of a job's status is a guarded UPDATE (`WHERE id = … AND status IN …`), so an operator
racing a runner can never overwrite an outcome the runner recorded first.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from ..schema import SUMMARY_VIEW, db_now, runs
from ..schema import callback_attempts as A
from ..states import TERMINAL, CallbackStatus, JobStatus
from .base import PENDING, RUNNING, J, Store, _as_datetime
from .models import Job, utc

R = runs
PURGE_BATCH = 1000  # rows per DELETE, so a big purge never holds locks for long
RETENTION_BATCHES = 10  # per run: a large backlog is worked off over several runs
PURGEABLE = frozenset({JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value})


@dataclasses.dataclass(frozen=True)
class JobFilter:
    """What `list` and `retry --failed` select; empty fields select everything."""

    statuses: tuple[str, ...] = ()
    queue: str | None = None
    task: str | None = None
    since: float | None = None
    """Only jobs created at most this many seconds ago (by the database clock)."""
    callback_status: str | None = None
    limit: int = 50


@dataclasses.dataclass(frozen=True)
class RunRow:
    """One row of `pending_job_runs`."""

    id: int
    host: str
    pid: int
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    claimed: int
    succeeded: int
    failed: int
    retried: int
    rescued: int
    callbacks_delivered: int
    callbacks_failed: int
    exit_code: int | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> RunRow:
        values = {field.name: row[field.name] for field in dataclasses.fields(cls)}
        values["started_at"] = utc(_as_datetime(values["started_at"]))
        values["finished_at"] = utc(_as_datetime(values["finished_at"])) if values["finished_at"] else None
        return cls(**values)

    @property
    def duration(self) -> float | None:
        """Seconds the run took; None while it is still running (or was killed)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclasses.dataclass(frozen=True)
class RunCounts:
    """What a run did, as `finish_run` records it."""

    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    rescued: int = 0
    callbacks_delivered: int = 0
    callbacks_failed: int = 0


@dataclasses.dataclass(frozen=True)
class Health:
    """The queue's state at one moment: what `status` shows and the metrics file exports."""

    counts: list[tuple[str, str, int]]
    oldest_due_age: float | None
    callbacks: dict[str, int]
    """Jobs per callback status, plus `due`: pending callbacks whose time has come."""
    last_run: RunRow | None
    last_finished: RunRow | None
    since_last_finished: float | None
    """Seconds since the newest finished run ended, by the database clock."""
    last_success_at: dt.datetime | None


class OpsStore:
    """Operator verbs on top of a job store (its engine, clock and transaction retries)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _ago(self, seconds: float) -> sa.ColumnElement[Any]:
        return self.store.after(self.store._seconds(-float(seconds)))

    # -- list and show --------------------------------------------------------------------------

    def _where(self, f: JobFilter) -> list[sa.ColumnElement[bool]]:
        where: list[sa.ColumnElement[bool]] = []
        if f.statuses:
            where.append(J.c.status.in_(f.statuses))
        if f.queue is not None:
            where.append(J.c.queue == f.queue)
        if f.task is not None:
            where.append(J.c.task == f.task)
        if f.since is not None:
            where.append(J.c.created_at >= self._ago(f.since))
        if f.callback_status == "none":
            where.append(J.c.callback_status.is_(None))
        elif f.callback_status is not None:
            where.append(J.c.callback_status == f.callback_status)
        return where

    def list_jobs(self, f: JobFilter) -> list[Job]:
        """Jobs matching the filter, newest first."""
        stmt = sa.select(J).where(*self._where(f)).order_by(J.c.id.desc()).limit(max(1, f.limit))
        return self.store.transaction(lambda conn: [Job.from_row(row) for row in conn.execute(stmt).mappings()])

    # -- retry and cancel -----------------------------------------------------------------------

    def _reopen_values(self) -> dict[str, Any]:
        # A fresh start: attempts reset, no lease, and the old callback outcome forgotten, so the
        # callback is sent again for the new outcome (its attempts table keeps the history).
        return {
            "status": PENDING, "attempts": 0, "run_at": db_now(), "updated_at": db_now(), "result": sa.null(),
            "started_at": None, "finished_at": None, "lease_owner": None, "lease_token": None,
            "lease_expires_at": None, "cancel_requested": False, "callback_status": None,
            "callback_next_at": None, "callback_attempts": 0, "callback_token": None,
            "callback_last_error": None,
        }

    def retry(self, job_id: int) -> bool:
        """A finished job (succeeded, failed or cancelled) back to pending with attempts reset."""
        stmt = (
            sa.update(J)
            .where(J.c.id == job_id, J.c.status.in_([s.value for s in TERMINAL]))
            .values(self._reopen_values())
        )
        return self.store.transaction(lambda conn: conn.execute(stmt).rowcount == 1)

    def retry_failed(self, f: JobFilter) -> int:
        """Every failed job matching the filter (its status is forced to failed) back to pending."""
        where = self._where(dataclasses.replace(f, statuses=(JobStatus.FAILED.value,)))
        stmt = sa.update(J).where(*where).values(self._reopen_values())
        return self.store.transaction(lambda conn: int(conn.execute(stmt).rowcount))

    def cancel(self, job_id: int) -> str:
        """Cancel a pending job (`done`), or mark a running one (`requested`); else its status or `missing`."""
        values = self.store._terminal_values(JobStatus.CANCELLED)
        values["last_error"] = "cancelled by an operator"
        to_cancelled = sa.update(J).where(J.c.id == job_id, J.c.status == PENDING).values(values)
        mark = sa.update(J).where(J.c.id == job_id, J.c.status == RUNNING).values(cancel_requested=True)
        status = sa.select(J.c.status).where(J.c.id == job_id)

        def work(conn: sa.Connection) -> str:
            if conn.execute(to_cancelled).rowcount == 1:
                return "done"
            if conn.execute(mark).rowcount == 1:
                return "requested"
            current = conn.execute(status).scalar_one_or_none()
            return str(current) if current is not None else "missing"

        return self.store.transaction(work)

    # -- purge and retention --------------------------------------------------------------------

    def purge(self, older_than: float, statuses: Sequence[str], max_batches: int | None = None) -> int:
        """Delete finished jobs (and their callback attempts) that ended more than `older_than` seconds ago.

        Jobs whose callback is still pending are kept until it is delivered or fails.
        """
        wanted = [s for s in statuses if s in PURGEABLE]
        if not wanted:
            return 0
        ids = (
            sa.select(J.c.id)
            .where(J.c.status.in_(wanted), J.c.finished_at < self._ago(older_than),
                   sa.or_(J.c.callback_status.is_(None), J.c.callback_status != CallbackStatus.PENDING.value))
            .order_by(J.c.id)
            .limit(PURGE_BATCH)
        )
        by_id: sa.BindParameter[Any] = sa.bindparam("ids", expanding=True)

        def batch(conn: sa.Connection) -> int:
            found = [row[0] for row in conn.execute(ids)]
            if found:
                conn.execute(sa.delete(A).where(A.c.job_id.in_(by_id)), {"ids": found})
                conn.execute(sa.delete(J).where(J.c.id.in_(by_id), J.c.status.in_(wanted)), {"ids": found})
            return len(found)

        total, batches = 0, 0
        while max_batches is None or batches < max_batches:
            deleted = self.store.transaction(batch)
            total, batches = total + deleted, batches + 1
            if deleted < PURGE_BATCH:
                break
        return total

    def apply_retention(self, succeeded: float, failed: float) -> int:
        """The automatic purge `run` applies (0 keeps forever); runs are kept as long as failed jobs."""
        purged = 0
        if succeeded > 0:
            purged += self.purge(succeeded, [JobStatus.SUCCEEDED.value, JobStatus.CANCELLED.value],
                                 RETENTION_BATCHES)
        if failed > 0:
            purged += self.purge(failed, [JobStatus.FAILED.value], RETENTION_BATCHES)
            old_runs = sa.delete(R).where(R.c.finished_at < self._ago(failed))
            self.store.transaction(lambda conn: conn.execute(old_runs))
        return purged

    # -- the runs table -------------------------------------------------------------------------

    def start_run(self, host: str, pid: int) -> int:
        """Insert this run's row (started now) and return its id."""
        stmt = sa.insert(R).values(host=host[:255], pid=pid, started_at=db_now())
        def work(conn: sa.Connection) -> int:
            key = conn.execute(stmt).inserted_primary_key
            assert key is not None
            return int(key[0])

        return self.store.transaction(work)

    def finish_run(self, run_id: int, counts: RunCounts, exit_code: int) -> None:
        """Record what the run did and how it ended."""
        stmt = (
            sa.update(R)
            .where(R.c.id == run_id)
            .values(finished_at=db_now(), exit_code=exit_code, **dataclasses.asdict(counts))
        )
        self.store.transaction(lambda conn: conn.execute(stmt))

    def runs(self, limit: int = 10) -> list[RunRow]:
        """The newest runs first."""
        stmt = sa.select(R).order_by(R.c.id.desc()).limit(limit)
        return self.store.transaction(lambda conn: [RunRow.from_row(row) for row in conn.execute(stmt).mappings()])

    def pending_tasks(self) -> list[str]:
        """Task names of pending jobs (for `check`: each needs a handler)."""
        stmt = sa.select(J.c.task).where(J.c.status == PENDING).distinct().order_by(J.c.task)
        return self.store.transaction(lambda conn: [str(row[0]) for row in conn.execute(stmt)])

    # -- status ---------------------------------------------------------------------------------

    def summary_view(self) -> list[tuple[str, str, int]]:
        """(queue, status, jobs) from the `pending_jobs_summary` view, as a status page reads it."""
        stmt = sa.text(f"SELECT queue, status, jobs FROM {SUMMARY_VIEW} ORDER BY queue, status")
        return self.store.transaction(lambda conn: [(q, s, int(n)) for q, s, n in conn.execute(stmt)])

    def callback_counts(self) -> dict[str, int]:
        """Jobs per callback status (pending, delivered, failed), plus `due`."""
        by_status = (
            sa.select(J.c.callback_status, sa.func.count())
            .where(J.c.callback_status.is_not(None))
            .group_by(J.c.callback_status)
        )
        due = sa.select(sa.func.count()).where(
            J.c.callback_status == CallbackStatus.PENDING.value, J.c.callback_next_at <= db_now(),
            J.c.status.in_([s.value for s in TERMINAL]),
        )

        def work(conn: sa.Connection) -> dict[str, int]:
            counts = {s.value: 0 for s in CallbackStatus}
            counts.update({str(status): int(n) for status, n in conn.execute(by_status)})
            counts["due"] = int(conn.execute(due).scalar_one())
            return counts

        return self.store.transaction(work)

    def health(self) -> Health:
        """Counts, oldest due age, callbacks and the last runs, read in a few short queries."""
        last_run = self.runs(1)
        finished = sa.select(R).where(R.c.finished_at.is_not(None)).order_by(R.c.finished_at.desc()).limit(1)
        success = sa.select(sa.func.max(R.c.finished_at)).where(R.c.exit_code == 0)

        def work(conn: sa.Connection) -> tuple[RunRow | None, Any, Any]:
            row = conn.execute(finished).mappings().first()
            now = conn.execute(sa.select(db_now())).scalar_one()
            return (RunRow.from_row(row) if row else None), now, conn.execute(success).scalar_one_or_none()

        last_finished, now, last_success = self.store.transaction(work)
        since = None
        if last_finished is not None and last_finished.finished_at is not None:
            since = max(0.0, (_as_datetime(now) - last_finished.finished_at).total_seconds())
        return Health(
            counts=self.store.counts(),
            oldest_due_age=self.store.oldest_due_age(),
            callbacks=self.callback_counts(),
            last_run=last_run[0] if last_run else None,
            last_finished=last_finished,
            since_last_finished=since,
            last_success_at=utc(_as_datetime(last_success)) if last_success else None,
        )


def cancel_requested(bind: sa.Engine | sa.Connection, job_id: int) -> bool:
    """Whether an operator asked to cancel this job (what `ctx.cancel_requested()` reads)."""
    stmt = sa.select(J.c.cancel_requested).where(J.c.id == job_id)
    if isinstance(bind, sa.Connection):
        return bool(bind.execute(stmt).scalar_one_or_none())
    with bind.connect() as conn:
        return bool(conn.execute(stmt).scalar_one_or_none())
