"""Recurring schedules' SQL: enqueue the slots that came due, each once across every host.

Each schedule has a row in `pending_job_schedules` holding the last slot handled. A run locks the row
(SKIP LOCKED: a host already enqueueing that schedule is left to it), enqueues the due slots with the
idempotency key `schedule:NAME:SLOT` and moves the row on, in one transaction: a slot is enqueued
exactly once however many hosts look, and a crash before the commit leaves both undone. A new
schedule's row starts at its newest past slot, so nothing before the first look is due.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from ..errors import ConfigError, DatabaseUnavailable
from ..models import utc
from ..schedules import Schedule, iso
from ..schema import db_now
from ..schema import pending_jobs as J
from ..schema import schedules as S
from ..validation import describe_exception
from .base import Store

log = logging.getLogger(__name__)

AHEAD = 60.0
"""Seconds a schedule's last slot may be ahead of the database clock (read as its row is locked). Further
ahead, the clock stepped back (or the row was set by hand): the schedule goes on from its newest past slot
instead of waiting, silent, until the clock gets back there (the slots in between that have a job keep it:
their idempotency keys)."""


@dataclasses.dataclass(frozen=True)
class ScheduleRow:
    """What the database knows of a schedule: the last slot handled and what it enqueued."""

    name: str
    last_slot: dt.datetime | None
    last_job_id: int | None
    last_job_status: str | None
    last_enqueued_at: dt.datetime | None
    enqueued: int
    skipped: int


@dataclasses.dataclass(frozen=True)
class Fired:
    """What one look at a schedule enqueued: its slots (UTC) and their job ids, and slots skipped."""

    name: str
    slots: list[dt.datetime]
    job_ids: list[int]
    skipped: int = 0


class ScheduleStore:
    """Schedule rows and the enqueueing of due slots."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.sql = store.sql
        self._known: set[str] = set()  # schedules whose row exists

    def now(self) -> dt.datetime:
        """The database clock (aware UTC): every slot is judged by it, never by a runner's clock."""
        value = self.store.transaction(lambda conn: conn.execute(sa.select(db_now())).scalar_one())
        found = self.sql.clock_value(value)
        assert found is not None
        return found

    def enqueue_due(self, schedules: Mapping[str, Schedule], now: dt.datetime | None = None) -> list[Fired]:
        """Enqueue every schedule's due slots (by its catch-up policy); what was enqueued or skipped.
        `now` replaces the database clock (tests of catch-up policies)."""
        if not schedules:
            return []
        clock = now or self.now()
        self._create(schedules, clock)
        fired = []
        for name in sorted(schedules):
            schedule = schedules[name]
            try:
                done = self.store.transaction(functools.partial(self._fire, schedule=schedule, now=clock))
            except (DatabaseUnavailable, ConfigError):  # the database's problem, not this schedule's
                raise
            except Exception as error:  # a value its job cannot hold: this schedule's problem, the others fire
                log.warning("schedule %s: could not enqueue its due slots: %s", name,
                            describe_exception(error, 500).splitlines()[0])
                continue
            if done is not None and (done.slots or done.skipped):
                fired.append(done)
                if done.skipped:
                    log.warning("schedule %s: skipped %d slot(s) missed while nothing ran (catch_up = %s)",
                                name, done.skipped, schedules[name].catch_up)
        return fired

    def _create(self, schedules: Mapping[str, Schedule], now: dt.datetime) -> None:
        """Rows for schedules seen for the first time, starting at their newest past slot."""
        new = sorted(set(schedules) - self._known)
        if not new:
            return
        stmt = self.sql.insert_ignore(S)
        rows = [{"name": name, "last_slot": _naive(schedules[name].latest_at(now)), "enqueued": 0, "skipped": 0}
                for name in new]
        self.store.transaction(lambda conn: conn.execute(stmt, rows))
        self._known.update(new)

    def _fire(self, conn: sa.Connection, schedule: Schedule, now: dt.datetime) -> Fired | None:
        lock = self.sql.cached(("schedule_lock",), lambda: sa.select(S.c.last_slot, db_now().label("now")).where(
            S.c.name == sa.bindparam("name", type_=sa.String)).with_for_update(skip_locked=True))
        row = conn.execute(lock, {"name": schedule.name}).one_or_none()
        if row is None:  # another host is enqueueing it right now, or an operator deleted the row (to start afresh)
            exists = self.sql.cached(("schedule_exists",), lambda: sa.select(S.c.name).where(
                S.c.name == sa.bindparam("name", type_=sa.String)))
            if conn.execute(exists, {"name": schedule.name}).first() is None:
                # Gone: the next look creates it again, at its newest past slot (a serving run went on believing
                # it existed, and the schedule never fired again while that run lived).
                self._known.discard(schedule.name)
            return None
        last = utc(row.last_slot) or schedule.latest_at(now)
        clock = self.sql.clock_value(row.now)  # the database's, now: `now` may be a test's, or read a while ago
        if clock is not None and (last - clock).total_seconds() > AHEAD:
            fresh = schedule.latest_at(clock)
            log.warning("schedule %s: its last slot %s is ahead of the database clock (%s): did the clock step back? "
                        "It goes on from %s", schedule.name, iso(last), iso(clock), iso(fresh))
            conn.execute(sa.update(S).where(S.c.name == schedule.name).values(last_slot=_naive(fresh),
                                                                              updated_at=db_now()))
            return None
        moved = False
        if not schedule.is_slot(last):
            # Handled under other times: its cron, every or timezone changed. The new times' slots before the
            # change were never due (runs looked all along): only those within its grace are, as for a new
            # schedule, instead of all of them at once under catch_up = latest or all. Only ever forward: a host
            # still on the old times (a deploy under way) finds the other's slot ahead and leaves it.
            start = schedule.latest_at(now - dt.timedelta(seconds=schedule.grace))
            if start > last:
                last, moved = start, True
        slots, skipped = schedule.due(last, now)
        if not slots and not skipped and not moved:
            return None
        rows = [_job_row(schedule, slot) for slot in slots]
        ids = self.sql.insert_jobs(conn, rows) if rows else []
        newest = max([*slots, schedule.latest_at(now)])
        values: dict[str, Any] = {"last_slot": _naive(newest), "updated_at": db_now(),
                                  "skipped": S.c.skipped + skipped}
        if ids:
            values.update(last_job_id=ids[-1], last_enqueued_at=db_now(), enqueued=S.c.enqueued + len(ids))
        conn.execute(sa.update(S).where(S.c.name == schedule.name).values(values))
        return Fired(schedule.name, slots, ids, skipped)

    def rows(self) -> dict[str, ScheduleRow]:
        """Every schedule row (also of schedules no longer configured), with its last job's status."""
        stmt = (sa.select(S.c.name, S.c.last_slot, S.c.last_job_id, J.c.status, S.c.last_enqueued_at,
                          S.c.enqueued, S.c.skipped)
                .select_from(S.outerjoin(J, J.c.id == S.c.last_job_id)).order_by(S.c.name))
        return self.store.read(lambda conn: {
            row.name: ScheduleRow(row.name, utc(row.last_slot), row.last_job_id, row.status,
                                  utc(row.last_enqueued_at), int(row.enqueued), int(row.skipped))
            for row in conn.execute(stmt)})


def _job_row(schedule: Schedule, slot: dt.datetime) -> dict[str, Any]:
    row: dict[str, Any] = {"task": schedule.task, "payload": schedule.payload_for(slot), "queue": schedule.queue,
                           "priority": schedule.priority, "run_at": _naive(slot),
                           "idempotency_key": schedule.key_for(slot)}
    if schedule.max_attempts is not None:
        row["max_attempts"] = schedule.max_attempts
    if schedule.concurrency_key is not None:
        row["concurrency_key"] = schedule.concurrency_key
    return row


def _naive(moment: dt.datetime) -> dt.datetime:
    """UTC without a zone: how every time column is written (MariaDB's DATETIME has no zone)."""
    return moment.astimezone(dt.UTC).replace(tzinfo=None)
