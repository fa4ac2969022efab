"""PushStore on each database: one statement per 1,000 ids, only ended jobs, only the columns a browser may see."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

import pending_jobs
from pending_jobs.models import Completion
from pending_jobs.store import Store
from pending_jobs.store.push import PushStore


def test_finished_among_reads_2500_ids_in_three_statements(store: Store, engine: sa.Engine) -> None:
    ids = pending_jobs.enqueue_many(engine, [{"task": "echo", "payload": {"i": i}} for i in range(2500)])
    claim = store.claim("default", 3, "test", 60)
    done = [job.id for job in claim.jobs]
    store.finish_many([Completion(claim.token, succeeded=[(done[0], {"a": [1]})], failed=[(done[1], "bad")])])
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("SELECT"):
            statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        ended = PushStore(store).finished_among([*ids, *ids[:10], 10**12])  # repeats and a missing id
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 3
    assert sorted((e.id, e.status, e.result, e.error) for e in ended) == [
        (done[0], "succeeded", {"a": [1]}, None), (done[1], "failed", None, "bad")]
    assert all(e.ended and e.finished_at is not None and e.finished_at.utcoffset() is not None for e in ended)
    states = {s.id: s for s in PushStore(store).states_of([done[0], done[2], 10**12])}
    assert set(states) == {done[0], done[2]} and states[done[2]].status == "running" and not states[done[2]].ended
    assert set(states[done[0]].message()) == {"id", "status", "result", "error", "finished_at"}
