"""The producer and claims a limit held back: a drain waits for the time the claim names instead of
stopping, and stops once nothing is held back."""

from __future__ import annotations

from pending_jobs.models import Claim

from .memory_store import MemoryStore
from .test_producer import noop, run, tasks


class RateLimited(MemoryStore):
    """Admits one job per claim, and says when to look again while jobs wait (a rate limit)."""

    def __init__(self) -> None:
        super().__init__()
        self.claims = 0

    def claim(self, queue: str, limit: int, owner: str, lease: float) -> Claim:
        self.claims += 1
        if self.claims % 2:  # every other claim finds the bucket empty
            waiting = any(row.status == "pending" for row in self.rows.values())
            return Claim("empty", [], retry_in=0.01 if waiting else None)
        return super().claim(queue, 1, owner, lease)


def test_a_drain_waits_for_jobs_a_rate_limit_held_back() -> None:
    store = RateLimited()
    for _ in range(5):
        store.add("noop")
    report = run(store, tasks(noop=noop))
    assert store.statuses() == {"succeeded": 5}
    assert (report.claimed, report.stopped_by) == (5, "empty")
    assert store.claims >= 10
