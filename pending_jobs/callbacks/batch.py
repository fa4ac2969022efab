"""Outcomes waiting to be recorded: written together, one transaction per flush.

Recording each outcome in a transaction of its own costs more than the HTTP request it records, so
outcomes are batched like the runner batches job outcomes: flushed when the batch is full, when
nothing is in flight, or once the oldest has waited FLUSH_AFTER. A callback stays leased until its
outcome is flushed, so no other runner can take it over in the meantime.
"""

from __future__ import annotations

import time

from ..store.callbacks import CallbackResult, CallbackStore

FLUSH_AFTER = 0.05  # seconds an outcome may wait to be batched with others
BATCH_SIZE = 200  # outcomes that flush at once


class Batch:
    """Outcomes of this run not yet written; `flush` records them all in one transaction."""

    def __init__(self, store: CallbackStore, size: int = BATCH_SIZE) -> None:
        self.store = store
        self.size = max(1, size)
        self.results: list[CallbackResult] = []
        self.since = 0.0

    def add(self, results: list[CallbackResult]) -> None:
        """Queue outcomes for the next flush."""
        if results and not self.results:
            self.since = time.monotonic()
        self.results.extend(results)

    def wait_for(self) -> float | None:
        """Seconds until the oldest outcome must be flushed, or None when the batch is empty."""
        if not self.results:
            return None
        return max(0.0, self.since + FLUSH_AFTER - time.monotonic())

    def due(self, idle: bool) -> bool:
        """Whether to flush now: the batch is full, nothing is in flight (`idle`), or it is old enough."""
        return bool(self.results) and (idle or len(self.results) >= self.size or self.wait_for() == 0.0)

    def flush(self) -> int:
        """Record every queued outcome in one transaction; returns how many guarded updates applied."""
        results, self.results = self.results, []
        return self.store.record(results)
