"""One serving run per host, handed from one cron tick to the next without a gap.

Under cron a run serves (claims as jobs come due) until the next tick's run is ready to take over.
Two lock files, by `flock`, so the kernel releases them when a process dies however it dies:

- `<name>.lock`, held by the run that serves;
- `<name>.next`, held by the one run waiting to take over.

A new run that finds the first taken takes the second and waits for the first; a third finds both
taken and leaves at once (exit 0). The serving run looks now and then whether `.next` is taken: then it
stops claiming (as soon as no job of its own has run long), finishes what it started, and exits, and
the waiting run, already started, connected and checked, takes over within a few milliseconds. A run
busy with a long job keeps serving meanwhile, so the host never waits for it: the hand-off happens when
the long job ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import IO

WAIT_STEP = 0.02  # seconds between looks at the serving run's lock while waiting to take over


def lock_path(database_url: str, queues: Sequence[str], callbacks: str) -> str:
    """A lock file per database and set of queues (two cron lines serving different queues don't
    exclude each other), in the system's temporary directory."""
    key = "\n".join([database_url, ",".join(sorted(queues)), callbacks]).encode()
    return os.path.join(tempfile.gettempdir(), f"pending-jobs-{hashlib.sha256(key).hexdigest()[:16]}.lock")


class HostLock:
    """The serving lock of one host (see the module's notes)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._serving: IO[bytes] | None = None
        self._next: IO[bytes] | None = None
        self._probe: IO[bytes] | None = None

    def acquire(self, wait: Callable[[], bool]) -> bool:
        """Serve: take the lock now, or wait to take over from the run holding it while `wait()` says
        so. False when another run already waits to take over (or waiting was given up)."""
        self._serving = _take(self.path)
        if self._serving is not None:
            return True
        self._next = _take(_next_path(self.path))
        if self._next is None:
            return False
        try:
            while wait():
                self._serving = _take(self.path)
                if self._serving is not None:
                    return True
                time.sleep(WAIT_STEP)
            return False
        finally:
            _release(self._next)  # the next tick may wait now
            self._next = None

    def successor_waiting(self) -> bool:
        """Whether another run waits to take over (it holds the `.next` lock). One non-blocking flock."""
        if self._probe is None:
            self._probe = open(_next_path(self.path), "ab")
        try:
            fcntl.flock(self._probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self._probe, fcntl.LOCK_UN)
        return False

    def release(self) -> None:
        """Let the waiting run take over (also when this process simply exits: the kernel releases it)."""
        for handle in (self._serving, self._probe):
            _release(handle)
        self._serving = self._probe = None


def _next_path(path: str) -> str:
    return (path[: -len(".lock")] if path.endswith(".lock") else path) + ".next"


def _take(path: str) -> IO[bytes] | None:
    handle = open(path, "ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _release(handle: IO[bytes] | None) -> None:
    if handle is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
