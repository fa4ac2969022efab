"""The console's store on every database: error history on failure paths, overview, keyset job list,
bulk actions, audit, metrics counters, and PostgreSQL's NOTIFY when jobs finish."""

from __future__ import annotations

import select
from typing import Any

import pytest
import sqlalchemy as sa

import pending_jobs
from pending_jobs.schema import pending_jobs as J
from pending_jobs.store import OpsStore, Store
from pending_jobs.store.columns import LEASE_EXPIRED
from pending_jobs.store.console import ConsoleStore
from pending_jobs.store.history import ERRORS_KEPT
from pending_jobs.store.ops import JobFilter
from tests.conftest import finish, scalar

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "mysql", "postgresql"], indirect=True)


def _due(engine: sa.Engine, job_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET run_at = created_at WHERE id = :id"), {"id": job_id})


def test_every_failed_attempt_keeps_its_error_and_a_repeat_writes_none(store: Store, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        job = pending_jobs.enqueue(conn, "boom", {"n": 1}, max_attempts=3)
        fine = pending_jobs.enqueue(conn, "echo", {"n": 2})
    console = ConsoleStore(store)
    claim = store.claim("default", 10, "t", 60)
    assert {j.id for j in claim.jobs} == {job, fine}
    finish(store, claim.token, succeeded=[(fine, None)], retried=[(job, 0.0, "first <b>error</b>")])
    finish(store, claim.token, retried=[(job, 0.0, "first <b>error</b>")])  # a repeat: the guard holds
    _due(engine, job)
    claim = store.claim("default", 10, "t", 60)
    finish(store, claim.token, retried=[(job, 0.0, "second")])
    _due(engine, job)
    claim = store.claim("default", 10, "t", 60)
    finish(store, claim.token, failed=[(job, "third, for good")])
    errors = console.errors(job)
    assert [(e.attempt, e.error) for e in errors] == [(1, "first <b>error</b>"), (2, "second"),
                                                      (3, "third, for good")]
    assert all(e.at is not None for e in errors)
    assert console.errors(fine) == []  # success writes nothing


def test_history_is_bounded_per_job(store: Store, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        job = pending_jobs.enqueue(conn, "boom", {}, max_attempts=100)
        conn.execute(sa.text("UPDATE pending_jobs SET attempts = 30 WHERE id = :id"), {"id": job})
        for attempt in range(1, 31):
            conn.execute(sa.text("INSERT INTO pending_job_errors (job_id, attempt, error) VALUES (:j, :a, 'old')"),
                         {"j": job, "a": attempt})
    claim = store.claim("default", 1, "t", 60)
    finish(store, claim.token, retried=[(job, 60.0, "newest")])
    kept = ConsoleStore(store).errors(job)
    assert len(kept) == ERRORS_KEPT
    assert [e.attempt for e in kept] == list(range(31 - ERRORS_KEPT + 1, 32))
    assert kept[-1].error == "newest"


def test_rescued_lease_and_purge(store: Store, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        job = pending_jobs.enqueue(conn, "sleep", {}, max_attempts=1)
    store.claim("default", 1, "t", 60)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET lease_expires_at = '2000-01-01 00:00:00' WHERE id = :id"),
                     {"id": job})
    assert store.rescue_expired().failed == 1
    errors = ConsoleStore(store).errors(job)
    assert [(e.attempt, e.error) for e in errors] == [(1, LEASE_EXPIRED + "; no attempts left")]
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET finished_at = '2000-01-01 00:00:00' WHERE id = :id"),
                     {"id": job})
    with engine.begin() as conn:  # a newer job: SQLite's purge keeps the newest row, so no id is given twice
        pending_jobs.enqueue(conn, "sleep", {})
    assert OpsStore(store).purge(3600, ["failed"]) == 1
    assert scalar(engine, "SELECT COUNT(*) FROM pending_job_errors") == 0


def test_overview_counts_oldest_due_expired_and_paused(store: Store, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        first = pending_jobs.enqueue(conn, "echo", {}, queue="mail")
        pending_jobs.enqueue(conn, "echo", {}, queue="mail")
        pending_jobs.enqueue(conn, "echo", {}, queue="mail", delay=3600)
        running = pending_jobs.enqueue(conn, "sleep", {}, queue="reports")
        conn.execute(sa.text("UPDATE pending_jobs SET run_at = '2001-01-01 00:00:00' WHERE id = :id"), {"id": first})
        conn.execute(sa.text("UPDATE pending_jobs SET status = 'running', lease_expires_at = '2000-01-01 00:00:00' "
                             "WHERE id = :id"), {"id": running})
    OpsStore(store).pause("idle", "tester")
    overview = {q.queue: q for q in ConsoleStore(store).overview()}
    assert set(overview) == {"idle", "mail", "reports"}
    mail = overview["mail"]
    assert mail.counts["pending"] == 3 and mail.counts["failed"] == 0
    assert mail.oldest_due_id == first and mail.oldest_due_age is not None and mail.oldest_due_age > 86400 * 365
    assert overview["reports"].expired_leases == 1 and overview["reports"].oldest_due_id is None
    assert overview["idle"].paused and not mail.paused


def test_job_list_filters_and_keyset_pages(store: Store, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        ids = [pending_jobs.enqueue(conn, "echo", {"n": n, "note": "needle_%" if n == 3 else "hay"},
                                    queue="a" if n % 2 else "b") for n in range(7)]
        conn.execute(sa.text("UPDATE pending_jobs SET status = 'failed', last_error = 'the Needle broke' "
                             "WHERE id = :id"), {"id": ids[6]})
    console = ConsoleStore(store)

    def ids_of(f: JobFilter) -> list[int]:
        return [j.id for j in console.jobs(f).jobs]

    page = console.jobs(JobFilter(), limit=3)
    assert [j.id for j in page.jobs] == ids[6:3:-1] and page.next == ids[4] and page.searched_from is None
    page = console.jobs(JobFilter(), before=page.next, limit=3)
    assert [j.id for j in page.jobs] == ids[3:0:-1] and page.next == ids[1]
    page = console.jobs(JobFilter(), before=page.next, limit=3)
    assert [j.id for j in page.jobs] == [ids[0]] and page.next is None
    assert ids_of(JobFilter(queue="a")) == [ids[5], ids[3], ids[1]]
    assert ids_of(JobFilter(text="needle_%")) == [ids[3]]  # % is literal
    assert ids_of(JobFilter(text="Needle broke")) == [ids[6]]
    assert ids_of(JobFilter(statuses=("failed",), task="echo")) == [ids[6]]
    assert ids_of(JobFilter(since=3600)) and not ids_of(JobFilter(until=3600))
    assert console.count(JobFilter(queue="b")) == 4


def test_a_task_filter_finds_the_tasks_jobs_in_every_status_running_ones_too(store: Store, engine: sa.Engine) -> None:
    """Every status, running included: a trial index that left running jobs out (docs/performance.md) had to find
    them another way; whatever serves the filter, it must find them all."""
    statuses = ("pending", "running", "succeeded", "failed", "cancelled")
    with engine.begin() as conn:
        ids = {status: pending_jobs.enqueue(conn, "mail", {"status": status}) for status in statuses}
        pending_jobs.enqueue(conn, "other", {})
        for status, job_id in ids.items():
            conn.execute(sa.text("UPDATE pending_jobs SET status = :s WHERE id = :id"), {"s": status, "id": job_id})
    console, ops = ConsoleStore(store), OpsStore(store)
    newest_first = sorted(ids.values(), reverse=True)
    assert [j.id for j in console.jobs(JobFilter(task="mail")).jobs] == newest_first
    assert [j.id for j in ops.list_jobs(JobFilter(task="mail"))] == newest_first
    assert console.count(JobFilter(task="mail")) == 5
    assert [j.id for j in console.jobs(JobFilter(task="mail", statuses=("running",))).jobs] == [ids["running"]]
    assert [j.id for j in console.jobs(JobFilter(task="mail", statuses=("failed", "running"))).jobs] == sorted(
        (ids["failed"], ids["running"]), reverse=True)
    assert console.count_acted(JobFilter(task="mail"), ("pending", "running")) == (5, 2)


def test_postgresql_serves_a_task_filter_from_the_whole_task_index(backend: str, store: Store,
                                                                    engine: sa.Engine) -> None:
    """The task index holds every row version on PostgreSQL, so a rare task's page reads that task's entries only.
    A trial index without `running` versions (a cheaper claim) found them through the claim index instead, whose
    `running` range keeps an entry per claim until VACUUM: after 1.1 M claims a page took 179-197 ms and fell back
    to a windowed search (docs/performance.md, "The task index without running rows")."""
    if backend != "postgresql":
        pytest.skip("MariaDB and SQLite write the task index at INSERT only")
    with engine.connect() as conn:
        definition = conn.execute(sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_pending_jobs_task'"))
        assert " WHERE " not in definition.scalar_one()
        conn.exec_driver_sql("SET enable_seqscan = off")  # a near-empty table: the planner would scan it anyway
        stmt = sa.select(J.c.id).where(*OpsStore(store).where(JobFilter(task="mail"))).order_by(J.c.id.desc())
        plan = "\n".join(row[0] for row in conn.execute(sa.text("EXPLAIN " + str(stmt.compile(
            dialect=conn.dialect, compile_kwargs={"literal_binds": True})))))
        assert "ix_pending_jobs_task" in plan and "ix_pending_jobs_claim" not in plan, plan


def test_bulk_retry_and_cancel_over_a_filter(store: Store, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        a = pending_jobs.enqueue(conn, "echo", {}, queue="x")
        b = pending_jobs.enqueue(conn, "echo", {}, queue="x")
        c = pending_jobs.enqueue(conn, "echo", {}, queue="y")
        conn.execute(sa.text("UPDATE pending_jobs SET status = 'failed', attempts = 5 WHERE id IN (:a, :c)"),
                     {"a": a, "c": c})
    console = ConsoleStore(store)
    assert console.bulk_retry(JobFilter(queue="x")) == 1
    assert {j.id: (j.status, j.attempts) for j in console.jobs(JobFilter()).jobs} == {
        a: ("pending", 0), b: ("pending", 0), c: ("failed", 5)}
    assert console.bulk_cancel(JobFilter(queue="x")) == 2
    assert {j.status for j in console.jobs(JobFilter(queue="x")).jobs} == {"cancelled"}


def test_audit_and_counters(store: Store, engine: sa.Engine, run: Any) -> None:
    with engine.begin() as conn:
        pending_jobs.enqueue(conn, "echo", {}, queue="q1")
        pending_jobs.enqueue(conn, "boom", {}, queue="q1", max_attempts=1, callback_url="http://127.0.0.1:9/x")
        pending_jobs.enqueue(conn, "echo", {}, queue="q2", delay=3600)
    run(callbacks="off")
    console = ConsoleStore(store)
    console.audit("alice", "retry", job_id=7, detail="from the job page")
    console.audit("bob", "pause", queue="q1")
    log = console.audit_log()
    assert [(r.actor, r.action, r.queue, r.job_id) for r in log] == [("bob", "pause", "q1", None),
                                                                    ("alice", "retry", None, 7)]
    assert console.audit_log(before=log[0].id)[0].actor == "alice"
    counters = console.counters()
    assert sorted(counters.finished) == [("q1", "boom", "failed", 1), ("q1", "echo", "succeeded", 1)]
    assert counters.callbacks == {} and counters.callbacks_pending == 1  # pending is no outcome: a gauge
    assert counters.depth == {"q1": 0, "q2": 1}
    throughput = console.throughput()
    assert sum(b["succeeded"] for b in throughput["minutes"]) == 1
    assert sum(b["failed"] for b in throughput["hours"]) == 1
    assert len(throughput["minutes"]) == 60 and len(throughput["hours"]) == 24
    assert throughput["timing"]["hour"]["jobs"] == 2 and throughput["timing"]["hour"]["run_p95"] is not None


def test_postgresql_notifies_once_per_finishing_statement(store: Store, engine: sa.Engine, backend: str) -> None:
    if backend != "postgresql":
        with engine.connect() as conn:  # nothing of the kind elsewhere: the push endpoint polls there
            assert "pending_job_errors" in sa.inspect(conn).get_table_names()
        return
    with engine.begin() as conn:
        ids = [pending_jobs.enqueue(conn, "echo", {}) for _ in range(3)]
    listener = engine.raw_connection()
    try:
        driver: Any = listener.driver_connection
        driver.autocommit = True
        driver.execute("LISTEN pending_jobs_finished")
        claim = store.claim("default", 10, "t", 60)  # an UPDATE that finishes nothing: no notification
        assert not _notifications(driver, 0.3)
        finish(store, claim.token, succeeded=[(i, None) for i in ids])
        got = _notifications(driver, 2.0)
        assert [n.channel for n in got] == ["pending_jobs_finished"]  # three rows, one statement, one NOTIFY
    finally:
        listener.close()


def _notifications(driver: Any, wait: float) -> list[Any]:
    select.select([driver.fileno()], [], [], wait)
    return list(driver.notifies(timeout=0.2, stop_after=10))
