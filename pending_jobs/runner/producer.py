"""The producer: claim due jobs, feed the worker pool, keep leases alive, and stop cleanly.

Claims and completions are short transactions of their own; handlers never run inside one (except
their own `ctx.connection`). The producer's thread owns every claim, heartbeat and release; worker
threads only run jobs (executor.py); outcomes are written in batches by the completer, whose writer
overlaps the next claim. A run stops claiming when it is empty (drain mode), out of runtime, at its
job limit, asked to hand over, or signalled; then jobs claimed but not started go back (a running group's
too: shared.py), and running ones finish: all of them, or within the grace period after a signal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..config import Settings
from ..errors import CommandFailed
from ..models import ClaimedJob, Outcome, RunReport
from ..workers import WorkerPool
from . import ordering, waiting
from .completer import Completer, rescue
from .executor import Executor
from .ordering import Orders
from .shared import Work, Worker, jobs_of
from .verbs import JobStore
from .waiting import CANCEL_LOOK, behind_long, cancel_waiting, hold_at_once, put_back_unstarted, release_unstarted

log = logging.getLogger(__name__)

IDLE_RECHECK = 0.5  # seconds between claims while jobs run but none is due (drain mode: a retry may come due)
LONGEST_WAIT = 1.0  # seconds the loop sleeps at most, so stop conditions are looked at regularly
HANDOFF_CHECK = 0.1  # seconds between looks whether another run waits to take over (one flock each)
LONG_JOB = 2.0  # seconds after which a running job is long: a run asked to hand over serves on beside it
# while a worker is free; with every worker busy it hands over at once, and claims nothing ahead (waiting.py).
RESCUE_EVERY = 60.0  # seconds between rescues while serving: `serve` has no next run to do it


class Producer:
    """Runs due jobs until the queue is empty, the runtime is spent, or it is asked to stop."""

    def __init__(self, store: JobStore, executor: Executor, settings: Settings, report: RunReport, owner: str,
                 on_progress: Callable[[RunReport], None] | None = None,
                 hand_off: Callable[[], bool] | None = None, on_callbacks_due: Callable[[], None] | None = None,
                 on_stop_claiming: Callable[[], None] | None = None) -> None:
        self.store, self.executor = store, executor
        self.settings, self.report = settings, report
        self.owner = owner
        self.hand_off = hand_off  # asked now and then while serving: True when another run is ready to take over
        self.on_stop_claiming = on_stop_claiming  # the host lock: the next run serves while our last jobs end
        self.worker = Worker(executor, settings.concurrency)
        timed = self.worker.timeout_of if self.worker.timeouts else None  # none: no watchdog, no lookup per job
        self.pool: WorkerPool[Work, list[Outcome]] = WorkerPool(
            settings.concurrency, self.worker, self.worker.on_error, "pending-jobs", timed, self.worker.timed_out)
        self.worker.on_group_start = self.pool.wake
        self.orders = Orders(store, self.worker, settings, owner)  # claims made by the transactions that run them
        self._held = 0  # jobs handed to the pool whose outcome has not come back (a pool item may hold several)
        # Jobs held at most: a batch ahead of the workers, and never fewer than the workers (with --batch-size 1
        # and --concurrency 2, one long job must not leave the second worker idle).
        self._hold = max(settings.batch_size, settings.concurrency)
        self.completer = Completer(store, report, settings.batch_size, on_progress, on_callbacks_due)
        self._signalled = False
        self._queues: list[str] = []
        self._next_queue, self._next_claim = 0, 0.0
        self._last_beat = time.monotonic()
        self._next_rescue = self._last_beat + RESCUE_EVERY
        self._next_cancel_look = self._last_beat + CANCEL_LOOK
        self._next_handoff_check = 0.0
        self._held_back: float | None = None  # seconds until jobs a limit held back may start (rate limits)

    def wake(self) -> None:
        """A job may have come due (the database said so): claim now, not at the next poll."""
        self._next_claim = 0.0
        self.pool.wake()

    def signal(self) -> None:
        """Stop claiming (SIGTERM, SIGINT): unstarted jobs go back, running ones get the grace period."""
        self._signalled = True
        self.pool.wake()

    def run(self, job_id: int | None = None) -> None:
        """Serve until a stop condition, then finish in-flight work and record every outcome."""
        try:
            if job_id is not None:
                self._claim_one(job_id)
                self.report.stopped_by = "job"
            else:
                self.report.stopped_by = self._serve(time.monotonic() + self.settings.max_runtime)
            self._finish()
        finally:
            self.completer.close()
            self.pool.close()

    def idle(self, job_id: int | None = None) -> None:
        """Claim nothing, only wait for a stop condition (a run that only sends callbacks)."""
        deadline = time.monotonic() + self.settings.max_runtime
        while self.settings.poll > 0 and job_id is None:
            reason = self._why_stop(time.monotonic(), deadline, claiming=False)
            if reason is not None:
                self.report.stopped_by = reason
                return
            self.pool.take(LONGEST_WAIT)
        self.report.stopped_by = "empty"

    # -- serving --------------------------------------------------------------------------------

    def _serve(self, deadline: float) -> str:
        while True:
            if self.completer.saturated:
                self.completer.settle(block=True)  # back-pressure: claims run at most WRITES_AHEAD writes ahead
            self.completer.flush_if_due(idle=not self.pool.busy)
            now = time.monotonic()
            self._maintain(now)
            reason = self._why_stop(now, deadline)
            if reason is not None:
                return reason
            if self._may_claim(now):
                if self._claim(min(self.settings.batch_size, self._room())):
                    continue
                if self.completer.busy and not self.pool.busy:
                    self.completer.drain()  # outcomes being written may make a job due again (a retry)
                    continue
                if not self.pool.busy and self.settings.poll <= 0 and self._held_back is None:
                    return "empty"
                wait = self.settings.poll if self.settings.poll > 0 else IDLE_RECHECK
                self._next_claim = now + min(wait, self._held_back if self._held_back is not None else wait)
            self._collect(self._wait_time(now, deadline))

    def _why_stop(self, now: float, deadline: float, claiming: bool = True) -> str | None:
        if self._signalled:
            return "signal"
        if now >= deadline:
            return "max-runtime"
        if claiming and self._room() == 0 and not self.pool.busy:
            self.completer.drain()  # held jobs (held.py) among the outcomes not yet counted give their room back
            if self._room() == 0:
                return "max-jobs"
        if self.hand_off is not None and now >= self._next_handoff_check:
            self._next_handoff_check = now + HANDOFF_CHECK
            if waiting.may_hand_over(self.pool, self.settings.concurrency, now - LONG_JOB) and self.hand_off():
                return "handoff"
        return None

    def _room(self) -> int:
        if self.settings.max_jobs is None:
            return self.settings.batch_size
        return max(0, self.settings.max_jobs - self.report.claimed + self.report.held)  # held: put back unrun

    def _may_claim(self, now: float) -> bool:
        # Claim ahead: the next batch is claimed as soon as the first job of the last one is done (or runs in a group).
        return (self._room() > 0 and self.worker.ahead(self._held) < self._hold and now >= self._next_claim
                and not self.completer.saturated)

    def _wait_time(self, now: float, deadline: float) -> float:
        waits = [LONGEST_WAIT, deadline - now, self._last_beat + self.settings.lease / 3 - now]
        if self.hand_off is not None:
            waits.append(self._next_handoff_check - now)
        if self._room() > 0 and self.worker.ahead(self._held) < self._hold:
            waits.append(self._next_claim - now)
        flush = self.completer.wait_for()
        if flush is not None:
            waits.append(flush)
        return max(0.0, min(waits))

    def _claim(self, limit: int) -> bool:
        """Claim from the next queue that has due jobs (round robin, so no queue starves another)."""
        queues = self.settings.queues or self._queues or self.store.due_queues()
        if not self.settings.queues:
            self._queues = queues
        self._held_back = None
        for offset in range(len(queues)):
            name = queues[(self._next_queue + offset) % len(queues)]
            if (ordered := self.orders.submit(name, limit, self.pool, self.settings.concurrency)) is not None:
                if ordered:  # each idle worker claims and runs a group itself (ordering.py); none: wait for one
                    self._next_queue = (self._next_queue + offset + 1) % len(queues)
                return ordered
            claim = self.store.claim(name, limit, self.owner, self.settings.lease)
            if claim.retry_in is not None:
                self._held_back = min(claim.retry_in, self._held_back or claim.retry_in)
            if claim.jobs:
                self._next_queue = (self._next_queue + offset + 1) % len(queues)
                self._dispatch(claim.jobs)
                self.orders.note_claim(name, claim.jobs, limit)
                return True
        self._queues = []  # look for queues again next time
        return False

    def _claim_one(self, job_id: int) -> None:
        claim = self.store.claim_job(job_id, self.owner, self.settings.lease)
        if not claim.jobs:
            raise CommandFailed(ordering.not_claimed(job_id, self.store.get(job_id)))
        self._dispatch(claim.jobs)

    def _dispatch(self, jobs: list[ClaimedJob]) -> None:
        self.report.claimed += len(jobs)
        jobs = hold_at_once(jobs, self.executor, self.completer)  # held.py: not behind the jobs ahead of them
        self._held += len(jobs)
        self.pool.submit_all(self.worker.split(jobs, self.settings.concurrency - self.pool.busy))

    def _collect(self, timeout: float) -> None:
        finished = self.pool.take(timeout)
        if finished:
            outcomes = [outcome for _, item_outcomes in finished for outcome in item_outcomes]
            self._held -= len(outcomes) - self.orders.collected(finished, self.report)  # orders' were never held
            self.completer.add(put_back_unstarted(outcomes, self.store, self.report))
            self._next_claim = 0.0  # room for more, and a retry among them may be due at once

    # -- leases -----------------------------------------------------------------------------------

    def _maintain(self, now: float) -> None:
        """Renew the leases of this run's jobs (timeouts are the pool's watchdog's); rescue dead runners' jobs."""
        if now - self._last_beat >= self.settings.lease / 3:
            held = [(job.id, job.token) for slot in self.pool.in_flight() for job in jobs_of(slot.item)]
            self.store.heartbeat(held, self.settings.lease)
            self._last_beat = now
        if now >= self._next_rescue:
            self._next_rescue = now + RESCUE_EVERY
            rescue(self.store, self.report, self.executor.tasks, self.executor.held_queues)
        if (back := behind_long(self.pool, self.store, self.report, self.settings.concurrency, now - LONG_JOB)) >= 0:
            self._held, self._next_claim = self._held - back, float("inf")  # until a job ends (_collect)
        if now >= self._next_cancel_look:  # jobs claimed ahead an operator cancelled end before they start
            self._next_cancel_look = now + CANCEL_LOOK
            cancelled = cancel_waiting(self.pool, self.store, self.worker)
            self._held -= len(cancelled)
            self.completer.add(cancelled)

    # -- stopping -------------------------------------------------------------------------------

    def _finish(self) -> None:
        """Release what never started (when stopped early), let running jobs end, record everything."""
        grace_end: float | None = None
        if self.report.stopped_by in ("signal", "max-runtime", "handoff"):
            self._held -= release_unstarted(self.pool, self.store, self.report, self.worker)
        if self.on_stop_claiming is not None:
            self.on_stop_claiming()
        while self.pool.busy:
            now = time.monotonic()
            if self._signalled and grace_end is None:  # a signal now, too, leaves running jobs the grace period
                self._held -= release_unstarted(self.pool, self.store, self.report, self.worker)
                grace_end = now + self.settings.grace
            if grace_end is not None and now >= grace_end:
                log.warning("still running after the grace period: %s", waiting.left_running(self.pool, self._held))
                break
            self._collect(min(LONGEST_WAIT, grace_end - now if grace_end is not None else LONGEST_WAIT))
            self.completer.flush_if_due(idle=not self.pool.busy)
            self._maintain(time.monotonic())
        self.completer.drain()
