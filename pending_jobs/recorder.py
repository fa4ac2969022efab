"""Writes the runner's outcome batches, overlapped with its next claim where the database allows.

A claim and a completion are each a few round trips on one connection, and the database does most of
the work in them. Done one after the other, the runner and the server take turns idling; with the
completion on a second connection in its own thread, the server works on both at once. SQLite has a
single writer, so there the recorder writes inline: a second writer would only wait for the lock.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from typing import Generic, TypeVar

from .store import Store
from .store.base import Outcomes
from .store.models import Finished

T = TypeVar("T")

Recorded = tuple[T, list[Finished]]
"""A submitted batch's tag (whatever the caller needs to account for it) and its row counts."""


class Recorder(Generic[T]):
    """`submit` outcome batches; `results` hands back their row counts in submission order.

    The first error stops recording: `results` raises it, and batches submitted after it are never
    written (their jobs stay `running` until their leases expire and a later run rescues them).
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._todo: queue.SimpleQueue[tuple[T, Sequence[Outcomes]] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Recorded[T] | BaseException] = queue.SimpleQueue()
        self.outstanding = 0
        self._thread: threading.Thread | None = None

    def submit(self, tag: T, batches: Sequence[Outcomes]) -> None:
        """Record `batches` (inline on SQLite, else in the recorder thread, started by the first batch)."""
        self.outstanding += 1
        if not self._store.concurrent_writers:
            self._done.put(self._record(tag, batches))
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="pending-jobs-recorder", daemon=True)
            self._thread.start()
        self._todo.put((tag, batches))

    def results(self, block: bool = False) -> list[Recorded[T]]:
        """Batches recorded since the last call; with `block`, wait for at least one if any is outstanding."""
        found: list[Recorded[T]] = []
        while self.outstanding:
            try:
                item = self._done.get(timeout=None) if block and not found else self._done.get_nowait()
            except queue.Empty:
                break
            self.outstanding -= 1
            if isinstance(item, BaseException):
                raise item
            found.append(item)
        return found

    def close(self) -> None:
        """Stop the thread once what was submitted is written (it is a daemon: an exit does not wait)."""
        if self._thread is not None:
            self._todo.put(None)
            self._thread.join(timeout=5)

    def _work(self) -> None:
        while True:
            item = self._todo.get()
            if item is None:
                return
            result = self._record(*item)
            self._done.put(result)
            if isinstance(result, BaseException):
                return

    def _record(self, tag: T, batches: Sequence[Outcomes]) -> Recorded[T] | BaseException:
        try:
            return tag, self._store.finish_many(batches)
        except BaseException as error:  # handed to the main thread, which ends the run with it
            return error
