"""The one-shot runner: claim due jobs, run their handlers in threads, record outcomes in batches.

Claims and completions are short transactions of their own; handlers never run inside one (except
the handler's own `ctx.connection`). The main thread owns every database write of job state but the
recording of outcome batches, which the recorder overlaps with the next claim; worker threads only
run handlers and hand back outcomes.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, Literal

from . import isolation, validation
from .config import Settings
from .context import JobContext
from .errors import Fail, Retry
from .recorder import Recorder
from .registry import Task
from .store import ClaimedJob, Store
from .store.base import Outcomes
from .store.models import Finished

log = logging.getLogger(__name__)

OutcomeKind = Literal["succeeded", "retry", "failed", "recorded", "dropped"]
_Batch = tuple[list[list["Outcome"]], Sequence[Outcomes]]  # one flush: outcomes grouped by claim, and their writes
_Recorded = tuple[list[list["Outcome"]], list[Finished]]
FLUSH_AFTER = 0.05  # seconds an outcome may wait to be batched with others


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What became of one job; `recorded` means it was already written in the handler's transaction."""

    job: ClaimedJob
    kind: OutcomeKind
    result: Any = None
    error: str = ""
    delay: float = 0.0


@dataclasses.dataclass
class RunReport:
    """What one run did; written to `pending_job_runs` and summarised by `-v`."""

    claimed: int = 0
    succeeded: int = 0
    retried: int = 0
    failed: int = 0
    rescued: int = 0
    released: int = 0
    stale: int = 0
    callbacks_delivered: int = 0
    callbacks_failed: int = 0
    stopped_by: str = "empty"
    duration: float = 0.0

    def summary(self) -> str:
        """The one line `run -v` prints."""
        return (
            f"claimed {self.claimed}, succeeded {self.succeeded}, retried {self.retried}, failed {self.failed}, "
            f"rescued {self.rescued}, callbacks delivered {self.callbacks_delivered} failed {self.callbacks_failed}"
            f" in {self.duration:.2f}s (stopped: {self.stopped_by})"
        )


def owner_name() -> str:
    """Who holds a lease: host and pid, so an operator can find the process."""
    return f"{socket.gethostname()}:{os.getpid()}"


class _Slot:
    """A claimed job waiting in the inbox or running in a worker."""

    __slots__ = ("abandoned", "job", "started")

    def __init__(self, job: ClaimedJob) -> None:
        self.job = job
        self.started: float | None = None
        self.abandoned = False


