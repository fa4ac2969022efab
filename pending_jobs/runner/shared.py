"""What the worker pool runs: one job, or several jobs of a claim sharing one transaction.

A job whose task can share a transaction (`Task.shared`: a declared sql task on the job database)
would otherwise pay a COMMIT, a log flush, for its one INSERT. The producer hands such jobs of a
claim to the pool as `Shared` groups instead (`split`), one per idle worker so they still run side by
side, and claims the next batch as soon as workers run them (`ahead`), for the workers left; a group
runs in one transaction that ends with one guarded UPDATE to `succeeded` and one COMMIT
(`JobStore.run_together`). What does not fit runs alone through the executor, as before: a job whose
row or payload has a problem, whose handler raised in the group (its error becomes its verdict there,
retry or failure, with its own reason), and every job of a group whose lease was taken over or whose
commit failed (each job's own guarded transaction then decides). Retries, backoff and cancellation
are the executor's, unchanged; tasks with a timeout never share (see declared/sql.py).

When the run stops early (a signal, its runtime spent, a hand-over: `Worker.stop`), a running group stops
between its jobs: it commits those it ran with their `succeeded` and gives the others back as `unstarted`
outcomes, which the producer puts back pending, their attempt uncounted, as it does the jobs no worker
started. The stop is looked at before each job a task runs one by one (a declared sql task that reads),
and, for write-only statements sent together (store/direct.py), before each step: a group's jobs run in
steps of about STEP_SECONDS by the time a job has taken in groups so far (one job a step when jobs are
slow; a whole group at once when they are fast, so their statements still go together; the first groups,
before that time is known, in one step).

A backlog of such jobs is claimed by the transactions that run them instead (`Order`, ordering.py): a worker
locks its group, runs it here (`_ordered`, the same steps) and marks it `succeeded` in one transaction.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .. import validation
from ..models import ClaimedJob, Outcome
from .executor import Executor
from .ordering import Order

log = logging.getLogger(__name__)

GROUP_MIN = 8
"""Fewest jobs worth a shared transaction of their own: a claim is split into one group per idle worker,
but not into groups smaller than this (each group pays a COMMIT)."""
GROUP_SECONDS = 1.0
"""About how long a group may last: its transaction holds the rows its statements wrote until it commits.
A group holds at most the jobs that take this long together, by the time a job has taken in the groups so
far. (Not for a stopping run: a group stops between its jobs then, whatever its size.)"""
ROUNDS = 3
"""Shared transactions tried per group: each failing one takes its culprit out; then the rest run alone."""
STEP_SECONDS = 0.1
"""About how long a group runs between two looks whether the run stops (see the module)."""


@dataclasses.dataclass(frozen=True)
class Shared:
    """Jobs of one claim to run in one transaction."""

    jobs: list[ClaimedJob]


Work = ClaimedJob | Shared | Order


def jobs_of(item: Work) -> Sequence[ClaimedJob]:
    """The jobs a pool item holds (an order holds none until its transaction locks them)."""
    if isinstance(item, Order):
        return ()
    return item.jobs if isinstance(item, Shared) else (item,)


class Worker:
    """The pool's work: a job through the executor, or a `Shared` group in one transaction."""

    def __init__(self, executor: Executor, workers: int) -> None:
        self.executor = executor
        self.store = executor.store
        self.workers = max(1, workers)
        # Read per job by the pool (a task's timeout), per claim by `split`: looked up once here.
        self.timeouts = {name: task.timeout for name, task in executor.tasks.items() if task.timeout}
        self._sharing = any(task.shared is not None for task in executor.tasks.values())
        # Jobs of the groups workers are running now. The producer holds a batch ahead of its workers; a group
        # is a worker's whole share of a claim, so counting its jobs as waiting would hold the next claim back
        # until a group ends (its INSERTs, UPDATE and COMMIT), with every worker busy and none fed: a declared
        # sql drain made ≈ 10 % fewer jobs/s on MariaDB and PostgreSQL (docs/performance.md).
        # Not on SQLite: one writer, so a claim made beside a group's transaction waits for it anyway (and
        # made the drain ≈ 15 % slower, writers queueing for the lock).
        self._claim_beside_groups = self._sharing and self.store.concurrent_writers
        batch = executor.settings.batch_size
        self._first_largest = -(-batch // max(1, min(self.workers, batch // GROUP_MIN)))  # a batch split by all
        self._job_seconds: float | None = None  # a job's time in the groups so far (moving average)
        self._in_groups = 0
        self._counting = threading.Lock()
        self._stopping = threading.Event()
        self.on_group_start: Callable[[], None] = lambda: None
        """Called as a worker starts a group: the producer may claim again (`ahead` just fell)."""

    def stop(self) -> None:
        """The run stops: running groups stop before their next step, and groups started from now on run
        nothing; what they did not run comes back `unstarted`."""
        self._stopping.set()

    @property
    def job_seconds(self) -> float | None:
        """A job's time in groups so far (moving average), None before a group has ended."""
        return self._job_seconds

    def ahead(self, held: int) -> int:
        """Of `held` jobs handed to the pool and not yet collected, those no running group holds."""
        return held - self._in_groups

    def largest(self) -> int:
        """Most jobs in one group: as many as take GROUP_SECONDS together, by the time a job has taken in the
        groups so far; before any group has ended, a worker's share of a whole batch. Fast jobs so go in
        groups of a whole claim where a claim is made beside running groups (one COMMIT for 100 jobs). Slow
        jobs after fast ones may then make one group last longer than GROUP_SECONDS, until the average
        catches up; never longer after a signal, where a group stops between its jobs."""
        seconds = self._job_seconds
        if seconds is None:
            return self._first_largest
        return max(GROUP_MIN, int(GROUP_SECONDS / max(seconds, 1e-6)))

    def split(self, jobs: list[ClaimedJob], idle: int | None = None) -> list[Work]:
        """The claim as pool items: jobs that can share a transaction in up to one group per worker, the
        rest one by one (in claim order, groups first). With `idle` (workers with nothing to do), where a
        claim is made beside running groups, only in as many groups as there are idle workers (at least
        one): a group more would only wait for a worker, and each group pays a transaction (an UPDATE and
        a COMMIT); the next claim feeds the others. Either way no group holds more than `largest` jobs."""
        if not self._sharing:
            return list(jobs)
        shareable = [job for job in jobs if self.shareable(job)]
        if len(shareable) < 2:
            return list(jobs)
        workers = self.workers if idle is None or not self._claim_beside_groups else max(1, min(self.workers, idle))
        groups = max(1, min(workers, len(shareable) // GROUP_MIN))
        groups = min(max(groups, -(-len(shareable) // self.largest())), max(1, len(shareable) // GROUP_MIN))
        size, extra = divmod(len(shareable), groups)
        items: list[Work] = []
        start = 0
        for number in range(groups):
            end = start + size + (1 if number < extra else 0)
            items.append(Shared(shareable[start:end]))
            start = end
        alone = set(map(id, shareable))
        items.extend(job for job in jobs if id(job) not in alone)
        return items

    def shareable(self, job: ClaimedJob) -> bool:
        """Whether `job` may run in a transaction other jobs share (held queues' jobs go to the executor)."""
        task = self.executor.tasks.get(job.task)
        return (job.problem is None and task is not None and task.shared is not None
                and job.queue not in self.executor.held_queues)

    def __call__(self, item: Work) -> list[Outcome]:
        if isinstance(item, Order):
            return self._ordered(item)
        if not isinstance(item, Shared):
            return [self.executor(item)]
        if not self._claim_beside_groups:
            return self._timed(item.jobs)
        with self._counting:
            self._in_groups += len(item.jobs)
        self.on_group_start()
        try:
            return self._timed(item.jobs)
        finally:
            with self._counting:  # before its outcomes are collected: held for a moment, never ahead of time
                self._in_groups -= len(item.jobs)

    def _timed(self, jobs: list[ClaimedJob]) -> list[Outcome]:
        started = time.monotonic()
        outcomes = self._together(jobs)
        self._took(len(jobs), time.monotonic() - started)
        return outcomes

    def _took(self, jobs: int, seconds: float) -> None:
        """Note that a group of `jobs` jobs took `seconds` (the moving average `largest` and `_step` read)."""
        last = self._job_seconds  # workers update it side by side: a lost update only ages the average less
        self._job_seconds = seconds / jobs if last is None else 0.7 * last + 0.3 * seconds / jobs

    def _ordered(self, order: Order) -> list[Outcome]:
        """Claim, run and record an order's jobs in one transaction (ordering.py); outcomes of those it ran."""
        if self._stopping.is_set():
            return []
        payloads: dict[int, Any] = {}
        # Its rows stay locked, `pending`, until it commits: slow jobs after fast ones (an order sized by their
        # time) stop at GROUP_SECONDS, the jobs not reached left pending, untouched, for the next order.
        steps = self._steps(payloads, GROUP_SECONDS)

        def work(conn: Any, jobs: Sequence[ClaimedJob]) -> list[Any]:
            for job in jobs:
                payload, problem = self._payload(job)
                if problem is not None:  # rolled back: the plain claim's executor fails it with the reason
                    raise ValueError(f"job {job.id}: {problem}")
                payloads[job.id] = payload
            return steps(conn, jobs)

        started = time.monotonic()
        jobs, done = self.store.claim_together(order.queue, order.tasks, order.limit, order.owner, work)
        order.found = len(jobs)
        if not done.recorded:
            order.gave_up = done.reason or "nothing was written"
            return []
        ran = len(jobs) - done.unstarted
        if ran:
            self._took(ran, time.monotonic() - started)
        return [Outcome(job, "recorded") for job in jobs[:ran]]

    def on_error(self, item: Work, error: BaseException) -> list[Outcome]:
        """Every job of an item whose run raised (the pool's last line of defence)."""
        if isinstance(item, Order):  # its transaction was rolled back: nothing written
            item.gave_up = validation.describe_exception(error, 300).splitlines()[0]
        return [self.executor.on_error(job, error) for job in jobs_of(item)]

    def timeout_of(self, item: Work) -> float | None:
        """A job's task timeout; a group or an order has none (only tasks without a timeout share)."""
        return self.timeouts.get(item.task) if isinstance(item, ClaimedJob) else None

    def timed_out(self, item: Work) -> list[Outcome]:
        """The outcomes of an item given up on after its timeout."""
        return [self.executor.timed_out(job) for job in jobs_of(item)]

    def _payload(self, job: ClaimedJob) -> tuple[Any, str | None]:
        """The job's payload, or the problem with it or its row that fails it (alone, through the executor)."""
        payload, problem = validation.parse_payload(job.payload_text, self.executor.settings.payload_limit)
        return payload, problem or job.problem or validation.row_problem(job.task, job.max_attempts, job.priority,
                                                                         job.callback_url)

    def _together(self, jobs: list[ClaimedJob]) -> list[Outcome]:
        payloads: dict[int, Any] = {}
        ready: list[ClaimedJob] = []
        alone: list[ClaimedJob] = []
        for job in jobs:
            payload, problem = self._payload(job)
            if problem is None:
                payloads[job.id] = payload
                ready.append(job)
            else:
                alone.append(job)  # the executor fails it with its reason

        work = self._steps(payloads)
        outcomes: list[Outcome] = []
        for _ in range(ROUNDS):
            if not ready:
                break
            done = self.store.run_together(ready, work)
            if done.recorded:
                ran = len(ready) - done.unstarted
                outcomes.extend(Outcome(job, "recorded") for job in ready[:ran])
                outcomes.extend(Outcome(job, "unstarted") for job in ready[ran:])
                ready = []
                break
            if done.culprit is None:
                log.info("%d job(s) of a shared transaction run alone: %s", len(ready), done.reason)
                break
            alone.append(ready.pop(done.culprit))
        if ready and self._stopping.is_set():  # not one by one now: back, as if never claimed
            outcomes.extend(Outcome(job, "unstarted") for job in ready)
            ready = []
        outcomes.extend(self.executor(job) for job in [*alone, *ready])
        return outcomes

    def _steps(self, payloads: dict[int, Any], budget: float = float("inf")
               ) -> Callable[[Any, Sequence[ClaimedJob]], list[Any]]:
        """`work(conn, jobs) -> results` of jobs whose payloads are in `payloads` (by the time it runs): in steps,
        stopping between them when the run stops (see the module), or once `budget` seconds have passed."""
        limit = self.executor.settings.payload_limit

        def work(conn: Any, jobs: Sequence[ClaimedJob]) -> list[Any]:
            results: list[Any] = []
            seconds = self._job_seconds  # none yet: a group is a worker's share of a batch at most (`largest`)
            step = len(jobs) if seconds is None else self._step(1, seconds)
            end = time.monotonic() + budget

            def stop() -> bool:  # looked at before each job a task runs one by one, and before each step
                return self._stopping.is_set() or time.monotonic() >= end

            while len(results) < len(jobs) and not stop():
                started, chunk = time.monotonic(), jobs[len(results):len(results) + step]
                if not self._run_step(conn, chunk, payloads, results, stop):
                    break
                step = self._step(len(chunk), time.monotonic() - started)
            for result in results:
                # A result that cannot be stored fails its job: alone, where the executor says so.
                validation.dump_json(result, "result", limit, self.store.json_accepts_nul)
            return results

        return work

    def _run_step(self, conn: Any, jobs: Sequence[ClaimedJob], payloads: dict[int, Any], results: list[Any],
                  stop: Callable[[], bool]) -> bool:
        """Run `jobs`, their results added to `results`; False when a task stopped before one (`stop()`)."""
        for name, run in itertools.groupby(jobs, key=lambda job: job.task):  # a task's jobs sent together
            shared = self.executor.tasks[name].shared
            assert shared is not None
            given = [payloads[job.id] for job in run]
            done = shared(given, conn, stop)  # may stop between jobs it runs one by one
            if len(done) > len(given):
                raise RuntimeError(f"task {name} gave {len(done)} results for {len(given)} jobs")
            results.extend(done)
            if len(done) < len(given):
                return False
        return True

    @staticmethod
    def _step(jobs: int, seconds: float) -> int:
        """Jobs of the next step of a group: as many as take STEP_SECONDS, at the time `jobs` jobs took."""
        return max(1, int(STEP_SECONDS * jobs / max(seconds, 1e-6)))
