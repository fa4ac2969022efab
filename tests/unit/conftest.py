"""Unit tests: no database, no network; each test starts with empty caches."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pending_jobs import schedules
from pending_jobs.callbacks import guard


@pytest.fixture(autouse=True)
def _empty_caches() -> Iterator[None]:
    """Empty the guard's memo caches and the spans schedules found, so every test runs the code it tests.

    Mutation testing (`make mutation`) forks each mutant's run from a process that already ran the
    tests: without this, cached answers of the unmutated code would hide the mutant.
    """
    for cached in (guard.blocked_reason, guard.parse, guard.redact):
        cached.cache_clear()
    schedules._SPANS.clear()
    yield
