"""Outcomes waiting to be written together: one transaction per batch, written by the recorder.

Recording each outcome in a transaction of its own costs more than the job or HTTP request it records,
so outcomes wait until the batch is full, nothing is left in flight, or the oldest has waited
FLUSH_AFTER (River's batch completer ticks every 50 ms the same way). The runner batches job outcomes
through one, the callback sender its attempts through another. A batch is written by a Recorder:
in a thread of its own where the database takes concurrent writers (overlapped with the caller's next
claim), inline on SQLite.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from .recorder import Recorder

O = TypeVar("O")  # noqa: E741 - an outcome
R = TypeVar("R")
FLUSH_AFTER = 0.05  # seconds an outcome may wait to be batched with others


class Batcher(Generic[O, R]):
    """`add` outcomes, `flush` them as one `write(batch)`, collect what each write returned."""

    def __init__(self, write: Callable[[list[O]], R], concurrent: bool, size: int, writes_ahead: int,
                 flush_after: float | None = None, name: str = "pending-jobs-recorder") -> None:
        self.size = max(1, size)
        self.writes_ahead = max(1, writes_ahead)
        """Batches that may be written or queued for writing at once; beyond, outcomes wait and grow the
        next batch (the writer is the bottleneck then, and a bigger batch costs it less per outcome)."""
        self.flush_after = FLUSH_AFTER if flush_after is None else flush_after
        self._pending: list[O] = []
        self._since = 0.0
        self._recorder: Recorder[list[O], R] = Recorder(write, concurrent, name)

    @property
    def pending(self) -> int:
        """Outcomes added and not yet handed to the recorder."""
        return len(self._pending)

    @property
    def outstanding(self) -> int:
        """Batches handed to the recorder whose result has not been collected."""
        return self._recorder.outstanding

    def add(self, outcomes: Iterable[O]) -> None:
        """Queue outcomes for the next batch."""
        before = len(self._pending)
        self._pending.extend(outcomes)
        if not before and self._pending:
            self._since = time.monotonic()

    def wait_for(self) -> float | None:
        """Seconds until the pending outcomes are old enough to flush; None when there are none."""
        if not self._pending:
            return None
        return max(0.0, self._since + self.flush_after - time.monotonic())

    def due(self, idle: bool) -> bool:
        """Whether to flush now: the writer has room, and the batch is full, nothing else is in flight
        (`idle`), or the oldest outcome has waited long enough."""
        return bool(self._pending) and self.outstanding < self.writes_ahead and (
            idle or len(self._pending) >= self.size or self.wait_for() == 0.0)

    def flush(self) -> None:
        """Hand every pending outcome to the recorder as one batch."""
        batch, self._pending = self._pending, []
        if batch:
            self._recorder.submit(batch)

    def results(self, block: bool = False) -> list[R]:
        """What the writes returned since the last call (with `block`, wait for one); raises the first error."""
        return self._recorder.results(block=block)

    def drain(self) -> list[R]:
        """Flush what is pending and wait for every write; raises the first error."""
        self.flush()
        return self._recorder.drain()

    def close(self) -> None:
        """Stop the recorder thread once what was handed to it is written."""
        self._recorder.close()
