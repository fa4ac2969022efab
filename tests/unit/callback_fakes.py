"""A due callback and a store of them in a list, for the Deliverer's unit tests (no database)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from pending_jobs.models import CallbackResult, DueCallback


def callback(job_id: int, host: str = "hooks.example.test") -> DueCallback:
    return DueCallback(job_id=job_id, url=f"https://{host}/x", token="t", attempt=1, task="noop",
                       queue="default", status="succeeded", attempts=1, result=None, last_error=None,
                       created_at=None, finished_at=None)


class ListStore:
    """The callback verbs the Deliverer uses: `due` handed out in order, results kept in `recorded`."""

    concurrent_writers = False

    def __init__(self, due: Sequence[DueCallback]) -> None:
        self.due = list(due)
        self.recorded: list[CallbackResult] = []
        self.lock = threading.Lock()  # a test may add to `due` while the sender claims

    def claim(self, limit: int, lease: float, queues: Sequence[str] = ()) -> list[DueCallback]:
        with self.lock:
            claimed, self.due = self.due[:limit], self.due[limit:]
        return claimed

    def record(self, results: Sequence[CallbackResult]) -> int:
        self.recorded.extend(results)
        return len(results)
