"""Run one job: check its row, call its handler, and turn whatever happened into an outcome.

`Executor.__call__` never raises, whatever the row holds or the handler does: every case ends as an
outcome with a reason a person can read, so a worker thread never dies with its job unrecorded.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from .. import validation
from ..config import Settings
from ..context import JobContext
from ..errors import Fail, Retry
from ..held import HOLD_DELAY
from ..models import ClaimedJob, Outcome
from ..registry import Task, default_backoff
from .verbs import HandlerSession, JobStore

log = logging.getLogger(__name__)

MAX_DELAY = 30 * 86400.0
"""The longest a job may be put off by one retry (`Retry(delay=…)` or a backoff function): a larger or
infinite delay would overflow the databases' time arithmetic."""
COMMIT_RETRY_DELAY = 5.0  # seconds before retrying a job whose handler transaction could not commit


class Executor:
    """Runs claimed jobs with the registered handlers; one instance per run, shared by the worker threads."""

    def __init__(self, store: JobStore, tasks: dict[str, Task], settings: Settings,
                 held_queues: Mapping[str, str] | None = None) -> None:
        self.store = store
        self.tasks = tasks
        self.settings = settings
        self.held_queues = dict(held_queues or {})
        """Queues whose `[queue.NAME]` table has an error, with it: their jobs are held (held.py)."""
        self._told: set[str] = set()  # the held tasks and queues already logged by this run
        self._sessions: dict[tuple[int, str], HandlerSession] = {}  # of the handlers running now

    def __call__(self, job: ClaimedJob) -> Outcome:
        """Check the row, run its handler, and turn what happened into an outcome. Never raises."""
        try:
            outcome = self._execute(job)
        except BaseException as error:  # a bug of ours or a handler's; the job still gets its reason
            outcome = self.on_error(job, error)
        _log_outcome(outcome, self.limit(job)[0])
        return outcome

    def on_error(self, job: ClaimedJob, error: BaseException) -> Outcome:
        """The outcome of a job whose execution itself raised (the worker pool's last line of defence)."""
        return self.failure(job, f"internal error while running the job: {validation.describe_exception(error)}")

    def timeout_of(self, job: ClaimedJob) -> float | None:
        """The task's timeout in seconds (None: none)."""
        task = self.tasks.get(job.task)
        return task.timeout if task is not None else None

    def _execute(self, job: ClaimedJob) -> Outcome:
        task = self.tasks.get(job.task)
        problem = job.problem or validation.row_problem(job.task, job.max_attempts, job.priority, job.callback_url)
        payload, payload_problem = validation.parse_payload(job.payload_text, self.settings.payload_limit)
        problem = problem or payload_problem
        if problem is None and task is None:
            # Tried again with the backoff, not failed at once: this run loaded its tasks when it started, and a
            # task deployed since (config or code out a moment before its producers, a host not yet upgraded in
            # a rolling deploy) is known to the next run. A misspelt task still fails, after its attempts.
            known = ", ".join(sorted(self.tasks)) or "none"
            return self.failure(job, f"unknown task {job.task!r}: no handler registered in this run (known: {known})")
        if problem is not None or task is None:
            return Outcome(job, "failed", error=validation.clean_text(problem or "unknown task"))
        reason = task.held or self.held_queues.get(job.queue, "")
        if reason:
            return self._hold(job, reason)
        session = self.store.handler_transaction(job)
        if not task.timeout:
            return self._run(task, job, payload, session, None)
        # Only a job that can time out may have its session closed under it (`timed_out`).
        key = (job.id, job.token)
        self._sessions[key] = session
        try:
            outcome = self._run(task, job, payload, session, time.monotonic() + task.timeout)
        finally:
            abandoned = self._sessions.pop(key, None) is None  # `timed_out` took it
        if abandoned:  # its outcome, the timeout, was recorded and logged then: the pool drops this late one
            log.info("job %d (%s): its handler, given up on at its timeout, has ended; the timeout stands",
                     job.id, job.task)
            return Outcome(job, "dropped")
        return outcome

    def timed_out(self, job: ClaimedJob) -> Outcome:
        """The outcome of a job whose handler ran past its timeout (it is left running, abandoned); its
        connection is closed, so its transaction and locks go with it."""
        timeout = self.timeout_of(job)
        log.warning("job %d (%s) timed out after %ss", job.id, job.task, timeout)
        session = self._sessions.pop((job.id, job.token), None)
        if session is not None:
            session.abandon()
        outcome = self.failure(job, f"TimeoutError: handler ran longer than {timeout}s")
        _log_outcome(outcome, self.limit(job)[0])
        return outcome

    def _run(self, task: Task, job: ClaimedJob, payload: Any, session: HandlerSession,
             deadline: float | None) -> Outcome:
        ctx = JobContext(job, session, deadline, _task_logger(job.task), self.limit(job)[0])
        try:
            if task.isolation == "process":
                from .. import isolation  # multiprocessing's import (≈ 20 ms) only for runs that need it

                result = isolation.call(task, payload, ctx, self.settings.tasks, self.settings.python_path)
            else:
                result = task.fn(payload, ctx)
        except Retry as request:
            session.rollback()
            outcome = self.failure(job, f"Retry: {_safe(request.reason)}", self._delay(task, job, request.delay))
            return _cancelling(outcome, session)
        except Fail as failure:
            session.rollback()
            outcome = Outcome(job, "failed", error=validation.clean_text(f"Fail: {_safe(failure.reason)}"))
            return _cancelling(outcome, session)
        except BaseException as error:  # a handler must never take the run down
            session.rollback(error)
            return _cancelling(self.failure(job, validation.describe_exception(error), self._delay(task, job)), session)
        problem = None if result is None else self._unstorable(result)
        if problem is not None:
            session.rollback()  # deterministic: another attempt would return the same value
            return Outcome(job, "failed", error=validation.clean_text(problem))
        if not session.opened:
            return Outcome.success(job, result)
        verdict, error_text = session.commit_success(result)
        if verdict == "recorded":
            return Outcome(job, "recorded")
        if verdict == "stale":
            return Outcome(job, "dropped")
        return self.failure(job, f"could not commit the handler's transaction: {error_text}", COMMIT_RETRY_DELAY)

    def hold(self, job: ClaimedJob) -> Outcome | None:
        """The `held` outcome of a job of a held task or queue, or None for any other job."""
        task = self.tasks.get(job.task)
        reason = (task.held if task is not None else "") or self.held_queues.get(job.queue, "")
        return self._hold(job, reason) if reason else None

    def _hold(self, job: ClaimedJob, reason: str) -> Outcome:
        """Put the job back, its attempt uncounted, until its config table is fixed (held.py)."""
        if reason not in self._told:  # once a run: a backlog of held jobs would fill the log
            self._told.add(reason)
            log.warning("jobs of task %s (queue %s) are held back for %gs at a time: %s", job.task, job.queue,
                        HOLD_DELAY, reason)
        error = validation.clean_text(f"held back, not run: {reason} (fix the config table; the next run after "
                                      "the fix runs it, its attempt uncounted)", validation.ERROR_LIMIT)
        return Outcome(job, "held", error=error, delay=HOLD_DELAY)

    def failure(self, job: ClaimedJob, error: str, delay: float | None = None) -> Outcome:
        """Retry later, or fail when this was the last attempt."""
        error = validation.clean_text(error, validation.ERROR_LIMIT - 60)  # room for the "giving up" line
        limit, named = self.limit(job)
        if job.attempt >= limit:
            return Outcome(job, "failed", error=f"{error}\n(attempt {job.attempt} of {named}: giving up)")
        if delay is None:
            delay = self._delay(self.tasks.get(job.task), job)
        return Outcome(job, "retry", error=error, delay=delay)

    def limit(self, job: ClaimedJob) -> tuple[int, str]:
        """The attempts `job` may have, and how the giving-up line names them: the row's `max_attempts`,
        or its task's own when that is fewer (a declared task's `max_attempts`)."""
        task = self.tasks.get(job.task)
        if task is not None and task.max_attempts is not None and task.max_attempts < job.max_attempts:
            return task.max_attempts, f"the task's max_attempts {task.max_attempts}"
        return job.max_attempts, str(job.max_attempts)

    def _delay(self, task: Task | None, job: ClaimedJob, asked: object = None) -> float:
        """Seconds until the next attempt: what the handler asked for, else the task's backoff; always a
        finite number within 0..MAX_DELAY, whatever either gave."""
        if asked is None:
            try:
                asked = (task.backoff if task is not None else default_backoff)(job.attempt)
            except BaseException as error:  # the application's code, as a handler is: it must not escape __call__
                log.warning("job %d (%s): its backoff function raised %s; using the default backoff",
                            job.id, job.task, type(error).__name__)
                asked = default_backoff(job.attempt)
        try:
            seconds = float(asked)  # type: ignore[arg-type]
        except Exception:  # TypeError, ValueError, OverflowError, or whatever a `__float__` of the app's raises
            log.warning("job %d (%s): retry delay %r is not a number of seconds; using the default backoff",
                        job.id, job.task, asked)
            return default_backoff(job.attempt)
        if math.isnan(seconds):
            return default_backoff(job.attempt)
        return min(max(0.0, seconds), MAX_DELAY)

    def _unstorable(self, result: Any) -> str | None:
        """Why a (non-None: stored as NULL) result cannot be stored, or None."""
        try:
            validation.dump_json(result, "result", self.settings.payload_limit, self.store.json_accepts_nul)
        except ValueError as error:
            return f"the handler's result cannot be stored: {error}"
        return None


