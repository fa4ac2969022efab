"""Writes batches of outcomes in a thread of its own, overlapped with the caller's next claim.

A claim and a completion are each a few round trips on one connection, and the database does most of
the work in them. Done one after the other, the caller and the server take turns idling; with the
write on a second connection in its own thread, the server works on both at once. SQLite has a
single writer, so there the recorder writes inline: a second writer would only wait for the lock.
The runner records job outcomes through one, the callback sender its attempts.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

B = TypeVar("B")
R = TypeVar("R")
CLOSE_WAIT = 5.0  # seconds close() waits for the thread to finish a write (a stuck one is left, a daemon)


class Recorder(Generic[B, R]):
    """`submit` batches to `write`; `results` hands back what it returned, in submission order.

    The first error stops recording: `results` raises it, batches submitted before it was seen are
    never written (their rows stay leased until the lease expires and a later run takes them over),
    and `submit` raises it again from then on.
    """

    def __init__(self, write: Callable[[B], R], concurrent: bool, name: str = "pending-jobs-recorder") -> None:
        self._write = write
        self._concurrent = concurrent
        self._name = name
        self._todo: queue.SimpleQueue[B | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[R] | BaseException] = queue.SimpleQueue()
        self.outstanding = 0
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None

    def submit(self, batch: B) -> None:
        """Write `batch`: in the recorder thread (started by the first batch), or inline when not concurrent."""
        if self._failed is not None:
            raise self._failed
        self.outstanding += 1
        if not self._concurrent:
            self._done.put(self._record(batch))
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
            self._thread.start()
        self._todo.put(batch)

    def results(self, block: bool = False) -> list[R]:
        """What was written since the last call; with `block`, wait for at least one if any is outstanding."""
        found: list[R] = []
        while self.outstanding:
            try:
                item = self._done.get(timeout=None) if block and not found else self._done.get_nowait()
            except queue.Empty:
                break
            self.outstanding -= 1
            if isinstance(item, BaseException):
                self._failed, self.outstanding = item, 0  # the thread has stopped: nothing else will come
                raise item
            found.append(item[0])
        return found

    def drain(self) -> list[R]:
        """Wait until everything submitted is written; raises the first error."""
        found: list[R] = []
        while self.outstanding:
            found.extend(self.results(block=True))
        return found

    def close(self) -> None:
        """Stop the thread once what was submitted is written (it is a daemon: an exit does not wait)."""
        if self._thread is not None:
            self._todo.put(None)
            self._thread.join(timeout=CLOSE_WAIT)
            self._thread = None

    def _work(self) -> None:
        while True:
            batch = self._todo.get()
            if batch is None:
                return
            result = self._record(batch)
            self._done.put(result)
            if isinstance(result, BaseException):
                return

    def _record(self, batch: B) -> tuple[R] | BaseException:
        try:
            return (self._write(batch),)
        except BaseException as error:  # handed to the caller's thread, which ends its work with it
            return error
