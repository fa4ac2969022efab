"""Whole-request deadlines: shut a socket down when its request runs past the timeout.

One thread keeps every deadline: a timer thread per request cost more than the request itself.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import socket
import threading
import time


class Watch:
    """One request's deadline; `fired` tells whether its socket was shut down."""

    __slots__ = ("deadline", "done", "fired", "sock")

    def __init__(self, deadline: float, sock: socket.socket | None) -> None:
        self.deadline = deadline
        self.sock = sock
        self.fired = False
        self.done = sock is None


class Watchdog:
    """Fires each watch whose deadline passes before it is stopped."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Watch]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._wake_at = math.inf  # when the thread next looks at the heap (it may look earlier, never later)

    def watch(self, sock: socket.socket | None, seconds: float) -> Watch:
        """Shut `sock` down in `seconds` unless `stop` is called first."""
        watch = Watch(time.monotonic() + max(0.0, seconds), sock)
        if watch.done:
            return watch
        with self._cond:
            while self._heap and self._heap[0][2].done:  # finished requests, dropped here to keep the heap small
                heapq.heappop(self._heap)
            heapq.heappush(self._heap, (watch.deadline, next(self._order), watch))
            if self._thread is None or not self._thread.is_alive():  # also after a fork
                self._wake_at = watch.deadline
                self._thread = threading.Thread(target=self._run, name="pending-jobs-watchdog", daemon=True)
                self._thread.start()
            elif watch.deadline < self._wake_at:
                # Only a deadline earlier than the thread's wake-up needs waking it: with one timeout for
                # every request that is rare, and a wake-up per request cost more than the request itself.
                self._wake_at = watch.deadline
                self._cond.notify()
        return watch

    def stop(self, watch: Watch) -> None:
        """The request is over; under the lock, so a socket handed back to the pool is never shut down."""
        with self._cond:
            watch.done = True

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].done or self._heap[0][0] <= now):
                    watch = heapq.heappop(self._heap)[2]
                    if not watch.done and watch.sock is not None:
                        watch.fired = watch.done = True
                        with contextlib.suppress(OSError):
                            watch.sock.shutdown(socket.SHUT_RDWR)
                self._wake_at = self._heap[0][0] if self._heap else math.inf
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


WATCHDOG = Watchdog()
