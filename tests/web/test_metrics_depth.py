"""What a /metrics scrape counts for its depth gauge: the pending jobs by queue, not every queue x status."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

import pending_jobs
from pending_jobs.schema import pending_jobs as J
from pending_jobs.states import JobStatus
from pending_jobs.store import Store
from pending_jobs.store.ops import OpsStore

ALL = ["sqlite", "mysql", "postgresql"]


def _fill(engine: sa.Engine) -> None:
    """mail: 3 pending (one not yet due), 1 running, 4 succeeded, 2 failed; done: 3 succeeded, nothing pending."""
    ids = pending_jobs.enqueue_many(engine, [{"task": "send", "queue": "mail"} for _ in range(10)]
                                    + [{"task": "sum", "queue": "done"} for _ in range(3)])
    with engine.begin() as conn:
        for status, chosen in (("running", ids[3:4]), ("succeeded", ids[4:8] + ids[10:]), ("failed", ids[8:10])):
            conn.execute(sa.update(J).where(J.c.id.in_(chosen)).values(status=status))
        conn.execute(sa.update(J).where(J.c.id == ids[2]).values(run_at=sa.text("run_at + INTERVAL '1' DAY")
                                                                 if engine.dialect.name != "sqlite" else
                                                                 sa.text("'2999-01-01 00:00:00.000000'")))


@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_a_scrape_counts_the_pending_jobs_only_and_lists_every_queue(console: Any, store: Store,
                                                                     engine: sa.Engine) -> None:
    """The depth gauge needs the pending jobs per queue; the scrape had counted every queue x status exactly
    (0.8 s at 1,000,000 jobs on MariaDB, most of them succeeded). A queue without pending jobs, or paused and
    empty, still has its depth of 0."""
    _fill(engine)
    OpsStore(store).pause("idle", by="test")
    counted: list[Any] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        # A count by one status ("status = ?"), as the overview's per-pair counts and its expired leases are.
        if "count(" in statement.lower() and "pending_jobs.status = " in statement:
            values = params.values() if isinstance(params, dict) else params
            counted.extend(v for v in values if v in {s.value for s in JobStatus})

    client = console()
    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        answer = client.get("/metrics")
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    assert answer.status_code == 200
    assert set(counted) == {"pending"}, counted
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for family in text_string_to_metric_families(answer.text) for s in family.samples}
    depth = {dict(labels)["queue"]: n for (name, labels), n in found.items() if name == "pending_jobs_queue_depth"}
    assert depth == {"mail": 3, "done": 0, "idle": 0}
    ages = {dict(labels)["queue"]: n for (name, labels), n in found.items()
            if name == "pending_jobs_oldest_due_age_seconds"}
    assert set(ages) == {"mail", "done", "idle"} and ages["done"] == ages["idle"] == 0 and ages["mail"] >= 0
