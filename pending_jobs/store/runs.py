"""The runs table and the reads behind `status` and the metrics: what ran, and how the queue stands."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from ..models import Job, RunReport, RunRow
from ..schema import SUMMARY_VIEW, db_now, runs
from ..schema import pending_jobs as J
from ..states import CALLBACK_PENDING, JOB_PENDING, JOB_RUNNING, TERMINAL_VALUES, CallbackStatus
from .base import Store
from .columns import JOB_COLUMNS, lenient_time
from .overview import Tally, tally

R = runs


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


class RunStore:
    """The `pending_job_runs` rows, and the status reads, on top of a job store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.sql = store.sql

    def _run_row(self, row: Mapping[Any, Any]) -> RunRow:
        report = RunReport(**{name: row[name] for name in RunReport.STORED}, exit_code=row["exit_code"])
        return RunRow(int(row["id"]), row["host"], int(row["pid"]), self.sql.clock_value(row["started_at"]),
                      self.sql.clock_value(row["finished_at"]), report)

    def start_run(self, host: str, pid: int) -> int:
        """Insert this run's row (started now) and return its id.

        The row is updated once, to nothing, in the same transaction: finish_run needs UPDATE, and a user
        granted INSERT but not UPDATE would otherwise leave a row that reads as still running forever. The
        grant's error rolls the row back, and the run exits 2 naming the table.
        """
        stmt = sa.insert(R).values(host=host[:255], pid=pid, started_at=db_now())

        def work(conn: sa.Connection) -> int:
            key = conn.execute(stmt).inserted_primary_key
            assert key is not None
            conn.execute(sa.update(R).where(R.c.id == key[0]).values(finished_at=None))
            return int(key[0])

        return self.store.transaction(work)

    def finish_run(self, run_id: int, report: RunReport) -> None:
        """Record what the run did and how it ended."""
        counts = {name: getattr(report, name) for name in RunReport.STORED}
        stmt = sa.update(R).where(R.c.id == run_id).values(finished_at=db_now(), exit_code=report.exit_code, **counts)
        self.store.transaction(lambda conn: conn.execute(stmt))

    def runs(self, limit: int = 10) -> list[RunRow]:
        """The newest runs first."""
        stmt = sa.select(R).order_by(R.c.id.desc()).limit(limit)
        return self.store.read(lambda conn: [self._run_row(row) for row in conn.execute(stmt).mappings()])

    # -- status -----------------------------------------------------------------------------------

    def counts(self) -> list[tuple[str, str, int]]:
        """(queue, status, count) for every pair present."""
        stmt = (sa.select(J.c.queue, J.c.status, sa.func.count()).group_by(J.c.queue, J.c.status)
                .order_by(J.c.queue, J.c.status))
        return self.store.read(lambda conn: [(q, s, int(n)) for q, s, n in conn.execute(stmt)])

    def summary_view(self) -> list[tuple[str, str, int]]:
        """(queue, status, jobs) from the `pending_jobs_summary` view, as a status page reads it."""
        stmt = sa.text(f"SELECT queue, status, jobs FROM {SUMMARY_VIEW} ORDER BY queue, status")
        return self.store.read(lambda conn: [(q, s, int(n)) for q, s, n in conn.execute(stmt)])

    def oldest_due_age(self) -> float | None:
        """Seconds the oldest due pending job has waited, by the database clock; None when none is due."""
        # A due run_at that is not a time (it reads as None) is left out: it has no age to show, and it must
        # not hide the wait of the readable ones.
        unreadable = self.sql.unreadable_time(J.c.run_at)
        readable = () if unreadable is None else (sa.not_(unreadable),)
        oldest = (sa.select(sa.func.min(J.c.run_at)).where(J.c.status == JOB_PENDING, J.c.run_at <= db_now(),
                                                           *readable).scalar_subquery())
        stmt = sa.select(db_now().label("now"), lenient_time(oldest, "oldest"))

        def work(conn: sa.Connection) -> float | None:
            row = conn.execute(stmt).one()
            now, found = self.sql.clock_value(row.now), self.sql.clock_value(row.oldest)
            if now is None or found is None:
                return None
            return max(0.0, (now - found).total_seconds())

        return self.store.read(work)

    def expired_leases(self) -> list[Job]:
        """Running jobs whose lease has expired (their runner died; the next run rescues them)."""
        return self.store.jobs(sa.select(*JOB_COLUMNS).where(
            J.c.status == JOB_RUNNING, sa.or_(J.c.lease_expires_at < db_now(), J.c.lease_expires_at.is_(None)))
            .order_by(J.c.id))

    def never_due(self, limit: int = 5) -> tuple[int, list[tuple[int, str]]]:
        """Pending jobs no claim will ever find due (their run_at is not a time, and the database compares
        it after every time: SQLite's 'tomorrow', PostgreSQL's infinity): how many, and a few (id, run_at as
        stored). One the database finds due (MariaDB's zero date, -infinity) is claimed and runs."""
        never = self.sql.never_due(J.c.run_at)
        if never is None:
            return 0, []
        where = (J.c.status == JOB_PENDING, never)
        count = sa.select(sa.func.count()).where(*where)
        some = sa.select(J.c.id, sa.cast(J.c.run_at, sa.Text)).where(*where).order_by(J.c.id).limit(limit)

        def work(conn: sa.Connection) -> tuple[int, list[tuple[int, str]]]:
            return int(conn.execute(count).scalar_one()), [(int(i), str(t)) for i, t in conn.execute(some)]

        return self.store.read(work)

    def callback_counts(self) -> dict[str, int]:
        """Jobs per callback status (pending, delivered, failed), plus `due`, counted exactly."""
        return {key: found.n for key, found in self.callback_tallies(None).items()}

    def callback_tallies(self, bound: int | None) -> dict[str, Tally]:
        """Jobs per callback status plus `due`, each read from the callback index (callback_status,
        callback_next_at) and exact up to `bound` (overview.py: estimated or a lower bound above it)."""
        order = (J.c.callback_next_at,)
        due = (J.c.callback_status == CALLBACK_PENDING, J.c.callback_next_at <= db_now(),
               J.c.status.in_(TERMINAL_VALUES))

        def work(conn: sa.Connection) -> dict[str, Tally]:
            counts = {s.value: tally(conn, self.sql, (J.c.callback_status == s.value,), order, {}, bound)
                      for s in CallbackStatus}
            return counts | {"due": tally(conn, self.sql, due, order, {}, bound)}

        return self.store.read(work)

    def health(self) -> Health:
        """Counts, oldest due age, callbacks and the last runs, read in a few short queries."""
        last_run = self.runs(1)
        finished = sa.select(R).where(R.c.finished_at.is_not(None)).order_by(R.c.finished_at.desc()).limit(1)
        success = sa.select(sa.func.max(R.c.finished_at)).where(R.c.exit_code == 0)

        def work(conn: sa.Connection) -> tuple[RunRow | None, Any, Any]:
            row = conn.execute(finished).mappings().first()
            now = conn.execute(sa.select(db_now())).scalar_one()
            return (self._run_row(row) if row else None), now, conn.execute(success).scalar_one_or_none()

        last_finished, now, last_success = self.store.read(work)
        since = None
        now_at = self.sql.clock_value(now)
        if last_finished is not None and last_finished.finished_at is not None and now_at is not None:
            since = max(0.0, (now_at - last_finished.finished_at).total_seconds())
        return Health(
            counts=self.counts(),
            oldest_due_age=self.oldest_due_age(),
            callbacks=self.callback_counts(),
            last_run=last_run[0] if last_run else None,
            last_finished=last_finished,
            since_last_finished=since,
            last_success_at=self.sql.clock_value(last_success),
        )
