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


def test_a_failure_is_sent_as_its_first_line_not_its_traceback(store: Store, engine: sa.Engine) -> None:
    """A browser is the end user's: the SQL and values under a failure's first line stay on the row."""
    pending_jobs.enqueue_many(engine, [{"task": "echo"}])
    claim = store.claim("default", 1, "test", 60)
    reason = ("IntegrityError: duplicate entry for key 'uq_users_email'\nTraceback (most recent call last):\n"
              "  INSERT INTO users (email) VALUES ('someone@example.com')")
    store.finish_many([Completion(claim.token, failed=[(claim.jobs[0].id, reason)])])
    (ended,) = PushStore(store).finished_among([claim.jobs[0].id])
    assert ended.error == "IntegrityError: duplicate entry for key 'uq_users_email'"
    assert ended.message()["error"] == ended.error
    job = store.get(claim.jobs[0].id)
    assert job is not None and job.last_error is not None and "someone@example.com" in job.last_error


def test_the_read_is_served_by_the_primary_key(backend: str, store: Store, engine: sa.Engine) -> None:
    # As in production: most rows have ended (a status index alone would then read them all).
    pending_jobs.enqueue_many(engine, [{"task": "echo"} for _ in range(20_000)])
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE pending_jobs SET status = 'succeeded' WHERE id > 1000")
    reads = PushStore(store)
    reads.finished_among([1])  # builds the statement, cached on the dialect
    stmt = reads.sql.cached(("push_read", True), lambda: None).params(ids=list(range(100, 5100, 50)))
    with engine.begin() as conn:
        if backend == "postgresql":
            conn.exec_driver_sql("ANALYZE pending_jobs")
        elif backend == "mysql":
            conn.exec_driver_sql("ANALYZE TABLE pending_jobs")
        else:
            conn.exec_driver_sql("ANALYZE")
        compiled = stmt.compile(conn, compile_kwargs={"literal_binds": True})
        plan = " ".join(str(row) for row in conn.exec_driver_sql(
            ("EXPLAIN QUERY PLAN " if backend == "sqlite" else "EXPLAIN ") + str(compiled)))
    key = {"sqlite": "INTEGER PRIMARY KEY", "mysql": "PRIMARY", "postgresql": "pending_jobs_pkey"}[backend]
    assert key in plan, plan
