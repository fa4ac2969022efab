"""The overview's counts on every database: exact up to the bound, flagged above it (an estimate where the
database gives one, else "more than the bound"), every queue listed, and the oldest due job across
priorities found without reading the queue's backlog."""

from __future__ import annotations

import sqlalchemy as sa

import pending_jobs
from pending_jobs.schema import pending_jobs as J
from pending_jobs.store import RunStore, Store
from pending_jobs.store.console import ConsoleStore
from pending_jobs.store.overview import ESTIMATE, MORE_THAN


def _fill(engine: sa.Engine) -> None:
    """Queue `big`: 50 succeeded, 2 failed, 3 pending; queue `done`: 1 succeeded (no job left to run)."""
    ids = pending_jobs.enqueue_many(engine, [{"task": "echo", "payload": {"n": n}, "queue": "big"}
                                             for n in range(55)])
    done = pending_jobs.enqueue(engine, "echo", {}, queue="done")
    with engine.begin() as conn:
        conn.execute(sa.update(J).where(J.c.id.in_([*ids[:50], done])).values(status="succeeded"))
        conn.execute(sa.update(J).where(J.c.id.in_(ids[50:52])).values(status="failed"))
        if engine.dialect.name != "sqlite":  # fresh statistics, as the database keeps them in use
            conn.exec_driver_sql("ANALYZE pending_jobs" if engine.dialect.name == "postgresql"
                                 else "ANALYZE TABLE pending_jobs")


def test_counts_are_exact_up_to_the_bound_and_flagged_above_it(store: Store, engine: sa.Engine) -> None:
    _fill(engine)
    console = ConsoleStore(store)
    exact = {q.queue: q for q in console.overview(bound=None)}
    assert exact["big"].counts == {"pending": 3, "running": 0, "succeeded": 50, "failed": 2, "cancelled": 0}
    assert exact["done"].counts["succeeded"] == 1 and exact["big"].inexact == exact["done"].inexact == {}

    bounded = {q.queue: q for q in console.overview(bound=10)}
    assert set(bounded) == {"big", "done"}  # a queue whose jobs have all finished is still listed
    big = bounded["big"]
    assert (big.counts["pending"], big.counts["failed"], bounded["done"].counts["succeeded"]) == (3, 2, 1)
    assert set(big.inexact) == {"succeeded"}
    if engine.dialect.name == "sqlite":  # no row estimate: "more than 10"
        assert (big.inexact["succeeded"], big.counts["succeeded"]) == (MORE_THAN, 10)
    else:  # the planner's estimate of a freshly analyzed 56-row table
        assert big.inexact["succeeded"] == ESTIMATE and 10 < big.counts["succeeded"] <= 100
    assert {q.queue: q.counts for q in console.overview(bound=50)} == {q: o.counts for q, o in exact.items()}


def test_a_count_past_the_bound_on_stale_statistics_is_still_flagged(store: Store, engine: sa.Engine) -> None:
    _fill(engine)
    with engine.begin() as conn:  # 60 more succeeded since the statistics were taken: an estimate at or
        # below the bound shows as "more than the bound"
        pending_jobs.enqueue_many(conn, [{"task": "echo", "payload": {}, "queue": "big"} for _ in range(60)])
        conn.execute(sa.update(J).where(J.c.status == "pending").values(status="succeeded"))
    big = {q.queue: q for q in ConsoleStore(store).overview(bound=100)}["big"]
    with engine.connect() as conn:
        estimate = store.sql.estimate(conn, sa.select(J.c.id).where(J.c.status == "succeeded", J.c.queue == "big"), {})
    if estimate is None or estimate <= 100:
        assert (big.inexact, big.counts["succeeded"]) == ({"succeeded": MORE_THAN}, 100)
    else:
        assert big.inexact == {"succeeded": ESTIMATE} and big.counts["succeeded"] > 100


def test_callback_counts_are_bounded_likewise(store: Store, engine: sa.Engine) -> None:
    ids = pending_jobs.enqueue_many(engine, [{"task": "echo", "payload": {}, "callback_url": "http://127.0.0.1:9/"}
                                             for _ in range(4)])
    with engine.begin() as conn:
        conn.execute(sa.update(J).where(J.c.id.in_(ids[:3])).values(status="succeeded", callback_status="delivered"))
    runs = RunStore(store)
    assert runs.callback_counts() == {"pending": 0, "delivered": 3, "failed": 0, "due": 0}
    tallies = runs.callback_tallies(2)
    assert tallies["delivered"].inexact in (ESTIMATE, MORE_THAN) and tallies["delivered"].n >= 2
    assert all(tallies[key].inexact is None for key in ("pending", "failed", "due"))


def test_the_oldest_due_job_is_found_across_priority_levels(store: Store, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        pending_jobs.enqueue(conn, "echo", {}, queue="q", priority=9)  # claimed first, but due only now
        old = pending_jobs.enqueue(conn, "echo", {}, queue="q", priority=-5)
        pending_jobs.enqueue(conn, "echo", {}, queue="q", priority=20, delay=3600)  # first in the index, not due
        conn.execute(sa.text("UPDATE pending_jobs SET run_at = '2001-01-01 00:00:00' WHERE id = :id"), {"id": old})
    (queue,) = ConsoleStore(store).overview()
    assert (queue.oldest_due_id, queue.counts["pending"]) == (old, 3)
    assert queue.oldest_due_age is not None and queue.oldest_due_age > 86400 * 365
