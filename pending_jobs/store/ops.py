"""Operator SQL: list, retry, cancel, purge and retention.

Every change of a job's status is a guarded UPDATE (`WHERE id = … AND status IN …`), so an operator
racing a runner can never overwrite an outcome the runner recorded first. A verb that deletes ended jobs
or reopens them first locks those rows and adds their outcomes to the totals (totals.py), in the same
transaction, so /metrics' counters never go down.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from .. import db
from ..errors import DatabaseUnavailable
from ..models import Job
from ..schema import callback_attempts as A
from ..schema import db_now, metadata, paused_queues, runs
from ..schema import pending_jobs as J
from ..states import CALLBACK_PENDING, JOB_PENDING, JOB_RUNNING, TERMINAL_VALUES, JobStatus
from . import totals
from .base import Store
from .columns import JOB_COLUMNS
from .history import forget

PURGE_BATCH = 1000  # rows per DELETE, so a big purge never holds locks for long
BATCH_GAP = 0.05  # seconds between two batches on SQLite, for the other writers waiting for its lock
RETENTION_BATCHES = 10  # per run at least, however long they take
RETENTION_TIME = 5.0
"""Seconds of full batches a run's retention goes on for past RETENTION_BATCHES: a fixed 10 batches (10,000
jobs of each kind a run, a minute) fell behind for good as soon as jobs ended faster than 170 a second, and
the table grew without end. A large backlog is still worked off over several runs."""
PURGEABLE = frozenset(TERMINAL_VALUES)


def _ids(search: sa.Select[Any], conn: sa.Connection) -> list[int]:
    return [int(row[0]) for row in conn.execute(search)]


def _like(text: str) -> str:
    """A LIKE pattern matching `text` anywhere (its own %, _ and \\ taken literally)."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


@dataclasses.dataclass(frozen=True)
class JobFilter:
    """What `list` and `retry --failed` select; empty fields select everything."""

    statuses: tuple[str, ...] = ()
    queue: str | None = None
    task: str | None = None
    since: float | None = None
    """Only jobs created at most this many seconds ago (by the database clock)."""
    until: float | None = None
    """Only jobs created at least this many seconds ago."""
    text: str | None = None
    """Substring of the payload (as JSON text) or the last error (the console's search)."""
    callback_status: str | None = None
    limit: int = 50


@dataclasses.dataclass(frozen=True)
class PausedQueue:
    """A queue no runner claims from, who paused it, when and why."""

    queue: str
    paused_at: dt.datetime | None
    paused_by: str | None
    reason: str | None


