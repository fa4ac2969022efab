"""A run that has caught up with its queue: the claim after a short one looks first, by index dives
(store/due.py), and never reads through the jobs scheduled for later; no due job is ever missed."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue_many, migrate
from pending_jobs.limits import parse
from pending_jobs.store import LimitedStore, Store, create_engine, open_store
from pending_jobs.store.due import MOST
from tests.conftest import create_database

LATER = 3600.0  # seconds: scheduled well after the test ends


def due_now(engine: sa.Engine, *ids: int) -> None:
    """Make these pending jobs due without a new row (as a retry's backoff ending, or an operator's retry)."""
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET run_at = :t WHERE id IN :ids")
                     .bindparams(sa.bindparam("ids", expanding=True)), {"t": dt.datetime(2000, 1, 1), "ids": list(ids)})


def capped(store: Store, max_running: int) -> LimitedStore:
    """The store of a run whose queue's one limit is its max_running (the capped claim of store/limited.py)."""
    return LimitedStore(store, parse({"default": {"max_running": max_running}}, {}))


def claimed(store: Store, limit: int = 10) -> list[int]:
    return [job.id for job in store.claim("default", limit, "test", 60).jobs]


def test_a_caught_up_queue_still_gets_every_job_that_comes_due(store: Store, engine: sa.Engine) -> None:
    low = enqueue_many(engine, [{"task": "noop", "payload": {}, "delay": LATER} for _ in range(30)])
    high = enqueue_many(engine, [{"task": "noop", "payload": {}, "priority": 3, "delay": LATER} for _ in range(5)])
    assert claimed(store) == []  # short: the queue is caught up
    assert claimed(store) == []  # the dives find nothing due: no claim is made

    due_now(engine, low[7])  # due without a new row
    assert claimed(store) == [low[7]]  # one priority due: the claim bounded to it
    due_now(engine, low[3], high[2])
    assert claimed(store) == [high[2], low[3]]  # two priorities due: the plain claim, in claim order
    [urgent] = enqueue_many(engine, [{"task": "noop", "payload": {}, "priority": 9}])
    assert claimed(store) == [urgent]
    assert claimed(store) == []


def test_a_full_claim_is_followed_by_the_plain_claim(store: Store, engine: sa.Engine) -> None:
    ids = enqueue_many(engine, [{"task": "noop", "payload": {}, "priority": n % 2} for n in range(5)])
    assert claimed(store, 2) == [ids[1], ids[3]]  # full: priority 1 first
    assert claimed(store, 2) == [ids[0], ids[2]]  # full again
    assert claimed(store, 2) == [ids[4]]  # short
    assert claimed(store, 2) == []


def test_a_queue_with_more_priorities_than_the_dives_look_at_still_claims(store: Store, engine: sa.Engine) -> None:
    spread = enqueue_many(engine, [{"task": "noop", "payload": {}, "priority": p, "delay": LATER}
                                   for p in range(MOST + 2)])
    assert claimed(store) == []
    due_now(engine, spread[0])  # the lowest priority, below the ones the dives look at
    assert claimed(store) == [spread[0]]


def test_a_paused_queue_s_due_jobs_are_left_while_caught_up(store: Store, engine: sa.Engine) -> None:
    ids = enqueue_many(engine, [{"task": "noop", "payload": {}, "delay": LATER} for _ in range(3)])
    assert claimed(store) == []
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO pending_job_paused_queues (queue) VALUES ('default')"))
    due_now(engine, ids[1])
    assert claimed(store) == []
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM pending_job_paused_queues"))
    assert claimed(store) == [ids[1]]


def test_a_caught_up_capped_queue_gets_jobs_that_come_due_within_its_cap(store: Store, engine: sa.Engine) -> None:
    ids = enqueue_many(engine, [{"task": "noop", "payload": {}, "delay": LATER} for _ in range(20)])
    jobs = capped(store, 2)
    assert claimed(jobs) == []  # short: caught up
    assert claimed(jobs) == []  # the dives find nothing due
    due_now(engine, ids[4], ids[5], ids[6])
    first = jobs.claim("default", 10, "test", 60)
    assert [job.id for job in first.jobs] == [ids[4], ids[5]]  # bounded to priority 0, and to the cap's room
    assert claimed(jobs) == []  # the cap is full: ids[6] waits
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET status = 'succeeded' WHERE id = :id"), {"id": ids[4]})
    assert claimed(jobs) == [ids[6]]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # MariaDB and PostgreSQL refuse these at the INSERT
@pytest.mark.parametrize("priority", ["", "high", 0.5, 9.223372036854776e18, 2**40])
def test_a_caught_up_claim_takes_rows_whose_priority_is_not_a_column_value(
        store: Store, engine: sa.Engine, priority: Any) -> None:
    """SQLite stores what a producer gives it; the dives cannot bind such a priority, the plain claim runs."""
    [good, odd] = enqueue_many(engine, [{"task": "noop", "payload": {}, "delay": LATER} for _ in range(2)])
    assert claimed(store) == []  # caught up
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET priority = :p WHERE id = :id"), {"p": priority, "id": odd})
    due_now(engine, good, odd)
    assert sorted(claimed(store)) == [good, odd]


@pytest.fixture
def one_connection(tmp_path: Path) -> Any:
    """A MariaDB store whose every transaction uses one connection, so its session counters count them."""
    url, drop = create_database("mysql", tmp_path)
    engine = create_engine(url, pool_size=1)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()
    drop()


@pytest.mark.parametrize("cap", [None, 100], ids=["plain", "capped"])
def test_a_caught_up_claim_does_not_read_the_entries_of_jobs_scheduled_later(one_connection: sa.Engine,
                                                                              cap: int | None) -> None:
    engine = one_connection
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO pending_jobs (task, payload, run_at) SELECT 'noop', '{}', "
                             "UTC_TIMESTAMP(6) + INTERVAL 1 DAY FROM seq_1_to_3000"))
    [due] = enqueue_many(engine, [{"task": "noop", "payload": {}}])
    store = open_store(engine) if cap is None else capped(open_store(engine), cap)

    def entries_read() -> int:  # index entries read after the first, forwards or backwards, this session
        with engine.connect() as conn:
            status = dict(conn.execute(sa.text("SHOW SESSION STATUS LIKE 'Handler_read_%'")).all())
        return int(status["Handler_read_next"]) + int(status["Handler_read_prev"])

    assert claimed(store) == [due]  # short: from here on the run is caught up
    before = entries_read()
    assert claimed(store) == []  # nothing due
    idle = entries_read() - before
    due_now(engine, 17)
    before = entries_read()
    assert claimed(store) == [17]  # one job due among 2,999 scheduled later
    trickle = entries_read() - before
    due_now(engine, 18)
    assert claimed(store, 1) == [18]  # full, but bounded by the dives: the queue stays caught up
    before = entries_read()
    assert claimed(store, 1) == []
    after_full = entries_read() - before
    # Reading through the later jobs' entries would count about 3,000 each time.
    assert (idle < 50, trickle < 50, after_full < 50) == (True, True, True), (idle, trickle, after_full)
