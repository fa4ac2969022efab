"""Held jobs (their task's config table has an error, held.py) in a queue with limits of its own: claimed to
be put back unrun, they take none of the room the queue's max_running or rate leaves its other jobs."""

from __future__ import annotations

import dataclasses

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue
from pending_jobs.limits import parse
from pending_jobs.store import LimitedStore, Store
from tests.conftest import scalar


@pytest.mark.parametrize("queue", [{"max_running": 1}, {"max_running": 1, "rate_limit": "1/h"}, {"rate_limit": "1/h"}],
                         ids=["cap", "cap-and-rate", "rate"])
def test_held_jobs_first_in_line_leave_a_limited_queues_room_to_the_jobs_that_run(
        store: Store, engine: sa.Engine, queue: dict) -> None:
    # The claim was sized to the queue's room (1) and read the held jobs first: each claim started one of them,
    # to be put back, and the good job waited one claim per held job ahead of it (again each HOLD_DELAY).
    held = [enqueue(engine, "note", {"n": n}, priority=5) for n in range(3)]
    good, behind = enqueue(engine, "noop", {}), enqueue(engine, "noop", {})
    limits = dataclasses.replace(parse({"default": queue}, {}), held_tasks=frozenset({"note"}))
    jobs = LimitedStore(store, limits)

    claim = jobs.claim("default", 10, "r", 60)

    assert sorted(job.id for job in claim.jobs) == sorted([*held, good])
    # The first good job took the one slot or token: the next waits, in this runner and in another.
    assert jobs.claim("default", 10, "r", 60).jobs == []
    assert LimitedStore(store, limits).claim("default", 10, "r2", 60).jobs == []
    assert scalar(engine, "SELECT status FROM pending_jobs WHERE id = :id", id=behind) == "pending"