class OpsStore:
    """Operator verbs on top of a job store (its engine, dialect and transaction retries)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.sql = store.sql

    def ago(self, seconds: float) -> sa.ColumnElement[Any]:
        return self.sql.after(self.sql.seconds(-float(seconds)))

    def missing_privileges(self) -> list[str]:
        """What the database user may not do to pending-jobs' tables (every verb on each, as the docs advise), each
        as `VERB on TABLE`. Each verb is tried by a statement that matches no row, in a transaction rolled back
        (PostgreSQL ends one at its first refusal). A user granted SELECT alone passed `check` ("reachable and
        writable"), and every run then ended with a traceback; one granted pending_jobs and pending_job_runs alone
        passed too, and every run stopped at its first claim (it reads pending_job_paused_queues)."""
        missing = []
        for table in (J, runs, *(table for table in metadata.sorted_tables if table not in (J, runs))):
            first, every = next(iter(table.columns)), list(table.columns)  # every: MySQL's strict mode asks
            for verb, statement in (
                ("SELECT", sa.select(first).where(sa.false())),
                ("INSERT", sa.insert(table).from_select(every, sa.select(*every).where(sa.false()))),
                ("UPDATE", sa.update(table).where(sa.false()).values({first.name: first})),
                ("DELETE", sa.delete(table).where(sa.false())),
            ):
                with self.store.engine.connect() as conn:
                    try:
                        conn.execute(statement)
                    except sa.exc.DBAPIError as error:
                        if self.sql.unavailable(error):
                            raise DatabaseUnavailable(db.describe(error)) from None
                        if self.sql.config_problem(error) is not None:  # refused (a table not there: `check`'s schema)
                            missing.append(f"{verb} on {table.name}")
                    finally:
                        conn.rollback()
        return missing

    def sequence_problem(self) -> str | None:
        """Why the database user may not draw new rows' ids (PostgreSQL's sequences), with the GRANT that lets it, or
        None. `missing_privileges`' INSERTs add no row, so draw no id: a user granted every verb on every table but
        no USAGE on the sequences passed `check`, and the first `enqueue` or run record was refused."""
        columns = [table.autoincrement_column for table in metadata.sorted_tables]
        with self.store.engine.connect() as conn:
            try:
                return self.sql.sequence_problem(conn, [column for column in columns if column is not None])
            except sa.exc.DBAPIError as error:
                if self.sql.unavailable(error):
                    raise DatabaseUnavailable(db.describe(error)) from None
                raise
            finally:
                conn.rollback()

    # -- list -------------------------------------------------------------------------------------

    def where(self, f: JobFilter) -> list[sa.ColumnElement[bool]]:
        where: list[sa.ColumnElement[bool]] = []
        if f.statuses:
            where.append(J.c.status.in_(f.statuses))
        if f.queue is not None:
            where.append(J.c.queue == f.queue)
        if f.task is not None:
            where.append(J.c.task == f.task)
        if f.since is not None:
            where.append(J.c.created_at >= self.ago(f.since))
        if f.until is not None:
            where.append(J.c.created_at <= self.ago(f.until))
        if f.text:
            payload = sa.cast(J.c.payload, sa.Text)
            # The payload's text as stored: SQLAlchemy's json.dumps on SQLite and MariaDB writes `Zürich` as
            # `Z\u00fcrich` (PHP's json_encode too), PostgreSQL's jsonb as it is; so the text is looked for both
            # ways (one needle when the text holds nothing JSON escapes). PHP's json_encode also writes `/` as `\/`
            # unless told not to (README's own INSERT example): a URL or path in such a payload was never found.
            escaped = json.dumps(f.text)[1:-1]
            needles = dict.fromkeys((f.text, escaped, f.text.replace("/", "\\/"), escaped.replace("/", "\\/")))
            where.append(sa.or_(*(payload.like(_like(needle), escape="\\") for needle in needles),
                                J.c.last_error.like(_like(f.text), escape="\\")))
        if f.callback_status == "none":
            where.append(J.c.callback_status.is_(None))
        elif f.callback_status is not None:
            where.append(J.c.callback_status == f.callback_status)
        return where

    def list_jobs(self, f: JobFilter) -> list[Job]:
        """Jobs matching the filter, newest first."""
        return self.store.jobs(sa.select(*JOB_COLUMNS).where(*self.where(f)).order_by(J.c.id.desc())
                               .limit(max(1, f.limit)))

    def pending_tasks(self) -> list[str]:
        """Task names of pending jobs (for `check`: each needs a handler)."""
        stmt = sa.select(J.c.task).where(J.c.status == JOB_PENDING).distinct().order_by(J.c.task)
        return self.store.read(lambda conn: [str(row[0]) for row in conn.execute(stmt)])

    # -- retry and cancel -------------------------------------------------------------------------

    def _reopen_values(self) -> dict[str, Any]:
        # A fresh start: attempts reset, no lease, and the old callback outcome forgotten, so the
        # callback is sent again for the new outcome (its attempts table keeps the history).
        return {
            "status": JOB_PENDING, "attempts": 0, "run_at": db_now(), "updated_at": db_now(), "result": sa.null(),
            "started_at": None, "finished_at": None, "lease_owner": None, "lease_token": None,
            "lease_expires_at": None, "cancel_requested": False, "callback_status": None,
            "callback_next_at": None, "callback_attempts": 0, "callback_token": None,
            "callback_last_error": None,
        }

    def retry(self, job_id: int) -> bool:
        """A finished job (succeeded, failed or cancelled) back to pending with attempts reset."""
        where = (J.c.id == job_id, J.c.status.in_(TERMINAL_VALUES))
        return self.store.transaction(lambda conn: self.reopen(conn, where) == 1)

    def retry_failed(self, f: JobFilter) -> int:
        """Every failed job matching the filter (its status is forced to failed) back to pending.

        In transactions of at most PURGE_BATCH jobs, as purge: one transaction over every failed job held
        its row locks (on SQLite the one write lock, stalling every runner and producer) for as long as the
        whole reopen took. Jobs are taken in id order up to the newest id when the command started, so a job
        that fails again meanwhile is not retried a second time."""
        where = self.where(dataclasses.replace(f, statuses=(JobStatus.FAILED.value,)))
        top = self.store.transaction(lambda conn: conn.execute(sa.select(sa.func.max(J.c.id))).scalar())
        if top is None:
            return 0
        reopened, after = 0, None
        while True:
            bound = [*where, J.c.id <= int(top), *([J.c.id > after] if after is not None else [])]
            search = sa.select(J.c.id).where(*bound).order_by(J.c.id).limit(PURGE_BATCH)
            ids = self.store.transaction(functools.partial(_ids, search))
            if not ids:
                return reopened
            reopened += self.store.transaction(functools.partial(self.reopen, where=[*where, J.c.id.in_(ids)]))
            if len(ids) < PURGE_BATCH:
                return reopened
            after = ids[-1]
            self._between_batches()

    def _between_batches(self) -> None:
        """SQLite's writers wait for its one write lock by polling it (busy_timeout); one taken again at once
        by the next batch kept a producer's INSERT waiting 14 s through a long bulk verb: leave it a gap."""
        if not self.store.concurrent_writers:
            time.sleep(BATCH_GAP)

    def reopen(self, conn: sa.Connection, where: Sequence[sa.ColumnElement[bool]],
               order: sa.ColumnElement[Any] = J.c.id, limit: int | None = None) -> int:
        """Reopen the finished jobs `where` selects (in `order`, at most `limit`); how many. Their outcomes,
        and their callbacks', leave the rows: the totals keep them (same transaction)."""
        with self.sql.tolerant_reads(conn):  # SQLite: a task or queue that is not UTF-8 must not stop the verb
            rows = totals.lock(conn, [*where, J.c.status.in_(TERMINAL_VALUES)], order, limit)
        by_id: sa.BindParameter[Any] = sa.bindparam("ids", expanding=True)
        stmt = sa.update(J).where(J.c.id.in_(by_id), J.c.status.in_(TERMINAL_VALUES)).values(self._reopen_values())
        reopened = 0
        for start in range(0, len(rows), totals.CHUNK):
            reopened += int(conn.execute(stmt, {"ids": [row.id for row in rows[start:start + totals.CHUNK]]}).rowcount)
        totals.keep(conn, self.sql, rows)
        return self._woken(conn, reopened)

    def _woken(self, conn: sa.Connection, reopened: int) -> int:
        """Reopened jobs are due now: runners that listen hear it at once (with the commit)."""
        if reopened:
            self.sql.notify(conn)
        return reopened

    def cancel_values(self) -> dict[str, Any]:
        """The SET of an operator's cancel of a pending job (`cancel`, and the console's bulk cancel)."""
        values = self.store.terminal_values(JobStatus.CANCELLED)
        values["last_error"] = "cancelled by an operator"
        return values

    def cancel(self, job_id: int) -> str:
        """Cancel a pending job (`done`), or mark a running one (`requested`); else its status or `missing`."""
        values = self.cancel_values()
        to_cancelled = sa.update(J).where(J.c.id == job_id, J.c.status == JOB_PENDING).values(values)
        mark = sa.update(J).where(J.c.id == job_id, J.c.status == JOB_RUNNING).values(cancel_requested=True)
        status = sa.select(J.c.status).where(J.c.id == job_id)

        def work(conn: sa.Connection) -> str:
            if conn.execute(to_cancelled).rowcount == 1:
                return "done"
            if conn.execute(mark).rowcount == 1:
                return "requested"
            current = conn.execute(status).scalar_one_or_none()
            return str(current) if current is not None else "missing"

        return self.store.transaction(work)

    # -- paused queues ----------------------------------------------------------------------------

    def pause(self, queue: str, by: str, reason: str | None = None) -> bool:
        """Stop every runner claiming `queue` (running jobs finish); False when it was paused already."""
        exists = sa.select(paused_queues.c.queue).where(paused_queues.c.queue == queue)
        # Ignoring a duplicate: two pauses at once both saw no row, and the queue is paused either way.
        insert = self.sql.insert_ignore(paused_queues).values(queue=queue, paused_by=by[:128],
                                                              reason=reason[:255] if reason else None)

        def work(conn: sa.Connection) -> bool:
            if conn.execute(exists).first() is not None:
                return False
            conn.execute(insert)
            return True

        return self.store.transaction(work)

    def resume(self, queue: str) -> bool:
        """Let runners claim `queue` again; False when it was not paused."""
        stmt = sa.delete(paused_queues).where(paused_queues.c.queue == queue)
        return self.store.transaction(lambda conn: self._woken(conn, conn.execute(stmt).rowcount) == 1)

    def paused(self) -> list[PausedQueue]:
        """Every paused queue, by name."""
        stmt = sa.select(paused_queues).order_by(paused_queues.c.queue)
        return self.store.read(lambda conn: [
            PausedQueue(row.queue, self.sql.clock_value(row.paused_at), row.paused_by, row.reason)
            for row in conn.execute(stmt)])

    # -- purge and retention ----------------------------------------------------------------------

    def purge(self, older_than: float, statuses: Sequence[str], max_batches: int | None = None,
              until: float | None = None) -> int:
        """Delete finished jobs (and their callback attempts) that ended more than `older_than` seconds ago.

        Jobs whose callback is still pending are kept until it is delivered or fails. With `max_batches`, at
        most that many batches, unless `until` (a time.monotonic() value) has not come yet.
        """
        wanted = [s for s in statuses if s in PURGEABLE]
        if not wanted:
            return 0
        where: tuple[sa.ColumnElement[bool], ...] = (
            J.c.status.in_(wanted), J.c.finished_at < self.ago(older_than),
            sa.or_(J.c.callback_status.is_(None), J.c.callback_status != CALLBACK_PENDING))
        if self.sql.reuses_ids:  # SQLite (sqlite.py)
            # The newest job stays until a newer one exists: deleting it gave its id to the next job (SQLite's
            # max(rowid) + 1), and a push token, a console link or an id the application kept named another job.
            where += (J.c.id < sa.select(sa.func.max(J.c.id)).scalar_subquery(),)
        by_id: sa.BindParameter[Any] = sa.bindparam("ids", expanding=True)

        def batch(conn: sa.Connection) -> int:
            # SQLite keeps a task or queue that is not UTF-8 (the claim fails such a job, bytes kept): read as
            # people's reads are, or the first such row reaching its retention fails every run from then on.
            with self.sql.tolerant_reads(conn):
                rows = totals.lock(conn, where, limit=PURGE_BATCH)
            found = [row.id for row in rows]
            if found:
                conn.execute(sa.delete(A).where(A.c.job_id.in_(by_id)), {"ids": found})
                forget(conn, found)
                conn.execute(sa.delete(J).where(J.c.id.in_(by_id), J.c.status.in_(wanted)), {"ids": found})
                totals.keep(conn, self.sql, rows)
            return len(found)

        total, batches = 0, 0
        while max_batches is None or batches < max_batches or (until is not None and time.monotonic() < until):
            deleted = self.store.transaction(batch)
            total, batches = total + deleted, batches + 1
            if deleted < PURGE_BATCH:
                break
            self._between_batches()
        return total

    def apply_retention(self, succeeded: float, failed: float, budget: float | None = None) -> int:
        """The automatic purge a run applies (0 keeps forever); runs are kept as long as failed jobs. `budget`:
        seconds of full batches past RETENTION_BATCHES (RETENTION_TIME unless given; 0 after a signal)."""
        purged = 0
        # shared: each kind gets its RETENTION_BATCHES whatever
        until = time.monotonic() + (RETENTION_TIME if budget is None else budget)
        if succeeded > 0:
            purged += self.purge(succeeded, [JobStatus.SUCCEEDED.value, JobStatus.CANCELLED.value],
                                 RETENTION_BATCHES, until)
        if failed > 0:
            purged += self.purge(failed, [JobStatus.FAILED.value], RETENTION_BATCHES, until)
            old_runs = sa.delete(runs).where(runs.c.finished_at < self.ago(failed))
            self.store.transaction(lambda conn: conn.execute(old_runs))
        return purged
