"""Orders (runner/ordering.py), without a database: when a queue's claims are made by the transactions that
run its jobs, when they are plain again, and that every job still ends once with its own verdict."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import types
from typing import Any

import pytest

from pending_jobs import config
from pending_jobs.context import Context
from pending_jobs.models import ClaimedJob, Outcome, RunReport
from pending_jobs.registry import Task, held_task
from pending_jobs.runner import Executor, Producer, ordering, shared
from pending_jobs.workers import Slot

from .memory_store import MemoryStore
from .test_shared import TASKS, job, noop  # "plain", and "sql", whose jobs share a transaction

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


# Orders on their own: the decisions the producer asks for (note_claim, submit, collected), on a clock of the
# test's own (`time.monotonic`'s reference point is undefined, so any reading must do) and a pool that only
# records what it is handed.


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


class FakePool:
    def __init__(self, busy: int = 0) -> None:
        self.busy = busy
        self.orders: list[ordering.Order] = []

    def submit_all(self, items: list[ordering.Order]) -> None:
        self.orders.extend(items)


def pool_of(busy: int = 0) -> Any:  # as Orders.submit's WorkerPool
    return FakePool(busy)


def orders_of(store: MemoryStore | None = None, tasks: dict[str, Task] = TASKS, job_seconds: float | None = 0.001,
              held_queues: dict[str, str] | None = None, **overrides: Any) -> ordering.Orders:
    """Orders of a runner whose jobs have taken `job_seconds` each in groups so far."""
    store = store or store_with()
    settings = config.load({}, environ={}).replace(**{"batch_size": 20, "concurrency": 2, **overrides})
    worker = shared.Worker(Executor(store, tasks, settings, held_queues=held_queues), 2)
    worker._job_seconds = job_seconds  # as the groups that ended so far left it (a moving average)
    return ordering.Orders(store, worker, settings, "unit-test")


def full(count: int = 20, task: str = "sql") -> list[ClaimedJob]:
    return [job(n, task) for n in range(1, count + 1)]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(ordering, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    return clock


def test_orders_are_for_the_tasks_that_share_a_transaction_and_are_not_held() -> None:
    tasks = {**TASKS, "held_sql": held_task("held_sql", "its [task.held_sql] table has an error"),
             "also_sql": Task("also_sql", noop, shared=TASKS["sql"].shared)}
    assert orders_of(tasks=tasks).tasks == ("also_sql", "sql")  # sorted; not "plain" (no shared), nor the held


def test_a_full_claim_of_fast_shareable_jobs_makes_the_queues_claims_orders(clock: Clock) -> None:
    orders, pool = orders_of(), pool_of()
    orders.note_claim("default", full(20), 20)

    assert orders.submit("default", 20, pool, 2) is True
    assert [(o.queue, o.tasks, o.limit, o.owner, o.found, o.gave_up) for o in pool.orders] == [
        ("default", ("sql",), 20, "unit-test", 0, None)] * 2  # one per idle worker, a group's worth each
    assert orders.submit("other", 20, pool_of(), 2) is None  # another queue's claims stay plain


@pytest.mark.parametrize("now", [0.0, 0.5, 1e6])
def test_a_queue_never_noted_makes_no_orders_whatever_the_clock_reads(clock: Clock, now: float) -> None:
    clock.now = now
    pool = pool_of()
    assert orders_of().submit("default", 20, pool, 2) is None and pool.orders == []


def test_a_claim_limit_of_one_or_two(clock: Clock) -> None:
    """An order is for a group: a claim of one job at a time says nothing of a backlog; two full is one."""
    one = orders_of()
    one.note_claim("default", full(1), 1)
    assert one.submit("default", 1, pool_of(), 2) is None

    two, pool = orders_of(), pool_of()
    two.note_claim("default", full(2), 2)
    assert two.submit("default", 2, pool, 2) is True
    assert [order.limit for order in pool.orders] == [2, 2]


def test_an_order_asks_for_as_many_jobs_as_a_group_holds_at_most_the_limit(clock: Clock) -> None:
    orders, pool = orders_of(job_seconds=0.001), pool_of()  # a group holds GROUP_SECONDS / 0.001 = 1000 jobs
    orders.note_claim("default", full(20), 20)
    assert orders.submit("default", 50, pool, 3) is True
    assert [order.limit for order in pool.orders] == [50, 50, 50]

    slowish, pool = orders_of(job_seconds=0.009), pool_of()  # fast still, but a group holds 111
    slowish.note_claim("default", full(20), 20)
    assert slowish.submit("default", 500, pool, 1) is True
    assert [order.limit for order in pool.orders] == [111]


def test_no_orders_for_busy_workers(clock: Clock) -> None:
    orders = orders_of()
    orders.note_claim("default", full(20), 20)

    one_idle, none_idle = pool_of(busy=2), pool_of(busy=3)
    assert orders.submit("default", 20, one_idle, 3) is True and len(one_idle.orders) == 1
    assert orders.submit("default", 20, none_idle, 3) is False and none_idle.orders == []


def test_a_claim_with_a_job_that_cannot_share_a_transaction_makes_no_orders(clock: Clock) -> None:
    """A job of an ordering task whose row has a problem runs alone, to get its own verdict."""
    orders = orders_of()
    jobs = full(20)
    jobs[7] = job(8, problem="attempts is 'x', not a whole number")
    orders.note_claim("default", jobs, 20)
    assert orders.submit("default", 20, pool_of(), 2) is None

    orders.note_claim("default", [*full(19), job(20, "plain")], 20)
    assert orders.submit("default", 20, pool_of(), 2) is None


def test_only_a_queue_the_store_may_claim_together_makes_orders(clock: Clock) -> None:
    store = store_with()
    asked: list[str] = []

    def claims_together(queue: str) -> bool:
        asked.append(queue)
        return queue == "default"

    store.claims_together = claims_together  # type: ignore[method-assign]
    orders = orders_of(store)
    orders.note_claim("default", full(20), 20)
    assert asked == ["default"] and orders.submit("default", 20, pool_of(), 2) is True


def test_jobs_that_took_fast_job_seconds_or_none_yet_make_no_orders(clock: Clock) -> None:
    for seconds in (ordering.FAST_JOB, None):
        orders = orders_of(job_seconds=seconds)
        orders.note_claim("default", full(20), 20)
        assert orders.submit("default", 20, pool_of(), 2) is None, seconds


def test_claims_are_orders_for_ordering_seconds_and_then_plain_again(clock: Clock) -> None:
    orders = orders_of()
    orders.note_claim("default", full(20), 20)

    clock.now += ordering.ORDERING / 2
    assert orders.submit("default", 20, pool_of(), 2) is True
    clock.now += ordering.ORDERING / 2  # ORDERING seconds after the claim: the next claim is a plain one
    assert orders.submit("default", 20, pool_of(), 2) is None


def test_jobs_turning_slow_end_the_orders(clock: Clock) -> None:
    orders = orders_of()
    orders.note_claim("default", full(20), 20)
    orders.worker._job_seconds = ordering.FAST_JOB * 2
    assert orders.submit("default", 20, pool_of(), 2) is None
    orders.worker._job_seconds = 0.001  # fast again: plain claims until one comes back full again
    assert orders.submit("default", 20, pool_of(), 2) is None


def finished(order: Any, outcomes: int) -> tuple[Slot[Any], list[Outcome]]:
    return Slot(order), [Outcome.success(job(n)) for n in range(1, outcomes + 1)]


def test_collected_counts_the_jobs_of_finished_orders_only(clock: Clock) -> None:
    orders = orders_of()
    report = RunReport()
    full_order = ordering.Order("default", ("sql",), 3, "unit-test", found=3)
    results = [finished(job(99), 1), finished(full_order, 3), finished(job(98), 1), finished(full_order, 3)]

    assert orders.collected(results, report) == 6  # a plain job's outcome was counted when it was claimed
    assert report.claimed == 6


def test_an_order_that_finds_fewer_jobs_than_it_asked_for_ends_the_orders_quietly(
        clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ordering.__name__)
    orders = orders_of()
    orders.note_claim("default", full(20), 20)
    orders.note_claim("other", [dataclasses.replace(j, queue="other") for j in full(20)], 20)

    done = ordering.Order("default", ("sql",), 5, "unit-test", found=5)
    assert orders.collected([finished(done, 5)], RunReport()) == 5
    assert orders.submit("default", 20, pool_of(), 2) is True  # a full order: still orders

    short = ordering.Order("default", ("sql",), 5, "unit-test", found=4)
    assert orders.collected([finished(short, 4), finished(short, 4)], RunReport()) == 8  # the second: no error
    assert orders.submit("default", 20, pool_of(), 2) is None  # the backlog is done: plain claims again
    assert orders.submit("other", 20, pool_of(), 2) is True  # another queue's orders go on
    assert [r for r in caplog.records if r.name == ordering.__name__] == []


def test_an_order_that_wrote_nothing_ends_the_orders_and_says_why(
        clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ordering.__name__)
    orders = orders_of()
    orders.note_claim("default", full(20), 20)

    gave_up = ordering.Order("default", ("sql",), 5, "unit-test", found=5, gave_up="ValueError: duplicate key")
    assert orders.collected([finished(gave_up, 0)], RunReport()) == 0

    assert orders.submit("default", 20, pool_of(), 2) is None
    assert [r.getMessage() for r in caplog.records if r.name == ordering.__name__] == [
        "queue default: claims are plain again: an order wrote nothing (ValueError: duplicate key)"]


def test_not_claimed_says_why_a_job_was_not_claimed() -> None:
    store = store_with("sql", "sql")
    pending, done = sorted(store.rows)
    store.rows[done].status = "succeeded"

    assert ordering.not_claimed(404, store.get(404)) == "job 404 is missing, not pending: nothing to run"
    assert ordering.not_claimed(done, store.get(done)) == f"job {done} is succeeded, not pending: nothing to run"
    assert ordering.not_claimed(pending, store.get(pending)) == (
        f"job {pending} is pending but locked by another run's transaction (an order's, most likely): try again")
