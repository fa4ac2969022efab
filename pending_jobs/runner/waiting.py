"""Jobs a run has claimed ahead that no worker has started yet: put back when the run stops early, and
ended `cancelled`, without running, when an operator cancels one while it waits.

A job is claimed (`running`, under the run's lease) up to a batch before a worker is free for it. An
operator's `cancel` of a running job only marks it, for its handler to see; a job that has not started
has no handler to see it, so the producer looks for it (`CANCEL_LOOK`)."""

from __future__ import annotations

import logging

from ..models import ClaimedJob, Outcome, RunReport
from ..workers import WorkerPool
from .completer import Completer
from .executor import Executor
from .ordering import Order
from .shared import Work, Worker, jobs_of
from .verbs import JobStore

log = logging.getLogger(__name__)

CANCEL_LOOK = 1.0
"""Seconds between looks whether an operator cancelled a job waiting for a worker: one SELECT by primary
key, and only while jobs wait (a run whose workers keep up never has any waiting)."""
CANCELLED_WAITING = "cancelled before it started: an operator asked to cancel it while it waited for a worker"

Pool = WorkerPool[Work, list[Outcome]]


def release_unstarted(pool: Pool, store: JobStore, report: RunReport, stopping: Worker | None = None) -> int:
    """Take back every job no worker has started and put it back to pending, its attempt uncounted (a run
    stopping early); how many were taken back. With `stopping` (the run stops), its running groups stop too,
    first: a group a worker starts meanwhile then runs nothing; what they leave comes back as `unstarted`
    outcomes (`put_back_unstarted`)."""
    if stopping is not None:
        stopping.stop()
    return put_back([job for slot in pool.withdraw_unstarted() for job in jobs_of(slot.item)], store, report)


def put_back_unstarted(outcomes: list[Outcome], store: JobStore, report: RunReport) -> list[Outcome]:
    """The outcomes but the `unstarted` ones, whose jobs (a group stopped before them) are put back to pending,
    as if never claimed."""
    unstarted = [outcome.job for outcome in outcomes if outcome.kind == "unstarted"]
    if not unstarted:
        return outcomes
    put_back(unstarted, store, report)
    return [outcome for outcome in outcomes if outcome.kind != "unstarted"]


def put_back(unstarted: list[ClaimedJob], store: JobStore, report: RunReport) -> int:
    """Put jobs claimed and never run back to pending, their attempt uncounted (those no worker started, those
    a group stopped before: `unstarted` outcomes); how many."""
    by_token: dict[str, list[int]] = {}
    for job in unstarted:
        by_token.setdefault(job.token, []).append(job.id)
    cancelled = 0
    for token, ids in by_token.items():
        back, ended = store.release(token, ids)
        report.released += back
        cancelled += ended
    # One that ended cancelled (an operator asked while it waited) was claimed and ended by this run, as one
    # the waiting look cancels: counted so in the runs row, not taken back unseen.
    report.cancelled += cancelled
    report.claimed -= len(unstarted) - cancelled
    return len(unstarted)


def behind_long(pool: Pool, store: JobStore, report: RunReport, concurrency: int, long_since: float) -> int:
    """-1 unless every worker is busy with a job started before `long_since` (a long job). Then the jobs claimed ahead
    go back to pending, their attempt uncounted (how many): waiting behind long jobs they stayed `running`
    until one ended, out of reach of another host or the next run (a 5-minute job held them 5 minutes),
    and the caller claims nothing more until a worker is free."""
    running = pool.running()
    if len(running) < concurrency or any(slot.started is None or slot.started >= long_since for slot in running):
        return -1
    return release_unstarted(pool, store, report)


def may_hand_over(pool: Pool, concurrency: int, long_since: float) -> bool:
    """Whether a run may hand over to the next one now: unless it runs a job started before `long_since` (a long
    job) with a worker free. Then it serves short jobs beside it; with none free it serves nobody, so the next
    run (all its workers free) takes over while these jobs end."""
    running = pool.running()
    long_job = any(slot.started is not None and slot.started < long_since for slot in running)
    return not long_job or len(running) >= concurrency


def left_running(pool: Pool, held: int) -> str:
    """What a run that stops waiting for its workers leaves running (`held`: its claimed jobs), for its warning.
    An order's jobs (ordering.py) hold no lease: they are `pending`, and stay so unless it commits first."""
    orders = sum(isinstance(slot.item, Order) for slot in pool.running())
    jobs = f"{held} job(s), their leases to expire" if held or not orders else ""
    ordered = f"{orders} order(s), their jobs pending (no lease) unless they commit first" if orders else ""
    return "; ".join(part for part in (jobs, ordered) if part)


def cancel_waiting(pool: Pool, store: JobStore, worker: Worker) -> list[Outcome]:
    """The outcomes (failures the store ends `cancelled`) of the waiting jobs an operator asked to cancel.

    They are taken back from the pool before anything is recorded, so none of them starts meanwhile; a
    job a worker did start runs on, and its handler sees `ctx.cancel_requested()`. The other jobs of a
    shared-transaction group taken back go to the pool again."""
    waiting = [slot for slot in pool.in_flight() if slot.started is None and jobs_of(slot.item)]  # orders hold none
    if not waiting:
        return []
    asked = store.cancels_asked([job.id for slot in waiting for job in jobs_of(slot.item)])
    if not asked:
        return []
    hit = [slot for slot in waiting if any(job.id in asked for job in jobs_of(slot.item))]
    jobs = [job for slot in pool.withdraw_unstarted(hit) for job in jobs_of(slot.item)]
    # The rest go back claim by claim: a shared transaction holds the jobs of one claim (one lease token), and
    # groups of two claims waiting at once, mixed, failed every job in them (an internal error, an attempt spent).
    rest: dict[str, list[ClaimedJob]] = {}
    for job in jobs:
        if job.id not in asked:
            rest.setdefault(job.token, []).append(job)
    for claim in rest.values():
        pool.submit_all(worker.split(claim))
    for job in jobs:
        if job.id in asked:
            log.info("job %d (%s) %s", job.id, job.task, CANCELLED_WAITING)
    return [Outcome(job, "failed", error=CANCELLED_WAITING, cancelling=True) for job in jobs if job.id in asked]


def hold_at_once(jobs: list[ClaimedJob], executor: Executor, completer: Completer) -> list[ClaimedJob]:
    """The jobs but those of held tasks and queues (held.py), whose `held` outcomes go to `completer` now. In the
    pool they waited for a worker behind the jobs ahead of them, `running`: out of every other runner's reach, a
    slot of their queue's max_running taken, and left to the rescue by a runner killed meanwhile."""
    held = [outcome for job in jobs if (outcome := executor.hold(job)) is not None]
    if not held:
        return jobs
    completer.add(held)
    back = {outcome.job.id for outcome in held}
    return [job for job in jobs if job.id not in back]
