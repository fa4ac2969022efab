"""Outcomes waiting to be recorded: written together, one transaction per flush.

Recording each outcome in a transaction of its own costs more than the HTTP request it records, so
outcomes are batched like the runner batches job outcomes: flushed when the batch is full, when
nothing is in flight, or once the oldest has waited FLUSH_AFTER. A callback stays leased until its
outcome is flushed, so no other runner can take it over in the meantime.

Where the database takes concurrent writers, a flush runs in a thread of its own, overlapped with the
next claim (one flush at a time): inline, each flush (10-20 ms) held up the claims and the workers ran
out of requests. SQLite has one writer, so there it stays inline.
"""

from __future__ import annotations

import time

from ..recorder import Recorder
from ..store.callbacks import CallbackResult, CallbackStore

FLUSH_AFTER = 0.05  # seconds an outcome may wait to be batched with others
BATCH_SIZE = 200  # outcomes that flush at once
POLL = 0.005  # seconds between looks at a background flush that outcomes wait behind


class Batch:
    """Outcomes of this run not yet written; `flush` records them in one transaction, `finish` ends the run's."""

    def __init__(self, store: CallbackStore, size: int = BATCH_SIZE) -> None:
        self.size = max(1, size)
        self.results: list[CallbackResult] = []
        self.since = 0.0
        self._recorder: Recorder[list[CallbackResult], int] = Recorder(
            store.record, store.concurrent_writers, "pending-jobs-callback-recorder")

    def add(self, results: list[CallbackResult]) -> None:
        """Queue outcomes for the next flush."""
        if results and not self.results:
            self.since = time.monotonic()
        self.results.extend(results)

    def busy(self) -> bool:
        """Whether a background flush is still running; raises its error once it has failed."""
        self._recorder.results()
        return self._recorder.outstanding > 0

    def wait_for(self) -> float | None:
        """Seconds until the queued outcomes should be looked at again, or None when the batch is empty."""
        if not self.results:
            return None
        if self.busy():
            return POLL
        return max(0.0, self.since + FLUSH_AFTER - time.monotonic())

    def due(self, idle: bool) -> bool:
        """Whether to flush now: the batch is full, nothing is in flight (`idle`), or it is old enough."""
        return bool(self.results) and not self.busy() and (
            idle or len(self.results) >= self.size or self.wait_for() == 0.0)

    def flush(self) -> None:
        """Record every queued outcome in one transaction: started in the background where it can be."""
        results, self.results = self.results, []
        if results:
            self._recorder.submit(results)

    def finish(self) -> None:
        """Record what is left and wait for every flush; raises the first error."""
        try:
            self.flush()
            self._recorder.drain()
        finally:
            self._recorder.close()
