"""How the producer hands jobs that can share a transaction to the pool (runner/shared.py), without a
database: the grouping, and that every job of a group still ends with one outcome."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pending_jobs import config
from pending_jobs.context import Context
from pending_jobs.models import ClaimedJob, Outcome, RunReport, Together
from pending_jobs.registry import Task
from pending_jobs.runner import Executor, Producer
from pending_jobs.runner.shared import GROUP_MIN, Shared, Worker

from .memory_store import MemoryStore


def noop(payload: dict[str, Any], ctx: Context) -> None:
    return None


def shared_noop(payloads: Any, connection: Any, stopping: Any) -> list[dict[str, int]]:
    return [{"rowcount": 1} for _ in payloads]


TASKS = {"plain": Task("plain", noop, backoff=lambda attempt: 0.0),
         "sql": Task("sql", noop, backoff=lambda attempt: 0.0, shared=shared_noop)}


def job(job_id: int, task: str = "sql", problem: str | None = None) -> ClaimedJob:
    return ClaimedJob(job_id, task, "default", "{}", 1, 5, 0, None, "token", problem)


def worker(workers: int, store: MemoryStore | None = None) -> Worker:
    settings = config.load({}, environ={})
    return Worker(Executor(store or MemoryStore(), TASKS, settings), workers)


def test_a_claim_is_split_into_one_group_per_worker_and_the_rest_alone() -> None:
    jobs = [job(n) for n in range(1, 41)] + [job(41, "plain"), job(42, problem="attempts is 'x'"), job(43, "gone")]

    items = worker(4).split(jobs)

    groups = [item for item in items if isinstance(item, Shared)]
    assert [len(group.jobs) for group in groups] == [10, 10, 10, 10]
    assert [j.id for group in groups for j in group.jobs] == list(range(1, 41))  # claim order kept
    assert [item.id for item in items if isinstance(item, ClaimedJob)] == [41, 42, 43]


def test_small_claims_make_fewer_groups_and_a_lone_job_no_group() -> None:
    assert [len(i.jobs) for i in worker(4).split([job(n) for n in range(1, 18)]) if isinstance(i, Shared)] == [9, 8]
    assert [len(i.jobs) for i in worker(4).split([job(n) for n in range(1, 4)]) if isinstance(i, Shared)] == [3]
    assert worker(4).split([job(1)]) == [job(1)]


def test_a_claim_made_beside_running_groups_makes_only_as_many_groups_as_workers_are_idle() -> None:
    jobs = [job(n) for n in range(1, 25)]
    sizes = {idle: [len(i.jobs) for i in worker(4).split(jobs, idle) if isinstance(i, Shared)]
             for idle in (None, 4, 2, 1, 0, -3)}
    assert sizes == {None: [8, 8, 8], 4: [8, 8, 8], 2: [12, 12], 1: [24], 0: [24], -3: [24]}
    one_writer = worker(4, MemoryStore(concurrent_writers=False))  # SQLite: no claim beside a group, so split
    assert [len(i.jobs) for i in one_writer.split(jobs, 1) if isinstance(i, Shared)] == [8, 8, 8]


def group_sizes(split: Worker, jobs: int, idle: int | None) -> list[int]:
    return [len(item.jobs) for item in split.split([job(n) for n in range(1, jobs + 1)], idle)
            if isinstance(item, Shared)]


def test_before_a_group_has_ended_none_is_larger_than_a_workers_share_of_a_whole_batch() -> None:
    """How long a job takes is not known yet: a group of 100 slow jobs would hold its rows for their time."""
    assert group_sizes(worker(4), 100, None) == [25, 25, 25, 25]
    assert all(max(group_sizes(worker(4), 100, idle)) <= 25 for idle in (2, 1, 0))
    assert group_sizes(worker(4), 40, 1) == [20, 20]


def test_groups_hold_what_takes_about_a_second_by_the_time_jobs_took_in_groups_so_far() -> None:
    slow = worker(4, CulpritStore())  # commits every group at once, but its jobs take 0.15 s each here
    slow._together = lambda jobs: (time.sleep(0.15 * len(jobs)), [])[1]  # type: ignore[method-assign]
    slow(Shared([job(n) for n in (1, 2)]))
    assert slow.largest() == GROUP_MIN  # 1 s holds 6 such jobs; never fewer than GROUP_MIN
    assert max(group_sizes(slow, 100, 0)) <= GROUP_MIN + 1 and sum(group_sizes(slow, 100, 0)) == 100
    fast = worker(4, CulpritStore())
    fast(Shared([job(n) for n in (1, 2)]))  # the store commits at once: well under a millisecond a job
    assert fast.largest() > 1000  # a group stops between its jobs after a signal, whatever its size
    assert group_sizes(fast, 100, 0) == [100] and group_sizes(fast, 100, None) == [25, 25, 25, 25]
    assert group_sizes(fast, 20, 0) == [20]  # a claim beside running groups makes fewer groups


class CulpritStore(MemoryStore):
    """A store whose shared transactions fail at the job with id 3 until it is taken out, then commit."""

    def __init__(self) -> None:
        super().__init__()
        self.tries: list[list[int]] = []

    def run_together(self, jobs: Any, work: Any) -> Together:
        ids = [j.id for j in jobs]
        self.tries.append(ids)
        return Together(False, ids.index(3), "boom") if 3 in ids else Together(True)


def test_a_culprit_is_taken_out_and_runs_alone_while_the_others_share_again() -> None:
    store = CulpritStore()
    for _ in range(1, 6):
        store.add("sql")
    outcomes: list[Outcome] = worker(1, store)(Shared([job(n) for n in range(1, 6)]))

    assert store.tries == [[1, 2, 3, 4, 5], [1, 2, 4, 5]]
    kinds = {o.job.id: o.kind for o in outcomes}
    assert kinds == {1: "recorded", 2: "recorded", 4: "recorded", 5: "recorded", 3: "succeeded"}  # 3 by the executor


def test_every_job_of_a_group_gets_its_outcome_when_sharing_is_refused() -> None:
    store = MemoryStore()  # refuses: no connection, so every job runs alone through the executor
    for _ in range(60):
        store.add("sql")
    for _ in range(5):
        store.add("plain")
    settings = config.load({}, environ={}).replace(poll=0.0, batch_size=25, concurrency=3)
    report = RunReport()
    Producer(store, Executor(store, TASKS, settings), settings, report, "unit-test").run()

    assert store.statuses() == {"succeeded": 65}
    assert (report.claimed, report.succeeded, report.stopped_by) == (65, 65, "empty")


class SlowGroupStore(MemoryStore):
    """A store whose first shared transaction lasts until the next claim is made (or `wait` seconds), then
    commits."""

    def __init__(self, concurrent_writers: bool, wait: float) -> None:
        super().__init__(concurrent_writers=concurrent_writers)
        self.wait = wait
        self.claimed_while_grouped: list[bool] = []

    def run_together(self, jobs: Any, work: Any) -> Together:
        if not self.claimed_while_grouped:
            seen = self.claims
            deadline = time.monotonic() + self.wait
            while self.claims == seen and time.monotonic() < deadline:
                time.sleep(0.005)
            self.claimed_while_grouped.append(self.claims > seen)
        with self.lock:
            for claimed in jobs:
                self._set(self.rows[claimed.id], "succeeded")
        return Together(True)


@pytest.mark.parametrize(("concurrent_writers", "wait"), [(True, 5.0), (False, 0.3)])
def test_the_next_claim_is_made_while_every_worker_runs_a_group(concurrent_writers: bool, wait: float) -> None:
    """A claim split into groups keeps every worker busy with nothing waiting: the next claim is made then,
    not after a group ends (it waited, and a declared sql drain made ≈ 10 % fewer jobs/s). Not with one
    writer (SQLite), where that claim would only wait for the group's transaction to end."""
    store = SlowGroupStore(concurrent_writers, wait)
    for _ in range(20):
        store.add("sql")
    settings = config.load({}, environ={}).replace(poll=0.0, batch_size=10, concurrency=1)
    report = RunReport()
    Producer(store, Executor(store, TASKS, settings), settings, report, "unit-test").run()

    assert store.claimed_while_grouped == [concurrent_writers]
    assert store.statuses() == {"succeeded": 20}
    assert (report.claimed, report.succeeded, report.stopped_by) == (20, 20, "empty")


