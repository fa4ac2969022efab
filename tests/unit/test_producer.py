"""The runner's loop against the in-memory store: its exits, back-pressure, release and timeouts, in
milliseconds and without a database."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from pending_jobs import config
from pending_jobs.context import Context
from pending_jobs.errors import CommandFailed, DatabaseUnavailable, Retry
from pending_jobs.models import ClaimedJob, RunReport, Together
from pending_jobs.registry import Task
from pending_jobs.runner import Executor, Producer
from pending_jobs.runner.waiting import CANCELLED_WAITING

from .memory_store import MemoryStore


def settings(**overrides: Any) -> config.Settings:
    overrides.setdefault("poll", 0.0)  # drain unless a test serves
    return config.load({}, environ={}).replace(**overrides)


def tasks(**handlers: Callable[[dict[str, Any], Context], Any]) -> dict[str, Task]:
    return {name: Task(name, fn, backoff=lambda attempt: 0.0) for name, fn in handlers.items()}


def noop(payload: dict[str, Any], ctx: Context) -> None:
    return None


def producer(store: MemoryStore, handlers: dict[str, Task], **overrides: Any) -> tuple[Producer, RunReport]:
    report = RunReport()
    s = settings(**overrides)
    return Producer(store, Executor(store, handlers, s), s, report, "unit-test"), report


def run(store: MemoryStore, handlers: dict[str, Task], **overrides: Any) -> RunReport:
    p, report = producer(store, handlers, **overrides)
    p.run()
    return report


@pytest.mark.parametrize("concurrent", [True, False])
def test_drains_everything_then_stops_empty(concurrent: bool) -> None:
    store = MemoryStore(concurrent_writers=concurrent)
    for _ in range(250):
        store.add("noop")
    report = run(store, tasks(noop=noop), batch_size=50)
    assert store.statuses() == {"succeeded": 250}
    assert (report.claimed, report.succeeded, report.stopped_by) == (250, 250, "empty")


def test_an_outcome_waiting_to_be_collected_is_never_lost_when_the_claim_finds_nothing() -> None:
    """The pool had finished the only job, its result not yet taken, when the next claim found nothing:
    the run must still record it (it once stopped "empty" and left the job running)."""
    store = MemoryStore()
    job = store.add("noop")
    report = run(store, tasks(noop=noop))
    assert store.status(job) == "succeeded" and report.succeeded == 1


def test_an_immediate_retry_is_run_again_in_the_same_run() -> None:
    store = MemoryStore()
    job = store.add("flaky")
    seen: list[int] = []

    def flaky(payload: dict[str, Any], ctx: Context) -> str:
        seen.append(ctx.attempt)
        if ctx.attempt < 3:
            raise Retry(delay=0)
        return "done"

    report = run(store, tasks(flaky=flaky))
    assert seen == [1, 2, 3]
    assert store.status(job) == "succeeded" and (report.retried, report.succeeded) == (2, 1)


def test_max_jobs_stops_after_that_many() -> None:
    store = MemoryStore()
    for _ in range(30):
        store.add("noop")
    report = run(store, tasks(noop=noop), max_jobs=7)
    assert (report.claimed, report.stopped_by) == (7, "max-jobs")
    assert store.statuses() == {"succeeded": 7, "pending": 23}


def test_max_runtime_stops_claiming_and_lets_running_jobs_finish() -> None:
    store = MemoryStore()
    long_job = store.add("slow")
    for _ in range(20):
        store.add("noop", priority=-1)
    release = threading.Event()

    def slow(payload: dict[str, Any], ctx: Context) -> str:
        release.wait(5)
        return "finished"

    threading.Timer(0.4, release.set).start()
    report = run(store, tasks(slow=slow, noop=noop), max_runtime=0.1, concurrency=1, batch_size=5, grace=0.01)
    # The long job outlived max-runtime and its (tiny) grace: it was let finish, not abandoned.
    assert store.status(long_job) == "succeeded"
    assert report.stopped_by == "max-runtime"
    # Claimed but never started: back to pending, the attempt uncounted.
    assert report.released == 4 and report.claimed == 1
    assert all(row.attempts == 0 for row in store.rows.values() if row.status == "pending")


def test_a_signal_releases_unstarted_jobs_and_gives_running_ones_the_grace_period() -> None:
    store = MemoryStore()
    stuck = store.add("hang")
    others = [store.add("noop", priority=-1) for _ in range(3)]
    p, report = producer(store, tasks(hang=lambda payload, ctx: time.sleep(10), noop=noop), concurrency=1,
                         grace=0.2, poll=0.05)
    threading.Timer(0.2, p.signal).start()
    started = time.monotonic()
    p.run()
    assert time.monotonic() - started < 2
    assert report.stopped_by == "signal"
    assert store.status(stuck) == "running"  # left to its lease: the next run rescues it
    assert [store.status(job) for job in others] == ["pending"] * 3 and report.released == 3


def test_a_job_cancelled_while_it_waited_counts_as_cancelled_when_a_signal_puts_the_others_back() -> None:
    store = MemoryStore()
    store.add("hang")
    others = [store.add("noop", priority=-1) for _ in range(3)]

    def hang(payload: dict[str, Any], ctx: Context) -> None:
        store.rows[others[0]].cancel_requested = True  # an operator's cancel of a job claimed, not started
        p.signal()
        time.sleep(10)

    p, report = producer(store, tasks(hang=hang, noop=noop), concurrency=1, grace=0.2, poll=0.05)
    p.run()
    assert [store.status(job) for job in others] == ["cancelled", "pending", "pending"]
    # The runs row says what became of it: claimed and cancelled by this run, not put back.
    assert (report.claimed, report.cancelled, report.released) == (2, 1, 2)


def test_a_timed_out_handler_is_abandoned_and_the_pool_keeps_working() -> None:
    store = MemoryStore()
    stuck = store.add("hang")
    later = [store.add("noop", priority=-1) for _ in range(5)]
    handlers = tasks(noop=noop)
    handlers["hang"] = Task("hang", lambda payload, ctx: time.sleep(10), backoff=lambda attempt: 0.0, timeout=0.1)
    report = run(store, handlers, concurrency=1)
    row = store.rows[stuck]
    assert row.status == "failed" or row.status == "pending"
    assert "TimeoutError: handler ran longer than 0.1s" in (row.last_error or "")
    assert all(store.status(job) == "succeeded" for job in later)  # the replacement thread ran them
    assert report.succeeded == 5


def test_claims_run_a_few_writes_ahead_of_slow_completions_and_batch_them() -> None:
    store = MemoryStore(write_delay=0.05)
    for _ in range(400):
        store.add("noop")
    report = run(store, tasks(noop=noop), batch_size=20)
    assert report.succeeded == 400
    assert store.most_writing == 1  # one writer thread: batches are written one after the other
    assert store.writes < 400 / 20 * 2  # and batched: never a write per job


def test_queues_are_taken_round_robin() -> None:
    store = MemoryStore()
    order: list[str] = []
    for _ in range(3):
        store.add("note", {"q": "a"}, queue="a")
        store.add("note", {"q": "b"}, queue="b")
    run(store, tasks(note=lambda payload, ctx: order.append(payload["q"])), batch_size=1, concurrency=1)
    assert order == ["a", "b", "a", "b", "a", "b"]


def test_poll_mode_picks_up_a_job_added_while_it_waits() -> None:
    store = MemoryStore()
    threading.Timer(0.2, lambda: store.add("noop")).start()
    report = run(store, tasks(noop=noop), poll=0.05, max_runtime=0.6)
    assert report.succeeded == 1 and report.stopped_by == "max-runtime"


def test_an_outcome_whose_lease_was_taken_over_is_counted_stale() -> None:
    store = MemoryStore()
    job = store.add("steal")

    def steal(payload: dict[str, Any], ctx: Context) -> None:
        store.rows[job].lease_token = "someone-else"  # a rescue and a new claim happened meanwhile

    report = run(store, tasks(steal=steal))
    assert (report.succeeded, report.stale) == (0, 1)


def test_a_cancelled_job_whose_handler_gives_up_is_counted_cancelled() -> None:
    store = MemoryStore()
    job = store.add("gives_up")

    def gives_up(payload: dict[str, Any], ctx: Context) -> None:
        store.rows[job].cancel_requested = True  # `pending-jobs cancel` meanwhile
        assert ctx.cancel_requested()
        raise RuntimeError("stopping: cancel requested")

    report = run(store, tasks(gives_up=gives_up))
    assert store.status(job) == "cancelled"
    assert (report.cancelled, report.retried, report.stale) == (1, 0, 0)


def test_run_job_refuses_a_job_that_is_not_pending() -> None:
    store = MemoryStore()
    job = store.add("noop", status="succeeded")
    p, _ = producer(store, tasks(noop=noop))
    with pytest.raises(CommandFailed, match=f"job {job} is succeeded, not pending"):
        p.run(job_id=job)


def test_a_database_that_goes_away_while_writing_ends_the_run() -> None:
    store = MemoryStore()
    store.add("noop")
    store.fail_next_write = DatabaseUnavailable("server has gone away")
    with pytest.raises(DatabaseUnavailable, match="gone away"):
        run(store, tasks(noop=noop))


def test_heartbeats_renew_leases_while_a_handler_runs() -> None:
    store = MemoryStore()
    job = store.add("slow")
    report = run(store, tasks(slow=lambda payload, ctx: time.sleep(0.5)), lease=1.0)
    assert store.heartbeats >= 1 and store.status(job) == "succeeded" and report.succeeded == 1


def test_one_jobs_unstorable_outcome_never_costs_its_batch_mates_theirs() -> None:
    store = MemoryStore()
    jobs = [store.add("noop") for _ in range(10)]
    store.refuse = {jobs[3]}
    report = run(store, tasks(noop=noop))
    assert [store.status(job) for job in jobs] == ["succeeded"] * 3 + ["failed"] + ["succeeded"] * 6
    assert store.rows[jobs[3]].last_error.startswith("the job's outcome could not be recorded: ValueError: ")
    assert (report.succeeded, report.failed) == (9, 1)


def test_a_timed_out_handlers_transaction_is_closed() -> None:
    store = MemoryStore()
    job = store.add("hang")
    handlers = {"hang": Task("hang", lambda payload, ctx: time.sleep(3), backoff=lambda attempt: 0.0, timeout=0.1)}
    run(store, handlers, concurrency=1, max_jobs=1)
    assert store.abandoned == [job]


def test_a_batch_smaller_than_the_workers_still_keeps_every_worker_busy() -> None:
    """`--batch-size 1 --concurrency 2`: while one long job runs, the second worker takes the next job
    (it once waited: a run held no more jobs than one batch, so the long job ran alone)."""
    store = MemoryStore()
    both = threading.Barrier(2, timeout=5)

    def meet(payload: dict[str, Any], ctx: Context) -> None:
        both.wait()  # returns only when the other job runs at the same time

    store.add("meet")
    store.add("meet")
    report = run(store, tasks(meet=meet), batch_size=1, concurrency=2)
    assert store.statuses() == {"succeeded": 2}
    assert report.succeeded == 2


def test_a_job_cancelled_while_its_group_waits_ends_cancelled_and_the_rest_of_the_group_runs() -> None:
    """A claim's shared-transaction group waits behind a running job; one of its jobs is cancelled: the
    group is taken back, that job ends `cancelled` without running, the others go to the pool again."""
    store = MemoryStore()
    blocker = store.add("block")
    group = [store.add("sql", run_at=store.clock() + 3600) for _ in range(10)]  # due once the blocker runs
    ran: list[int] = []

    def block(payload: dict[str, Any], ctx: Context) -> None:
        for job_id in group:
            store.rows[job_id].run_at = 0.0
        until(lambda: all(store.status(job_id) == "running" for job_id in group))  # claimed ahead, waiting
        store.rows[group[3]].cancel_requested = True  # `pending-jobs cancel` of a running (claimed) job
        until(lambda: store.status(group[3]) == "cancelled")

    def sql(payload: dict[str, Any], ctx: Context) -> None:
        ran.append(ctx.job_id)

    shared = lambda payloads, conn, stopping: [None] * len(payloads)  # noqa: E731 (the memory store runs each alone)
    handlers = {"block": Task("block", block), "sql": Task("sql", sql, shared=shared)}
    report = run(store, handlers, concurrency=1, poll=0.02, max_jobs=11)
    assert store.status(blocker) == "succeeded"
    assert store.status(group[3]) == "cancelled" and store.rows[group[3]].last_error == CANCELLED_WAITING
    assert sorted(ran) == sorted(set(group) - {group[3]})  # each other job of the group ran, once
    assert (report.succeeded, report.cancelled, report.stale, report.stopped_by) == (10, 1, 0, "max-jobs")


class OneClaimStore(MemoryStore):
    """Refuses to run jobs of two claims together, as the database stores do (store/shared.py)."""

    def run_together(self, jobs: Sequence[ClaimedJob], work: Callable[[Any, Sequence[ClaimedJob]], Sequence[Any]]
                     ) -> Together:
        if len({job.token for job in jobs}) > 1:
            raise ValueError("jobs run together must come from one claim (one lease token)")
        return super().run_together(jobs, work)


def test_jobs_cancelled_in_two_waiting_groups_of_two_claims_leave_the_rest_of_each_claim_apart() -> None:
    """Two claims' groups wait (two queues) and a job of each is cancelled: the rest of each group goes back
    to the pool as its own claim's, never mixed in one group (every job of it failed: an internal error)."""
    store = OneClaimStore()
    blocker = store.add("block")
    groups = [[store.add("sql", queue=queue, run_at=store.clock() + 3600) for _ in range(10)] for queue in ("a", "b")]
    waiting = [job_id for group in groups for job_id in group]
    ran: list[int] = []

    def block(payload: dict[str, Any], ctx: Context) -> None:
        for job_id in waiting:
            store.rows[job_id].run_at = 0.0
        until(lambda: all(store.status(job_id) == "running" for job_id in waiting))  # two claims ahead, waiting
        for group in groups:
            store.rows[group[3]].cancel_requested = True
        until(lambda: all(store.status(group[3]) == "cancelled" for group in groups))

    def sql(payload: dict[str, Any], ctx: Context) -> None:
        ran.append(ctx.job_id)

    shared = lambda payloads, conn, stopping: [None] * len(payloads)  # noqa: E731 (the memory store runs each alone)
    handlers = {"block": Task("block", block), "sql": Task("sql", sql, shared=shared)}
    report = run(store, handlers, concurrency=1, poll=0.02, max_jobs=21)
    assert store.status(blocker) == "succeeded"
    assert sorted(ran) == sorted(set(waiting) - {group[3] for group in groups})  # each other job ran, once
    assert (report.succeeded, report.failed, report.cancelled, report.stopped_by) == (19, 0, 2, "max-jobs")


def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
