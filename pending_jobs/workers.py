"""A pool of worker threads: items in, results out, a stuck worker abandoned and replaced.

The runner runs handlers in one, the callback sender its HTTP attempts in another. Plain threads and
queues, not a ThreadPoolExecutor: a Future, its condition and its done-callback per item cost more
CPU than a short job or a keep-alive POST (measured ≈ 9 µs per callback), all of it under the GIL.
Threads are daemons: a handler that never returns cannot keep the process alive.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")
WATCH_IDLE = 1.0  # seconds the timeout watchdog sleeps when no running item has a timeout (woken on a start)
R = TypeVar("R")


class Slot(Generic[T]):
    """An item submitted to the pool: waiting, running (`started` set), finished, or abandoned."""

    __slots__ = ("abandoned", "finished", "item", "started")

    def __init__(self, item: T) -> None:
        self.item = item
        self.started: float | None = None
        self.finished = False
        self.abandoned = False


class WorkerPool(Generic[T, R]):
    """`size` threads run `work(item)`; `take` returns (slot, result) pairs as they finish.

    `work` should not raise; if it does, `on_error(item, error)` turns the exception into the item's
    result, so no item is ever lost with its thread. `wake()` makes a waiting `take` return early.

    With `timeout_of`, a watchdog thread of its own gives up on an item running longer than its timeout:
    `on_timeout(item)` makes its result (and may release what the item holds), a fresh worker keeps the
    pool at full strength, and the stuck thread's late result is dropped. The watchdog is a thread of
    its own because the thread that takes results may itself wait on what the stuck item holds (SQLite's
    one write lock).
    """

    def __init__(self, size: int, work: Callable[[T], R], on_error: Callable[[T, BaseException], R],
                 name: str = "pending-jobs-worker", timeout_of: Callable[[T], float | None] | None = None,
                 on_timeout: Callable[[T], R] | None = None) -> None:
        self._work = work
        self._on_error = on_error
        self._name = name
        self._timeout_of = timeout_of
        self._on_timeout = on_timeout
        self._timed = threading.Event()  # set when an item starts whose deadline is before the watchdog's wake
        # When the watchdog will look next (monotonic), None while it is looking. A start wakes it only if
        # its deadline comes sooner: waking it on every start cost a busy queue ~5-10 % of its drain rate.
        self._wake_at: float | None = None
        self._closed = False
        self._inbox: queue.SimpleQueue[Slot[T] | None] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[tuple[Slot[T], R] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._in_flight: set[Slot[T]] = set()
        self._threads: list[threading.Thread] = []
        self._started = 0
        for _ in range(max(1, size)):
            self._add_thread()
        if timeout_of is not None and on_timeout is not None:
            threading.Thread(target=self._watch, name=f"{name}-timeouts", daemon=True).start()

    @property
    def busy(self) -> int:
        """Items submitted whose result has not been taken yet (and which were not abandoned)."""
        return len(self._in_flight)

    def submit(self, item: T) -> Slot[T]:
        """Queue `item` for the next free worker."""
        [slot] = self.submit_all([item])
        return slot

    def submit_all(self, items: Iterable[T]) -> list[Slot[T]]:
        """Queue every item, in order, taking the pool's lock once (a claim's batch at a time)."""
        slots = [Slot(item) for item in items]
        with self._lock:
            self._in_flight.update(slots)
        for slot in slots:
            self._inbox.put(slot)
        return slots

    def take(self, timeout: float) -> list[tuple[Slot[T], R]]:
        """Results finished so far, waiting up to `timeout` seconds for the first (or a `wake`)."""
        found: list[tuple[Slot[T], R]] = []
        with contextlib.suppress(queue.Empty):
            item = self._outbox.get(timeout=max(0.0, timeout)) if timeout > 0 else self._outbox.get_nowait()
            while True:
                if item is not None:
                    found.append(item)
                item = self._outbox.get_nowait()
        if found:
            with self._lock:
                for slot, _ in found:
                    self._in_flight.discard(slot)
        return found

    def wake(self) -> None:
        """Make the thread waiting in `take` return now (a signal, a notification)."""
        self._outbox.put(None)

    def running(self) -> list[Slot[T]]:
        """Slots whose item a worker is running now."""
        with self._lock:
            return [slot for slot in self._in_flight if slot.started is not None and not slot.finished]

    def in_flight(self) -> list[Slot[T]]:
        """Slots submitted whose result has not been taken: waiting, running or just finished."""
        with self._lock:
            return list(self._in_flight)

    def withdraw_unstarted(self, among: Iterable[Slot[T]] | None = None) -> list[Slot[T]]:
        """Take back every item (of `among`, when given) that no worker has started; they will not run."""
        with self._lock:
            pool = self._in_flight if among is None else [slot for slot in among if slot in self._in_flight]
            waiting = [slot for slot in pool if slot.started is None]
            for slot in waiting:
                slot.abandoned = True
                self._in_flight.discard(slot)
        return waiting

    def abandon(self, slot: Slot[T], result: Callable[[], R]) -> bool:
        """Give up on a running item: `result()` is its result now, its late one is dropped, and a fresh
        worker keeps the pool at full strength. False when it had finished meanwhile (its own result stands).

        The slot is given up on before `result()` runs: what that does to the running item (a timed-out
        handler's connection cancelled and closed) makes the item end at once, and its late result must not
        overtake the timeout's."""
        with self._lock:
            if slot not in self._in_flight or slot.finished:
                return False
            slot.abandoned = slot.finished = True
        try:
            outcome = result()
        except BaseException as error:  # the item must still end, with a reason
            outcome = self._on_error(slot.item, error)
        self._outbox.put((slot, outcome))
        self._add_thread()
        return True

    def close(self, wait: float = 0.1) -> None:
        """Stop the workers once they are idle; waits at most `wait` seconds for each (daemons otherwise)."""
        self._closed = True
        self._timed.set()
        for _ in self._threads:
            self._inbox.put(None)
        deadline = time.monotonic() + wait
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _add_thread(self) -> None:
        thread = threading.Thread(target=self._run, name=f"{self._name}-{self._started}", daemon=True)
        self._started += 1
        self._threads.append(thread)
        thread.start()

    def _watch(self) -> None:
        assert self._timeout_of is not None and self._on_timeout is not None
        while not self._closed:
            self._wake_at = None  # looking: any start meanwhile wakes the next wait
            now = time.monotonic()
            nearest = WATCH_IDLE
            for slot in self.running():
                timeout = self._timeout_of(slot.item)
                if timeout is None or slot.started is None:
                    continue
                left = slot.started + timeout - now
                if left > 0:
                    nearest = min(nearest, left)
                    continue
                self.abandon(slot, functools.partial(self._on_timeout, slot.item))
            self._wake_at = now + nearest
            self._timed.wait(nearest)
            self._timed.clear()

    def _run(self) -> None:
        while (slot := self._inbox.get()) is not None:
            with self._lock:
                if slot.abandoned:
                    continue
                slot.started = started = time.monotonic()
            timeout = self._timeout_of(slot.item) if self._timeout_of is not None else None
            if timeout is not None:
                wake_at = self._wake_at
                if wake_at is None or started + timeout < wake_at:
                    self._timed.set()
            try:
                result = self._work(slot.item)
            except BaseException as error:  # never lose an item with its thread
                result = self._on_error(slot.item, error)
            with self._lock:
                if slot.abandoned:
                    return  # this thread was replaced when its item was abandoned
                slot.finished = True  # still in flight until `take` hands its result out
            self._outbox.put((slot, result))
