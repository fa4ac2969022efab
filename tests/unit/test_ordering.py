"""Orders (runner/ordering.py), without a database: when a queue's claims are made by the transactions that
run its jobs, when they are plain again, and that every job still ends once with its own verdict."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from pending_jobs import config
from pending_jobs.context import Context
from pending_jobs.models import RunReport
from pending_jobs.registry import Task
from pending_jobs.runner import Executor, Producer, ordering, shared

from .memory_store import MemoryStore
from .test_shared import TASKS, noop  # "plain", and "sql", whose jobs share a transaction

ONCE = ["pending", "succeeded"]  # an order's job: one status change
TWICE = ["pending", "running", "succeeded"]  # a plain claim's


def store_with(*tasks: str, count: int = 1) -> MemoryStore:
    store = MemoryStore()
    store.together = True
    for _ in range(count):
        for task in tasks:
            store.add(task)
    return store


def run(store: MemoryStore, tasks: dict[str, Task] = TASKS, **overrides: Any) -> RunReport:
    settings = config.load({}, environ={}).replace(**{"poll": 0.0, "batch_size": 20, "concurrency": 2, **overrides})
    report = RunReport()
    Producer(store, Executor(store, tasks, settings), settings, report, "unit-test").run()
    return report


def histories(store: MemoryStore) -> list[list[str]]:
    return [row.history for row in store.rows.values()]


def test_after_a_full_claim_of_shareable_jobs_the_rest_change_status_once() -> None:
    store = store_with("sql", count=300)

    report = run(store)

    assert (report.claimed, report.succeeded, report.stopped_by) == (300, 300, "empty")
    assert store.orders > 0
    # The first claims' (until a group has ended, how long a job takes is not known), then orders'.
    assert histories(store).count(TWICE) + histories(store).count(ONCE) == 300
    assert histories(store).count(ONCE) >= 200
    assert all(row.attempts == 1 for row in store.rows.values())
    assert all(row.result == {"rowcount": 1} for row in store.rows.values() if row.history == ONCE)


@pytest.mark.parametrize("count", [5, 19])
def test_claims_that_come_back_short_make_no_orders(count: int) -> None:
    store = store_with("sql", count=count)

    assert run(store).succeeded == count
    assert store.orders == 0 and histories(store) == [TWICE] * count


def test_a_queue_that_mixes_other_tasks_in_is_never_claimed_by_orders() -> None:
    store = store_with("sql", "sql", "sql", "plain", count=50)

    report = run(store)

    assert (report.claimed, report.succeeded) == (200, 200)
    assert store.orders == 0


def test_no_orders_on_one_writer_nor_with_max_jobs_nor_in_a_held_queue() -> None:
    one_writer = store_with("sql", count=100)
    one_writer.together = False  # SQLite: claims_together is False
    assert run(one_writer).succeeded == 100 and one_writer.orders == 0

    limited = store_with("sql", count=100)
    report = run(limited, max_jobs=50)
    assert (report.claimed, report.succeeded, limited.orders) == (50, 50, 0)

    held = store_with("sql", count=60)
    settings = config.load({}, environ={}).replace(poll=0.0, batch_size=20, concurrency=2)
    executor = Executor(held, TASKS, settings, held_queues={"default": "its [queue.default] table has an error"})
    report = RunReport()
    Producer(held, executor, settings, report, "unit-test").run()
    assert held.orders == 0  # its jobs go back pending (held.py), not into an order's transaction


def test_an_order_that_writes_nothing_leaves_its_jobs_to_plain_claims_which_give_each_its_verdict() -> None:
    def shared_refusing(payloads: Any, connection: Any, stopping: Any) -> list[dict[str, int]]:
        if any(payload.get("bad") for payload in payloads):
            raise ValueError("duplicate entry for key users_email_key")
        return [{"rowcount": 1} for _ in payloads]

    def alone(payload: dict[str, Any], ctx: Context) -> None:
        if payload.get("bad"):
            raise ValueError("duplicate entry for key users_email_key")

    tasks = {"sql": Task("sql", alone, backoff=lambda attempt: 0.0, max_attempts=2, shared=shared_refusing)}
    store = store_with("sql", count=100)
    bad = store.add("sql", {"bad": True})
    for _ in range(100):
        store.add("sql")

    report = run(store, tasks)

    assert store.orders > 0
    assert store.rows[bad].status == "failed" and store.rows[bad].attempts == 2
    assert "users_email_key" in (store.rows[bad].last_error or "")
    good = [row for row in store.rows.values() if row.id != bad]
    assert all(row.status == "succeeded" and row.attempts == 1 and row.history.count("succeeded") == 1 for row in good)
    assert (report.succeeded, report.failed) == (200, 1)


def test_another_tasks_job_due_first_waits_no_longer_than_a_plain_claim_takes_to_come_round(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Orders take only the shareable tasks' jobs: a plain claim looks at the queue's head every ORDERING
    seconds, so a job of another task that comes due while a backlog runs is not left behind it."""
    monkeypatch.setattr(ordering, "ORDERING", 0.05)
    done: list[int] = []
    lock = threading.Lock()

    def slow_shared(payloads: Any, connection: Any, stopping: Any) -> list[dict[str, int]]:
        time.sleep(0.002 * len(payloads))
        with lock:
            done.extend([1] * len(payloads))
        return [{"rowcount": 1} for _ in payloads]

    seen: list[int] = []

    def plain(payload: dict[str, Any], ctx: Context) -> None:
        seen.append(len(done))

    tasks = {"plain": Task("plain", plain), "sql": Task("sql", noop, shared=slow_shared)}
    store = store_with("sql", count=600)  # ≥ 0.6 s of work for two workers
    late = store.add("plain", priority=10, run_at=time.monotonic() + 0.15)

    run(store, tasks)

    assert store.orders > 0 and store.rows[late].status == "succeeded"
    assert seen and seen[0] < 500, f"the plain job ran after {seen} of 600 backlog jobs"


