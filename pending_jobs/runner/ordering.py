"""Orders: claims a worker makes itself, in the transaction that runs the jobs (store/shared.py).

A job of a declared sql task on the job database (`Task.shared`) runs in a transaction other jobs share
(shared.py). Claimed first, as every job is, it changes status twice: `pending` to `running` in the claim's
transaction, `running` to `succeeded` in the group's. Where a queue's due jobs are all of such tasks, a
worker can instead lock them, run them and mark them `succeeded` in one transaction (`JobStore.claim_together`):
one status change a job. On PostgreSQL each change is a new row version with an entry in every index of
`pending_jobs`: a 50,000-job sql drain made 16,163 jobs/s (50 % of the raw floor) with two changes a job and
26,732/s (82 %) with one, and on MariaDB 72 % and 100 % (docs/performance.md, 2026-12-06).

When. A plain claim of a queue that comes back full (a backlog) with every job such a job, whose jobs have been
fast in groups so far (FAST_JOB), in a queue no limit applies to (a limit counts running rows: locked pending
rows are not counted) and not held, turns the queue's claims into orders for ORDERING seconds: one order per
idle worker, each for as many jobs as a group holds. An order that finds fewer jobs than it asked for (the
backlog is done, or other tasks' jobs are what is left), jobs that turned slow, or an order that wrote nothing
(a job with a problem, a statement that raised: everything rolled back, the jobs still `pending`, their attempt
uncounted) turns them back into plain claims, which give such jobs their own verdicts (shared.py, executor.py).
A plain claim looks at the queue's head again every ORDERING seconds anyway: orders take only these tasks'
jobs, and another task's job that came due first must not wait behind them for longer than that. Not with
`--max-jobs` (orders would count toward it only once done).

While an order runs, its jobs read `pending` (locked) to anyone who looks, for as long as one group's
transaction lasts (it stops between its jobs once GROUP_SECONDS have passed, shared.py: longer only while one
job's own statement is slow); `cancel` waits for its COMMIT, then finds them ended (or pending, not reached).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..models import ClaimedJob, Job, Outcome, RunReport
from ..states import JOB_PENDING
from ..workers import WorkerPool
from .verbs import JobStore

if TYPE_CHECKING:
    from .shared import Worker

log = logging.getLogger(__name__)

ORDERING = 1.0
"""Seconds a queue's claims stay orders before a plain claim looks at the queue's head again (see the module)."""
FAST_JOB = 0.01
"""Seconds a job may take in groups, on average, for its queue's claims to become orders. Slower jobs gain
little from one status change less, and their rows would read `pending` (locked) while they run, an operator's
`cancel` waiting for them: orders are for backlogs of fast jobs, where the status changes are the cost."""


@dataclasses.dataclass
class Order:
    """A claim for a worker to make: up to `limit` due jobs of `queue` whose task is one of `tasks`, claimed,
    run and marked succeeded by one transaction. The worker notes how many it found (`found`) and, when it
    wrote nothing, why (`gave_up`)."""

    queue: str
    tasks: tuple[str, ...]
    limit: int
    owner: str
    found: int = 0
    gave_up: str | None = None


class Orders:
    """Which queues' claims are orders now, and the orders to hand the worker pool."""

    def __init__(self, store: JobStore, worker: Worker, settings: Settings, owner: str) -> None:
        self.store, self.worker, self.owner = store, worker, owner
        tasks = worker.executor.tasks
        self.tasks = tuple(sorted(name for name, task in tasks.items() if task.shared is not None and not task.held))
        self._enabled = bool(self.tasks) and settings.max_jobs is None and store.concurrent_writers
        self._until: dict[str, float] = {}  # queue: when its claims stop being orders (monotonic)

    def note_claim(self, queue: str, jobs: Sequence[ClaimedJob], limit: int) -> None:
        """After a plain claim of `queue`: its next claims are orders when it came back full of jobs that can be."""
        if (self._enabled and len(jobs) >= limit > 1 and self._fast() and queue not in self.worker.executor.held_queues
                and all(job.task in self.tasks and self.worker.shareable(job) for job in jobs)
                and self.store.claims_together(queue)):
            self._until[queue] = time.monotonic() + ORDERING

    def submit(self, queue: str, limit: int, pool: WorkerPool[Any, Any], workers: int) -> bool | None:
        """None unless the claims of `queue` are orders now; then whether any was handed to `pool`: one order per
        idle worker of its `workers`, each for as many jobs as a group holds (at most `limit`)."""
        if self._until.get(queue, 0.0) <= time.monotonic():
            return None
        if not self._fast():  # slow jobs after fast ones: plain claims again
            del self._until[queue]
            return None
        size = max(2, min(limit, self.worker.largest()))
        orders = [Order(queue, self.tasks, size, self.owner) for _ in range(workers - pool.busy)]
        pool.submit_all(orders)
        return bool(orders)

    def _fast(self) -> bool:
        """Whether jobs have taken under FAST_JOB seconds each in groups so far (none ended yet: not known)."""
        seconds = self.worker.job_seconds
        return seconds is not None and seconds < FAST_JOB

    def collected(self, finished: Iterable[tuple[Any, list[Outcome]]], report: RunReport) -> int:
        """Count the jobs of finished orders among pool results as claimed; how many outcomes they gave. An
        order that found fewer jobs than it asked for, or gave up, ends its queue's orders."""
        given = 0
        for slot, outcomes in finished:
            order = slot.item
            if not isinstance(order, Order):
                continue
            given += len(outcomes)
            report.claimed += len(outcomes)
            if (order.gave_up is not None or order.found < order.limit) and order.queue in self._until:
                del self._until[order.queue]
                if order.gave_up is not None:
                    log.info("queue %s: claims are plain again: an order wrote nothing (%s)", order.queue,
                             order.gave_up)
        return given


def not_claimed(job_id: int, job: Job | None) -> str:
    """Why `run --job` claimed nothing. A job still `pending` is locked by another run's transaction: an order's
    (SKIP LOCKED passes it by), which ends it or leaves it pending for the next claim once it commits."""
    if job is not None and job.status == JOB_PENDING:
        return f"job {job_id} is pending but locked by another run's transaction (an order's, most likely): try again"
    return f"job {job_id} is {job.status if job else 'missing'}, not pending: nothing to run"
