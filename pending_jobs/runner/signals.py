"""SIGTERM, SIGINT and SIGHUP during a run: the first stops claiming, a second stops at once."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from ..errors import EXIT_INTERRUPTED

log = logging.getLogger(__name__)

HARD_STOP = 5.0
"""Seconds the exit path gets after a second signal to record the run; then the process ends (exit 130) whatever
it waits for. A database that does not answer (a hung server, its host still up) held it for as long as it hung,
and no number of signals ended it."""


def _end_now() -> None:
    sys.stderr.write(f"pending-jobs: still exiting {HARD_STOP:g}s after the second signal: ending now\n")
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


@contextlib.contextmanager
def stop_on_signals(first: Callable[[], None], grace: float) -> Iterator[None]:
    """Call `first()` on the first SIGTERM/SIGINT/SIGHUP; raise KeyboardInterrupt on the second (leases then
    expire and a later run rescues the jobs). Only the main thread can install handlers: elsewhere
    (a test, an embedding application's thread) signals are left to their owner."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen = 0

    def handle(signum: int, _frame: FrameType | None) -> None:
        nonlocal seen
        seen += 1
        if seen > 1:
            timer = threading.Timer(HARD_STOP, _end_now)
            timer.daemon = True  # a process that exits first is not held by it
            timer.start()
            raise KeyboardInterrupt
        log.warning("received %s: no more claims, %ss grace for running jobs", signal.Signals(signum).name, grace)
        first()

    stopping = [signal.SIGTERM, signal.SIGINT]
    # SIGHUP too (a closed ssh session): its default killed the run, and the jobs it had claimed waited for
    # their lease. Unless it is ignored: `nohup` asked for that.
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        stopping.append(signal.SIGHUP)
    previous: dict[int, Any] = {signum: signal.signal(signum, handle) for signum in stopping}
    try:
        yield
    finally:
        for signum, handler in previous.items():  # last: a signal meanwhile still ends the run our way
            signal.signal(signum, handler)
