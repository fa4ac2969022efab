"""Job outcomes written in batches of guarded UPDATEs, and counted into the run's report.

Outcomes wait in a Batcher (see batcher.py) and are written by its recorder on a second connection
while the producer makes the next claim. Consecutive claims' outcomes overlap (the next claim goes
out while one finishes), so one batch often spans two fencing tokens: one transaction, still one
statement per outcome kind per token. What each statement changed is counted here; an outcome that
changed no row lost its lease to a rescue (a stale runner) and is reported as such.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..batcher import Batcher
from ..errors import ConfigError, DatabaseUnavailable
from ..models import Completion, Finished, Outcome, RunReport
from ..registry import Task, attempt_limits
from ..validation import describe_exception
from .verbs import JobStore

log = logging.getLogger(__name__)

Written = list[tuple[list[Outcome], Finished]]
"""One batch as written: each claim's outcomes with what its statements changed."""
UNRECORDABLE = "the job's outcome could not be recorded"
WRITES_AHEAD = 4  # batches being written or queued at once; beyond, claims wait (back-pressure)


class Completer:
    """Batches outcomes into `finish_many` calls and counts their row counts into `report`."""

    def __init__(self, store: JobStore, report: RunReport, batch_size: int,
                 on_progress: Callable[[RunReport], None] | None = None,
                 on_callbacks_due: Callable[[], None] | None = None) -> None:
        self.store = store
        self.report = report
        self.on_progress = on_progress
        self.on_callbacks_due = on_callbacks_due
        """Called when a write ended a job that has a callback: its callback is due now."""
        self._batcher: Batcher[Outcome, Written] = Batcher(self._write, store.concurrent_writers, batch_size,
                                                           WRITES_AHEAD)

    @property
    def busy(self) -> bool:
        """Outcomes not yet written and counted (a retry among them may be due at once)."""
        return bool(self._batcher.pending or self._batcher.outstanding)

    @property
    def saturated(self) -> bool:
        """The writer is behind: the producer should wait for a write before claiming more."""
        return self._batcher.outstanding >= WRITES_AHEAD

    def add(self, outcomes: Iterable[Outcome]) -> None:
        """Queue outcomes for the next batch."""
        self._batcher.add(outcomes)

    def wait_for(self) -> float | None:
        """Seconds until the pending outcomes should be flushed; None when there are none."""
        return self._batcher.wait_for()

    def flush_if_due(self, idle: bool) -> None:
        """Flush when the batch is full, old enough, or nothing else is in flight (`idle`); count writes done."""
        if self._batcher.due(idle):
            self._batcher.flush()
        self.settle()

    def settle(self, block: bool = False) -> None:
        """Count the writes done so far (with `block`, wait for one); raises the error that stopped writing."""
        self._count(self._batcher.results(block=block))

    def drain(self) -> None:
        """Write and count everything pending."""
        self._count(self._batcher.drain())

    def close(self) -> None:
        """Stop the writer thread once what was handed to it is written."""
        self._batcher.close()

    def _write(self, outcomes: list[Outcome]) -> Written:
        """Write a batch; if the database refuses it (a value it cannot take), write each outcome alone,
        so one job's bad outcome never costs its batch-mates theirs."""
        try:
            return self._finish(outcomes)
        except (DatabaseUnavailable, ConfigError):  # the database or its setup is the problem, not a job
            raise
        except Exception as error:
            if len(outcomes) > 1:
                log.warning("recording %d outcomes together failed (%s); recording each alone",
                            len(outcomes), describe_exception(error, 300).splitlines()[0])
                return [written for outcome in outcomes for written in self._write([outcome])]
            [outcome] = outcomes
            if outcome.kind == "failed" and outcome.error.startswith(UNRECORDABLE):
                raise  # even the plainest outcome was refused: the database, not the job, is the problem
            reason = f"{UNRECORDABLE}: {describe_exception(error, 1000).splitlines()[0]}"
            log.warning("job %d (%s): %s", outcome.job.id, outcome.job.task, reason)
            return self._write([Outcome(outcome.job, "failed", error=reason)])

    def _finish(self, outcomes: list[Outcome]) -> Written:
        by_token: dict[str, list[Outcome]] = defaultdict(list)
        for outcome in outcomes:
            by_token[outcome.job.token].append(outcome)
        completions = [_completion(token, group) for token, group in by_token.items()]
        return list(zip(by_token.values(), self.store.finish_many(completions), strict=True))

    def _count(self, written: Iterable[Written]) -> None:
        counted = announce = False
        for batch in written:
            for group, done in batch:
                announce = self._count_claim(group, done) or announce
                counted = True
        if counted and self.on_progress is not None:
            self.on_progress(self.report)
        if announce and self.on_callbacks_due is not None:
            self.on_callbacks_due()

    def _count_claim(self, group: list[Outcome], done: Finished) -> bool:
        """Count one claim's written outcomes; True when one of them ended a job that has a callback."""
        asked = recorded = dropped = 0
        announce = False
        for o in group:  # one pass: this runs for every job
            if o.kind == "recorded":
                recorded += 1
            elif o.kind == "dropped":
                dropped += 1
            else:
                asked += 1
            if o.kind not in ("retry", "held") and o.job.callback_url:
                announce = True
        report = self.report
        report.succeeded += done.succeeded + recorded
        report.retried += done.retried
        report.failed += done.failed
        report.cancelled += done.cancelled
        report.held += done.held
        stale = asked - (done.succeeded + done.retried + done.failed + done.cancelled + done.held) + dropped
        if stale:
            report.stale += stale
            log.warning("%d outcome(s) not recorded: their lease had been taken over", stale)
        return announce


def _completion(token: str, group: list[Outcome]) -> Completion:
    """One claim's outcomes as `finish_many` takes them, sorted by kind in one pass."""
    succeeded: list[tuple[int, Any]] = []
    retried: list[tuple[int, float, str]] = []
    failed: list[tuple[int, str]] = []
    held: list[tuple[int, float, str]] = []
    for o in group:
        if o.kind == "succeeded":
            succeeded.append((o.job.id, o.result))
        elif o.kind == "retry":
            retried.append((o.job.id, o.delay, o.error))
        elif o.kind == "failed":
            failed.append((o.job.id, o.error))
        elif o.kind == "held":
            held.append((o.job.id, o.delay, o.error))
    return Completion(token, succeeded=succeeded, retried=retried, failed=failed, held=held)


def rescue(store: JobStore, report: RunReport, tasks: Mapping[str, Task] | None = None,
           held_queues: Iterable[str] = ()) -> None:
    """Rescue expired leases, counted in the report: the jobs it fails or cancels are outcomes of this run.
    `tasks`: the run's, whose own `max_attempts` the rescue keeps as well as each row's; the jobs of its held
    tasks and of `held_queues` were claimed only to be put back (held.py): their attempt is not counted."""
    held = ({name for name, task in (tasks or {}).items() if task.held}, set(held_queues))
    rescued = store.rescue_expired(attempt_limits(tasks or {}), held)
    report.rescued += rescued.total
    report.failed += rescued.failed
    report.cancelled += rescued.cancelled
    if rescued.total:
        log.warning("rescued %d job(s) with expired leases (%d failed, out of attempts; %d cancelled)",
                    rescued.total, rescued.failed, rescued.cancelled)
    if rescued.callbacks:
        log.warning("%d finished job(s) had a pending callback with no time (set by hand?): made due now",
                    rescued.callbacks)