def _safe(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _cancelling(outcome: Outcome, session: HandlerSession) -> Outcome:
    """The outcome of a handler that gave up, marked when an operator asked to cancel its job (one read,
    on this path only), so the log says what the job becomes."""
    try:
        asked = session.cancel_requested()
    except Exception:  # the database is away: the log line is all that is at stake
        asked = False
    return dataclasses.replace(outcome, cancelling=True) if asked else outcome


def _log_outcome(outcome: Outcome, limit: int) -> None:
    """One line per failed (WARNING) or retried (INFO) job, so the cron log says why; `limit`: its attempts."""
    if outcome.kind not in ("failed", "retry"):
        return
    job = outcome.job
    first = outcome.error.strip().splitlines()[0][:200] if outcome.error.strip() else "no reason given"
    fields = {"job_id": job.id, "task": job.task}  # `--log-format json` gives them as fields, as a handler's lines
    if outcome.cancelling:
        log.info("job %d (%s) gave up on attempt %d after an operator asked to cancel it: cancelled (%s)", job.id,
                 job.task, job.attempt, first, extra=fields)
    elif outcome.kind == "failed":
        log.warning("job %d (%s) failed on attempt %d of %d: %s", job.id, job.task, job.attempt, limit, first,
                    extra=fields)
    else:
        log.info("job %d (%s) will be retried in %.0fs after attempt %d of %d: %s", job.id, job.task,
                 outcome.delay, job.attempt, limit, first, extra=fields)


@functools.lru_cache(maxsize=256)
def _task_logger(task: str) -> logging.Logger:
    """The logger a task's handler gets as `ctx.log` (cached: getLogger takes a lock per call)."""
    return logging.getLogger(f"pending_jobs.task.{task}")