def test_an_order_stops_between_its_jobs_once_a_group_has_lasted_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its rows stay locked (`pending`) until it commits: slow jobs after fast ones, in an order sized by the
    fast ones' time, must not hold them for longer than a group may last. The jobs it did not reach are left
    untouched for the next order."""
    monkeypatch.setattr(shared, "GROUP_SECONDS", 0.05)

    def one_by_one(payloads: Any, connection: Any, stopping: Any) -> list[dict[str, int]]:
        results = []
        for payload in payloads:
            if stopping():
                break
            time.sleep(0.01 if payload.get("slow") else 0.0)
            results.append({"rowcount": 1})
        return results

    tasks = {"sql": Task("sql", noop, shared=one_by_one)}
    store = store_with("sql", count=200)
    for _ in range(60):
        store.add("sql", {"slow": True})

    report = run(store, tasks, concurrency=1)

    assert (report.claimed, report.succeeded) == (260, 260)
    assert all(row.history.count("succeeded") == 1 and row.attempts == 1 for row in store.rows.values())
    assert any(locked > ran for locked, ran in store.order_runs)  # stopped early, the rest left for the next
    assert all(1 <= ran <= 6 for locked, ran in store.order_runs if locked > ran)  # 0.05 s of 0.01 s jobs


def test_a_run_that_leaves_an_order_running_after_its_grace_period_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """An order's jobs are `pending` under its transaction, never `running` under a lease: the warning of a run
    that stops waiting for its workers must count them among what it leaves running, and not as leases."""
    ordering_started, release = threading.Event(), threading.Event()

    def one_statement(payloads: Any, connection: Any, stopping: Any) -> list[dict[str, int]]:
        ordering_started.set()  # only orders call it here: the memory store runs a claim's jobs alone
        release.wait(5)  # one statement for all of them: no stop between its jobs
        return [{"rowcount": 1} for _ in payloads]

    store = store_with("sql", count=300)
    settings = config.load({}, environ={}).replace(poll=0.0, batch_size=20, concurrency=2, grace=0.1)
    producer = Producer(store, Executor(store, {"sql": Task("sql", noop, shared=one_statement)}, settings),
                        settings, RunReport(), "unit-test")
    thread = threading.Thread(target=producer.run)
    thread.start()
    try:
        assert ordering_started.wait(5)
        producer.signal()
        thread.join(5)
    finally:
        release.set()
        thread.join(5)

    [warning] = [record.getMessage() for record in caplog.records if "grace period" in record.getMessage()]
    assert "order(s), their jobs pending" in warning, warning
    assert "0 job(s)" not in warning and "leases to expire" not in warning, warning


def test_slow_jobs_are_not_claimed_by_orders_and_a_backlog_turning_slow_ends_them() -> None:
    """Slow jobs gain little from one status change less, and an order's rows read `pending` while it runs."""

    def slow_after(fast: int) -> Task:
        """The `sql` task, whose jobs after the first `fast` take twice FAST_JOB (alone, where the memory store
        runs a group's jobs, or in an order)."""
        done: list[int] = []

        def one(payload: Any = None, ctx: Any = None) -> dict[str, int]:
            time.sleep(0.0 if len(done) < fast else ordering.FAST_JOB * 2)
            done.append(1)
            return {"rowcount": 1}

        def shared_work(payloads: Any, connection: Any, stopping: Any) -> list[dict[str, int]]:
            results = []
            for _ in payloads:
                if stopping():
                    break
                results.append(one())
            return results

        return Task("sql", one, shared=shared_work)

    slow = store_with("sql", count=60)
    run(slow, {"sql": slow_after(0)})
    assert slow.orders == 0 and slow.statuses() == {"succeeded": 60}

    turning = store_with("sql", count=500)
    report = run(turning, {"sql": slow_after(300)})
    assert report.succeeded == 500 and turning.orders > 0
    last = max(job_id for job_id, row in turning.rows.items() if row.history == ONCE)
    assert last < 440, last  # plain claims again once the time a job takes (a moving average) says slow
