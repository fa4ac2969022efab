"""The store verbs the callback sender speaks (the SQL store implements them; nothing here knows SQL)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..models import CallbackResult, DueCallback


class CallbackVerbs(Protocol):
    """Claim due callbacks under a lease, and record what their attempts came to."""

    @property
    def concurrent_writers(self) -> bool:
        """Whether attempts may be recorded while the next claim runs (not on SQLite)."""

    def claim(self, limit: int, lease: float, queues: Sequence[str] = ()) -> list[DueCallback]:
        """Lease up to `limit` due callbacks (of jobs in `queues`; empty: all)."""

    def record(self, results: Sequence[CallbackResult]) -> int:
        """Write a batch of attempt outcomes in one transaction."""