class Runner:
    """Runs due jobs until the queue is empty, the runtime is spent, or a signal asks it to stop."""

    def __init__(
        self,
        store: Store,
        tasks: dict[str, Task],
        settings: Settings,
        *,
        deliver_callbacks: Callable[[float], tuple[int, int]] | None = None,
        on_progress: Callable[[RunReport], None] | None = None,
    ) -> None:
        self.store = store
        self.tasks = tasks
        self.settings = settings
        self.deliver_callbacks = deliver_callbacks
        self.on_progress = on_progress
        self.owner = owner_name()
        self.report = RunReport()
        self._inbox: queue.SimpleQueue[_Slot | None] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._slots: dict[int, _Slot] = {}
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._stop = threading.Event()
        self._signals = 0
        self._pending: list[Outcome] = []
        self._recorder = self._new_recorder()
        self._pending_since = 0.0
        self._queues: list[str] = []
        self._next_queue = 0
        self._next_claim = 0.0

    # -- public ---------------------------------------------------------------------------------

    def run(self, job_id: int | None = None) -> RunReport:
        """Run once. Raises DatabaseUnavailable when the database goes away or turns read-only."""
        started = time.monotonic()
        deadline = started + self.settings.max_runtime
        previous = self._install_signals()
        self._recorder = self._new_recorder()
        try:
            self.store.check_writable()
            pending, failed = self.store.rescue_expired()
            self.report.rescued = pending + failed
            self.report.failed += failed
            if pending or failed:
                log.warning("rescued %d job(s) with expired leases (%d failed, out of attempts)",
                            pending + failed, failed)
            self._start_workers()
            if job_id is not None:
                self._run_one(job_id)
            else:
                self._loop(deadline)
            self._drain()
            self._settle(everything=True)
            if self.deliver_callbacks is not None and not self._stop.is_set():
                delivered, undelivered = self.deliver_callbacks(max(deadline, time.monotonic() + 5))
                self.report.callbacks_delivered += delivered
                self.report.callbacks_failed += undelivered
        finally:
            self._recorder.close()
            self._stop_workers()
            self._restore_signals(previous)  # last: a signal meanwhile still ends the run our way
            self.report.duration = time.monotonic() - started
        return self.report

    def stop(self) -> None:
        """Ask the run to stop claiming; in-flight jobs get the grace period."""
        self._stop.set()

    # -- the loop -------------------------------------------------------------------------------

    def _loop(self, deadline: float) -> None:
        batch = self.settings.batch_size
        last_heartbeat = time.monotonic()
        while True:
            if self._recorder.outstanding > 1:
                self._settle(block=True)  # back-pressure: claims run at most one batch ahead of the records
            now = time.monotonic()
            can_claim = self._room() > 0 and len(self._slots) < batch and now >= self._next_claim
            self._collect(wait=bool(self._slots) and not can_claim)
            now = time.monotonic()
            if now - last_heartbeat >= self.settings.lease / 3:
                self._heartbeat()
                last_heartbeat = now
            self._enforce_timeouts()
            if self._stop.is_set():
                self.report.stopped_by = "signal"
                return
            if now >= deadline:
                self.report.stopped_by = "max-runtime"
                return
            if self._room() == 0 and not self._slots:
                self.report.stopped_by = "max-jobs"
                return
            if not can_claim:
                if not self._slots and not self._pending:  # idle between polls
                    self._stop.wait(max(0.0, min(self._next_claim, deadline) - now))
                continue
            if self._claim(min(batch, self._room())):
                continue
            if self._recorder.outstanding:
                self._settle(block=True)  # outcomes still being written may make jobs due again (retries)
                continue
            if not self._slots and not self._pending and self.settings.poll <= 0:
                self.report.stopped_by = "empty"
                return
            # Nothing due: ask again after the poll interval, or as soon as a running job finishes
            # (its retry may be due at once), rather than hammering the database.
            self._next_claim = now + (self.settings.poll if self.settings.poll > 0 else 0.5)

    def _room(self) -> int:
        if self.settings.max_jobs is None:
            return self.settings.batch_size
        return max(0, self.settings.max_jobs - self.report.claimed)

    def _claim(self, limit: int) -> bool:
        """Claim from the next queue that has due jobs (round robin, so no queue starves another)."""
        queues = self.settings.queues or self._queues
        if not self.settings.queues and not queues:
            queues = self._queues = self.store.due_queues()
        for offset in range(len(queues)):
            name = queues[(self._next_queue + offset) % len(queues)]
            claim = self.store.claim(name, limit, self.owner, self.settings.lease)
            if claim.jobs:
                self._next_queue = (self._next_queue + offset + 1) % len(queues)
                self._dispatch(claim.jobs)
                return True
        if not self.settings.queues:
            self._queues = []  # look for queues again next time
        return False

    def _run_one(self, job_id: int) -> None:
        claim = self.store.claim_job(job_id, self.owner, self.settings.lease)
        if not claim.jobs:
            job = self.store.get(job_id)
            status = job.status if job else "missing"
            raise LookupError(f"job {job_id} is {status}, not pending: nothing to run")
        self._dispatch(claim.jobs)
        self.report.stopped_by = "job"

    def _dispatch(self, jobs: list[ClaimedJob]) -> None:
        self.report.claimed += len(jobs)
        with self._lock:
            for job in jobs:
                slot = _Slot(job)
                self._slots[job.id] = slot
                self._inbox.put(slot)

    def _drain(self) -> None:
        """Finish in-flight work: all of it normally, up to the grace period after a signal."""
        if self._stop.is_set() or self.report.stopped_by in ("max-runtime", "signal"):
            self._release_unstarted()
        grace_end = time.monotonic() + self.settings.grace
        last_heartbeat = time.monotonic()
        while self._slots:
            # After max-runtime, too, a handler that never returns must not hold the run (and, through
            # the heartbeat, its lease) forever: it gets the grace period, then its lease expires.
            if self._stop.is_set() or self.report.stopped_by == "max-runtime":
                self._release_unstarted()
                if time.monotonic() >= grace_end:
                    log.warning("%d job(s) still running after the grace period; their leases will expire",
                                len(self._slots))
                    break
            self._collect(wait=True)
            self._enforce_timeouts()
            if time.monotonic() - last_heartbeat >= self.settings.lease / 3:
                self._heartbeat()
                last_heartbeat = time.monotonic()
        self._flush()

    def _release_unstarted(self) -> None:
        with self._lock:
            unstarted = [slot for slot in self._slots.values() if slot.started is None and not slot.abandoned]
            for slot in unstarted:
                slot.abandoned = True
                del self._slots[slot.job.id]
        by_token: dict[str, list[int]] = defaultdict(list)
        for slot in unstarted:
            by_token[slot.job.token].append(slot.job.id)
        for token, ids in by_token.items():
            self.report.released += self.store.release(token, ids)
        self.report.claimed -= len(unstarted)

    # -- outcomes -------------------------------------------------------------------------------

    def _collect(self, wait: bool) -> None:
        """Move finished outcomes into the pending batch; flush it when full or old enough."""
        try:
            outcome = self._outbox.get(timeout=FLUSH_AFTER) if wait else self._outbox.get_nowait()
            while True:
                self._accept(outcome)
                outcome = self._outbox.get_nowait()
        except queue.Empty:
            pass
        if self._pending and (
            len(self._pending) >= self.settings.batch_size
            or not self._slots
            or time.monotonic() - self._pending_since >= FLUSH_AFTER
        ):
            self._flush()
        self._settle()

    def _accept(self, outcome: Outcome) -> None:
        with self._lock:
            slot = self._slots.get(outcome.job.id)
            if slot is None or slot.job.token != outcome.job.token or slot.abandoned:
                return  # already settled (timed out or released); the late result is dropped
            del self._slots[outcome.job.id]
        self._next_claim = 0.0
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(outcome)

    def _flush(self) -> None:
        outcomes, self._pending = self._pending, []
        by_token: dict[str, list[Outcome]] = defaultdict(list)
        for outcome in outcomes:
            by_token[outcome.job.token].append(outcome)
        batches = [
            (
                token,
                [(o.job.id, o.result) for o in group if o.kind == "succeeded"],
                [(o.job.id, o.delay, o.error) for o in group if o.kind == "retry"],
                [(o.job.id, o.error) for o in group if o.kind == "failed"],
            )
            for token, group in by_token.items()
        ]
        # Outcomes of consecutive claims overlap (the next claim goes out while one finishes), so
        # one flush often spans two tokens: one transaction, still one statement per kind per token.
        if batches:
            self._recorder.submit((list(by_token.values()), batches))

    def _new_recorder(self) -> Recorder[_Batch, _Recorded]:
        def write(batch: _Batch) -> _Recorded:
            groups, batches = batch
            return groups, self.store.finish_many(batches)

        return Recorder(write, self.store.concurrent_writers)

    def _settle(self, block: bool = False, everything: bool = False) -> None:
        """Count what the recorder wrote; raises the error that stopped it (the run then ends)."""
        recorded = self._recorder.drain() if everything else self._recorder.results(block=block)
        for groups, finished in recorded:
            self._count(groups, finished)
        if recorded and self.on_progress is not None:
            self.on_progress(self.report)

    def _count(self, groups: list[list[Outcome]], finished: list[Finished]) -> None:
        for group, done in zip(groups, finished, strict=True):
            asked = sum(1 for o in group if o.kind in ("succeeded", "retry", "failed"))
            recorded = sum(1 for o in group if o.kind == "recorded")
            self.report.succeeded += done.succeeded + recorded
            self.report.retried += done.retried
            self.report.failed += done.failed
            stale = asked - (done.succeeded + done.retried + done.failed)
            stale += sum(1 for o in group if o.kind == "dropped")
            if stale:
                self.report.stale += stale
                log.warning("%d outcome(s) not recorded: their lease had been taken over", stale)

    def _heartbeat(self) -> None:
        with self._lock:
            held = [(slot.job.id, slot.job.token) for slot in self._slots.values()]
        if held:
            self.store.heartbeat(held, self.settings.lease)

    def _enforce_timeouts(self) -> None:
        now = time.monotonic()
        expired: list[_Slot] = []
        with self._lock:
            for slot in list(self._slots.values()):
                timeout = self._timeout_of(slot.job)
                if slot.started is not None and timeout is not None and now - slot.started > timeout:
                    slot.abandoned = True
                    del self._slots[slot.job.id]
                    expired.append(slot)
        for slot in expired:
            timeout = self._timeout_of(slot.job)
            log.warning("job %d (%s) timed out after %ss", slot.job.id, slot.job.task, timeout)
            self._accept_direct(self._failure(slot.job, f"TimeoutError: handler ran longer than {timeout}s"))
            self._add_worker()  # the stuck thread is abandoned; keep the pool at full strength

    def _accept_direct(self, outcome: Outcome) -> None:
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(outcome)

    def _timeout_of(self, job: ClaimedJob) -> float | None:
        task = self.tasks.get(job.task)
        return task.timeout if task is not None else None

    # -- workers --------------------------------------------------------------------------------

    def _start_workers(self) -> None:
        for _ in range(self.settings.concurrency):
            self._add_worker()

    def _add_worker(self) -> None:
        thread = threading.Thread(target=self._work, name=f"pending-jobs-{len(self._workers)}", daemon=True)
        self._workers.append(thread)
        thread.start()

    def _stop_workers(self) -> None:
        for _ in self._workers:
            self._inbox.put(None)
        for thread in self._workers:
            thread.join(timeout=0.1)

    def _work(self) -> None:
        while True:
            slot = self._inbox.get()
            if slot is None:
                return
            with self._lock:
                if slot.abandoned:
                    continue
                slot.started = time.monotonic()
            self._outbox.put(self.execute(slot.job))
            if slot.abandoned:
                return  # this thread was replaced when its job timed out

    def execute(self, job: ClaimedJob) -> Outcome:
        """Check the row, run its handler, and turn what happened into an outcome. Never raises."""
        problem = validation.row_problem(job.task, job.max_attempts, job.priority, job.callback_url)
        payload, payload_problem = validation.parse_payload(job.payload_text, self.settings.payload_limit)
        problem = problem or payload_problem
        task = self.tasks.get(job.task)
        if problem is None and task is None:
            known = ", ".join(sorted(self.tasks)) or "none"
            problem = f"unknown task {job.task!r}: no handler registered (known: {known})"
        if problem is not None or task is None:
            return Outcome(job, "failed", error=validation.clean_text(problem or "unknown task"))
        timeout = task.timeout
        deadline = time.monotonic() + timeout if timeout else None
        ctx = JobContext(job, self.store.engine, deadline, _task_logger(job.task))
        try:
            result = isolation.call(task, payload, ctx, self.settings.tasks) if task.isolation == "process" \
                else task.fn(payload, ctx)
            if result is not None:  # None is stored as NULL: nothing to check
                validation.dump_json(result, "result", self.settings.payload_limit, self.store.json_accepts_nul)
        except Retry as request:
            _rollback(ctx)
            delay = request.delay if request.delay is not None else task.backoff(job.attempt)
            return self._failure(job, f"Retry: {request.reason}", delay)
        except Fail as failure:
            _rollback(ctx)
            return Outcome(job, "failed", error=validation.clean_text(f"Fail: {failure.reason}"))
        except BaseException as error:  # a handler must never take the run down
            _rollback(ctx)
            return self._failure(job, validation.describe_exception(error), task.backoff(job.attempt))
        conn = ctx._take_connection()
        if conn is None:
            return Outcome(job, "succeeded", result=result)
        return self._commit_in_handler_transaction(conn, job, result)

    def _commit_in_handler_transaction(self, conn: Any, job: ClaimedJob, result: Any) -> Outcome:
        verdict, error = self.store.commit_success(conn, job, result)
        if verdict == "recorded":
            return Outcome(job, "recorded")
        if verdict == "stale":
            return Outcome(job, "dropped")
        return self._failure(job, f"could not commit the handler's transaction: {error}", 5.0)

    def _failure(self, job: ClaimedJob, error: str, delay: float | None = None) -> Outcome:
        """Retry later, or fail when this was the last attempt."""
        error = validation.clean_text(error, validation.ERROR_LIMIT - 60)  # room for the "giving up" line
        if job.attempt >= job.max_attempts:
            return Outcome(job, "failed", error=f"{error}\n(attempt {job.attempt} of {job.max_attempts}: giving up)")
        if delay is None:
            task = self.tasks.get(job.task)
            delay = task.backoff(job.attempt) if task else 10.0
        return Outcome(job, "retry", error=error, delay=max(0.0, float(delay)))

    # -- signals --------------------------------------------------------------------------------

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _restore_signals(self, previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            raise KeyboardInterrupt  # a second signal: stop now, leases expire and jobs are rescued
        log.warning("received %s: no more claims, %ss grace for running jobs", signal.Signals(signum).name,
                    self.settings.grace)
        self._stop.set()


@functools.lru_cache(maxsize=256)
def _task_logger(task: str) -> logging.Logger:
    """The logger a task's handler gets as `ctx.log` (cached: getLogger takes a lock per call)."""
    return logging.getLogger(f"pending_jobs.task.{task}")


def _rollback(ctx: JobContext) -> None:
    """Discard the handler's writes. Never raises: a dead connection has nothing left to roll back,
    and an exception here would end the worker thread with its job unrecorded."""
    conn = ctx._take_connection()
    if conn is None:
        return
    try:
        conn.rollback()
        conn.close()
    except Exception as error:  # the server rolls back a lost connection's transaction itself
        log.warning("job %d: could not roll back its connection: %s", ctx.job_id, error)
        conn.invalidate()