class StepStore(MemoryStore):
    """Shared transactions that commit the jobs `work` ran, as the SQL store does (store/shared.py)."""

    def run_together(self, jobs: Any, work: Any) -> Together:
        return Together(True, unstarted=len(jobs) - len(work(None, jobs)))


def test_a_group_stops_between_its_jobs_when_the_run_stops_and_gives_the_others_back() -> None:
    calls: list[int] = []
    split = worker(1, StepStore())

    def slow(payloads: Any, connection: Any, stopping: Any) -> list[dict[str, int]]:  # statements sent together
        calls.append(len(payloads))  # (never stopping between them), 0.15 s a job
        time.sleep(0.15 * len(payloads))
        if sum(calls) == 3:
            split.stop()  # SIGTERM while the third job runs (the first of the second group)
        return [{"rowcount": 1} for _ in payloads]

    split.executor.tasks = {"sql": Task("sql", noop, backoff=lambda attempt: 0.0, shared=slow)}
    split(Shared([job(n) for n in (1, 2)]))  # the first group, in one step: now a job's time is known
    outcomes = split(Shared([job(n) for n in range(3, 43)]))

    assert [(o.job.id, o.kind) for o in outcomes] == [(n, "recorded" if n <= 3 else "unstarted") for n in range(3, 43)]
    assert calls == [2, 1]  # one slow job a step: the stop is looked at between steps
    assert [o.kind for o in split(Shared([job(n) for n in (41, 42)]))] == ["unstarted"] * 2  # nothing starts now


def test_fast_jobs_of_a_group_still_go_together() -> None:
    calls: list[int] = []

    def fast(payloads: Any, connection: Any, stopping: Any) -> list[dict[str, int]]:
        calls.append(len(payloads))
        return [{"rowcount": 1} for _ in payloads]

    split = worker(1, StepStore())
    split.executor.tasks = {"sql": Task("sql", noop, backoff=lambda attempt: 0.0, shared=fast)}
    split(Shared([job(n) for n in range(1, 51)]))
    split(Shared([job(n) for n in range(51, 151)]))
    assert calls == [50, 100]


def test_a_task_that_runs_its_jobs_one_by_one_stops_between_them() -> None:
    """The steps follow the time jobs took so far: fast jobs make one step of a whole group, and the slow
    ones after them are stopped by the task itself (a declared sql task that reads, SqlTask.shared)."""
    split = worker(1, StepStore())
    ran: list[int] = []

    def one_by_one(payloads: Any, connection: Any, stopping: Any) -> list[dict[str, int]]:
        results = []
        for _ in payloads:
            if stopping():
                break
            ran.append(1)
            if len(ran) == 13:
                split.stop()
            results.append({"rowcount": 1})
        return results

    split.executor.tasks = {"sql": Task("sql", noop, backoff=lambda attempt: 0.0, shared=one_by_one)}
    split(Shared([job(n) for n in range(1, 11)]))  # fast: the next group goes in one step
    outcomes = split(Shared([job(n) for n in range(11, 111)]))
    assert [o.kind for o in outcomes] == ["recorded"] * 3 + ["unstarted"] * 97
