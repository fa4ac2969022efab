"""The contract suite: the same tests, unchanged, on SQLite, MariaDB and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue, enqueue_many
from pending_jobs.errors import CommandFailed
from pending_jobs.models import Finished, Rescued
from pending_jobs.states import TRANSITIONS, JobStatus
from pending_jobs.store import RunStore, Store
from pending_jobs.store.columns import LEASE_EXPIRED
from tests.conftest import finish, rows, scalar


def job(engine: sa.Engine, job_id: int) -> Any:
    """The row as a mapping."""
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT * FROM pending_jobs WHERE id = :id"), {"id": job_id}).mappings().one()


def make_due(engine: sa.Engine) -> None:
    """Move every pending job's run_at into the past (skips backoff waits without sleeping)."""
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET run_at = :t WHERE status = 'pending'"),
                     {"t": dt.datetime(2000, 1, 1)})


def test_raw_sql_insert_with_only_task_and_payload_runs(engine: sa.Engine, run: Any) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO pending_jobs (task, payload) VALUES ('echo', '{\"name\": \"John\"}')"))
    inserted = job(engine, 1)
    assert (inserted.status, inserted.queue, inserted.priority, inserted.attempts) == ("pending", "default", 0, 0)
    assert inserted.max_attempts >= 1 and inserted.run_at is not None and inserted.created_at is not None

    report = run()

    done = job(engine, 1)
    assert report.succeeded == 1
    assert done.status == "succeeded" and done.attempts == 1
    result = done.result if isinstance(done.result, dict) else json.loads(done.result)
    assert result["payload"] == {"name": "John"}
    assert done.finished_at is not None and done.started_at is not None
    assert done.callback_status is None  # no callback_url, no callback


def test_enqueue_api_options_and_idempotency(engine: sa.Engine) -> None:
    first = enqueue(engine, "echo", {"a": 1}, queue="mail", priority=7, max_attempts=3,
                    callback_url="https://example.com/hook", idempotency_key="order-42")
    again = enqueue(engine, "echo", {"a": 2}, idempotency_key="order-42")
    assert again == first
    row = job(engine, first)
    assert (row.queue, row.priority, row.max_attempts, row.callback_url) == ("mail", 7, 3, "https://example.com/hook")
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs") == 1


def test_enqueue_rejects_bad_arguments_with_clear_errors(engine: sa.Engine) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"payload": [1, 2]}, "JSON object"),
        ({"payload": {"x": object()}}, "not JSON-serialisable"),
        ({"priority": 10**9}, "priority"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"callback_url": "ftp://example.com/x"}, "scheme"),
        ({"delay": 5, "run_at": dt.datetime.now(dt.UTC)}, "not both"),
        ({"run_at": dt.datetime(2030, 1, 1)}, "timezone-aware"),
    ]
    for options, message in cases:
        kwargs: dict[str, Any] = {"payload": {}, **options}
        payload = kwargs.pop("payload")
        with pytest.raises(ValueError, match=message):
            enqueue(engine, "echo", payload, **kwargs)
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs") == 0


def test_enqueue_joins_the_callers_transaction(engine: sa.Engine) -> None:
    with pytest.raises(RuntimeError), engine.begin() as conn:
        enqueue(conn, "echo", {"n": 1})
        raise RuntimeError("the business write failed")
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs") == 0
    with engine.begin() as conn:
        job_id = enqueue(conn, "echo", {"n": 2})
    assert job(engine, job_id).status == "pending"


def test_enqueue_many_returns_ids_in_order(engine: sa.Engine, run: Any) -> None:
    ids = enqueue_many(engine, [{"task": "echo", "payload": {"i": i}} for i in range(2500)])
    assert len(ids) == 2500 and len(set(ids)) == 2500
    payloads = dict(rows(engine, "SELECT id, payload FROM pending_jobs"))
    for i in (0, 1234, 2499):
        stored = payloads[ids[i]]
        assert (stored if isinstance(stored, dict) else json.loads(stored)) == {"i": i}
    assert run(batch_size=500).succeeded == 2500


def test_enqueue_many_takes_rows_that_name_different_fields(engine: sa.Engine) -> None:
    # Each row names only what it sets: before, a row without the callback_url the first one had failed the
    # whole call with "A value is required for bind parameter 'callback_url'", on every database.
    given = [{"task": "echo", "callback_url": "http://127.0.0.1:9/done"}, {"task": "echo"},
             {"task": "echo", "priority": 5}, *({"task": "echo", "queue": "mail"} for _ in range(3)), {"task": "echo"}]
    ids = enqueue_many(engine, given)
    assert ids == sorted(ids) and len(set(ids)) == len(given)
    found = rows(engine, "SELECT id, queue, priority, callback_url FROM pending_jobs")
    stored = {row[0]: tuple(row[1:]) for row in found}
    assert [stored[job_id] for job_id in ids] == [
        ("default", 0, "http://127.0.0.1:9/done"), ("default", 0, None), ("default", 5, None),
        *([("mail", 0, None)] * 3), ("default", 0, None)]


def test_priority_then_run_at_order(engine: sa.Engine, store: Store) -> None:
    low = enqueue(engine, "noop", {}, priority=-5)
    high = enqueue(engine, "noop", {}, priority=10)
    mid_old = enqueue(engine, "noop", {})
    mid_new = enqueue(engine, "noop", {})
    claim = store.claim("default", 10, "test", 60)
    assert [j.id for j in claim.jobs] == [high, mid_old, mid_new, low]
    assert all(j.attempt == 1 and j.token == claim.token for j in claim.jobs)


def test_future_jobs_wait_and_run_job_runs_them_now(engine: sa.Engine, run: Any) -> None:
    later = enqueue(engine, "echo", {}, delay=3600)
    at = enqueue(engine, "echo", {}, run_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    assert run().claimed == 0
    assert job(engine, later).status == "pending"

    report = run(job_id=later)  # --job: run this one now, whatever its run_at
    assert report.succeeded == 1
    assert job(engine, later).status == "succeeded"
    assert job(engine, at).status == "pending"


def test_run_job_refuses_a_job_that_is_not_pending(engine: sa.Engine, run: Any) -> None:
    job_id = enqueue(engine, "echo", {})
    run()
    with pytest.raises(CommandFailed, match="succeeded, not pending"):
        run(job_id=job_id)


def test_exception_retries_with_backoff_then_succeeds(engine: sa.Engine, run: Any) -> None:
    job_id = enqueue(engine, "flaky", {"succeed_on": 3}, max_attempts=5)
    before = scalar(engine, "SELECT run_at FROM pending_jobs WHERE id = :id", id=job_id)
    assert run().retried == 1
    first = job(engine, job_id)
    assert first.status == "pending" and first.attempts == 1
    assert "ValueError: attempt 1 fails" in first.last_error and "Traceback" not in first.last_error.split("\n")[0]
    # Backoff: the first retry waits 5-10 s (10 s base with jitter), by the database clock.
    assert 4 <= (_dt(first.run_at) - _dt(before)).total_seconds() <= 60
    assert run().claimed == 0  # not due yet
    make_due(engine)
    assert run().retried == 1
    make_due(engine)
    assert run().succeeded == 1
    assert job(engine, job_id).attempts == 3


def test_exhausted_attempts_fail_with_the_last_error(engine: sa.Engine, run: Any) -> None:
    job_id = enqueue(engine, "boom", {"message": "disk full"}, max_attempts=2)
    run()
    make_due(engine)
    report = run()
    row = job(engine, job_id)
    assert report.failed == 1
    assert (row.status, row.attempts) == ("failed", 2)
    assert "RuntimeError: disk full" in row.last_error and "attempt 2 of 2" in row.last_error
    assert row.finished_at is not None


def test_retry_and_fail_raised_by_handlers(engine: sa.Engine, run: Any) -> None:
    retry_id = enqueue(engine, "retry_later", {"delay": 7200})
    fail_id = enqueue(engine, "fail_now", {}, max_attempts=10)
    run()
    retried, failed = job(engine, retry_id), job(engine, fail_id)
    assert retried.status == "pending" and "Retry: not yet" in retried.last_error
    assert (_dt(retried.run_at) - _dt(retried.updated_at)).total_seconds() == pytest.approx(7200, abs=5)
    assert (failed.status, failed.attempts) == ("failed", 1)
    assert failed.last_error == "Fail: the input can never work"


def test_an_unknown_task_is_tried_again_then_fails_when_its_attempts_are_spent(engine: sa.Engine, run: Any) -> None:
    # Tried again: the run serving loaded its tasks when it started, and a task deployed since (its config or
    # code out a moment before its producers, a host not yet upgraded) is known to the next run.
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO pending_jobs (task, payload, max_attempts) VALUES ('no_such_task', '{}', 2)"))
    run()
    row = job(engine, 1)
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.last_error.startswith("unknown task 'no_such_task': no handler registered in this run (known: ")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET run_at = :now"), {"now": dt.datetime(2000, 1, 1)})
    run()
    row = job(engine, 1)
    assert (row.status, row.attempts) == ("failed", 2)
    assert "unknown task 'no_such_task'" in row.last_error and "(attempt 2 of 2: giving up)" in row.last_error


def test_handler_write_through_ctx_commits_with_success(engine: sa.Engine, run: Any) -> None:
    ok = enqueue(engine, "ledger", {})
    raised = enqueue(engine, "ledger_then_raise", {}, max_attempts=1)
    report = run()
    assert report.succeeded == 1 and report.failed == 1
    assert [r[0] for r in rows(engine, "SELECT job_id FROM ledger")] == [ok]  # the raising write rolled back
    assert job(engine, ok).status == "succeeded"
    assert job(engine, raised).status == "failed"


@pytest.mark.parametrize("results", [
    [{"rowcount": 1}] * 3,  # the same for every job (an sql task's row count): bound once
    [{"n": 1}, {"n": True}, {"n": 1.0}],  # equal in Python, not in JSON: each job keeps its own
    [{"n": 1}, None, {"n": 1}],  # one without a result keeps none
], ids=["same", "equal-in-python", "one-none"])
def test_each_job_of_a_batch_keeps_its_own_result(engine: sa.Engine, store: Store, results: list[Any]) -> None:
    ids = [enqueue(engine, "noop", {}) for _ in results]
    claim = store.claim("default", 10, "runner", 60)

    assert finish(store, claim.token, succeeded=list(zip(ids, results, strict=True))).succeeded == 3

    stored = {int(row.id): row.result for row in rows(engine, "SELECT id, result FROM pending_jobs")}
    found = [stored[job_id] if isinstance(stored[job_id], dict | None) else json.loads(stored[job_id])
             for job_id in ids]
    assert [json.dumps(value) for value in found] == [json.dumps(value) for value in results]


def test_the_rescue_keeps_each_tasks_own_limit_by_its_exact_name(engine: sa.Engine, store: Store) -> None:
    """One SQL term per limited task overflowed SQLite's expression depth at about 1,000 tasks (the rescue
    raised exactly when a runner had died); MariaDB's padding collation failed 'once ' by the limit of 'once',
    while the error history it wrote said the job was put back."""
    once, padded = enqueue(engine, "once", {}), enqueue(engine, "other", {})
    with engine.begin() as conn:  # a name only raw SQL writes; then their runner died during attempt 1
        conn.execute(sa.text("UPDATE pending_jobs SET task = 'once ' WHERE id = :id"), {"id": padded})
        conn.execute(sa.text("UPDATE pending_jobs SET status = 'running', attempts = 1, lease_token = 'gone', "
                             "lease_expires_at = :t"), {"t": dt.datetime(2000, 1, 1)})

    assert store.rescue_expired({**{f"task_{n}": 1 for n in range(1500)}, "once": 1}) == Rescued(pending=1, failed=1)

    jobs = {int(row.id): (row.status, row.last_error) for row in rows(engine, "SELECT * FROM pending_jobs")}
    history = {int(row.job_id): row.error for row in rows(engine, "SELECT * FROM pending_job_errors")}
    assert jobs[once] == ("failed", LEASE_EXPIRED + "; no attempts left") == ("failed", history[once])
    assert jobs[padded] == ("pending", LEASE_EXPIRED) == ("pending", history[padded])


def test_stale_runner_cannot_overwrite_a_newer_outcome(engine: sa.Engine, store: Store) -> None:
    job_id = enqueue(engine, "noop", {})
    old = store.claim("default", 1, "old-runner", 60)
    with engine.begin() as conn:  # the lease is taken over: expired and rescued, then claimed again
        conn.execute(sa.text("UPDATE pending_jobs SET lease_expires_at = :t"), {"t": dt.datetime(2000, 1, 1)})
    assert store.rescue_expired() == Rescued(pending=1)
    new = store.claim("default", 1, "new-runner", 60)
    assert new.jobs[0].attempt == 2

    stale = finish(store, old.token, succeeded=[(job_id, {"from": "old"})])
    assert stale.succeeded == 0
    session = store.handler_transaction(old.jobs[0])
    session.connection.execute(sa.text("SELECT 1"))  # the stale handler used ctx.connection
    assert session.commit_success(None) == ("stale", "")
    fresh = finish(store, new.token, failed=[(job_id, "new outcome")])
    assert fresh.failed == 1
    row = job(engine, job_id)
    assert (row.status, row.last_error, row.result) == ("failed", "new outcome", None)


def test_expired_lease_rescue(engine: sa.Engine, store: Store, run: Any) -> None:
    retry_id = enqueue(engine, "echo", {}, max_attempts=3)
    spent_id = enqueue(engine, "echo", {}, max_attempts=1)
    store.claim("default", 10, "crashed-runner", 60)  # the runner "dies" holding both
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET lease_expires_at = :t"), {"t": dt.datetime(2000, 1, 1)})
    assert len(RunStore(store).expired_leases()) == 2

    report = run()

    assert report.rescued == 2
    spent = job(engine, spent_id)
    assert spent.status == "failed" and "lease expired" in spent.last_error
    again = job(engine, retry_id)
    assert again.status == "succeeded" and again.attempts == 2


def test_live_lease_is_not_rescued(engine: sa.Engine, store: Store, run: Any) -> None:
    enqueue(engine, "echo", {})
    store.claim("default", 1, "busy-runner", 600)
    assert run().rescued == 0
    assert scalar(engine, "SELECT status FROM pending_jobs") == "running"


def test_max_jobs_limits_the_run(engine: sa.Engine, run: Any) -> None:
    enqueue_many(engine, [{"task": "noop"} for _ in range(30)])
    report = run(max_jobs=12, batch_size=5)
    assert report.claimed == 12 and report.succeeded == 12 and report.stopped_by == "max-jobs"
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status = 'pending'") == 18


def test_max_runtime_stops_claiming_and_leaves_the_rest_pending(engine: sa.Engine, run: Any) -> None:
    enqueue_many(engine, [{"task": "sleep", "payload": {"seconds": 0.3}} for _ in range(20)])
    report = run(max_runtime=1.0, batch_size=1, concurrency=1)  # room for the first claim on a loaded machine
    assert report.stopped_by == "max-runtime"
    assert 1 <= report.succeeded < 20
    counts = dict(rows(engine, "SELECT status, COUNT(*) FROM pending_jobs GROUP BY status"))
    assert counts.get("running", 0) == 0  # nothing claimed and left behind
    assert counts["succeeded"] == report.succeeded and counts["pending"] == 20 - report.succeeded
    assert scalar(engine, "SELECT MAX(attempts) FROM pending_jobs WHERE status = 'pending'") == 0


def test_poll_picks_up_jobs_inserted_while_running(engine: sa.Engine, run: Any) -> None:
    inserted: list[int] = []

    def produce() -> None:
        time.sleep(0.5)
        inserted.append(enqueue(engine, "echo", {"late": True}))

    producer = threading.Thread(target=produce)
    producer.start()
    report = run(poll=0.1, max_runtime=2.0)
    producer.join()
    assert report.stopped_by == "max-runtime"
    assert report.succeeded == 1 and job(engine, inserted[0]).status == "succeeded"


def test_without_poll_an_empty_queue_ends_the_run(run: Any) -> None:
    report = run()
    assert (report.claimed, report.stopped_by) == (0, "empty")


def test_queues_are_selected_and_round_robin(engine: sa.Engine, run: Any) -> None:
    enqueue_many(engine, [{"task": "noop", "queue": q} for q in ("a", "b", "c") for _ in range(3)])
    assert run(queues=["b"]).succeeded == 3
    assert dict(rows(engine, "SELECT queue, COUNT(*) FROM pending_jobs WHERE status='pending' GROUP BY queue")) == {
        "a": 3, "c": 3}
    assert run(batch_size=2).succeeded == 6  # no --queue: every queue


def test_bad_rows_fail_with_reasons_and_the_batch_goes_on(engine: sa.Engine, run: Any) -> None:
    with engine.begin() as conn:
        for payload, extra in [
            ("[1, 2]", {}),
            ('"text"', {}),
            ('{"ok": 1}', {"max_attempts": 0}),
            ('{"ok": 1}', {"priority": 999999}),
            ('{"ok": 1}', {"callback_url": "not a url"}),
            ('{"ok": 1}', {}),
        ]:
            columns = ", ".join(["task", "payload", *extra])
            marks = ", ".join([":task", ":payload", *(f":{k}" for k in extra)])
            conn.execute(sa.text(f"INSERT INTO pending_jobs ({columns}) VALUES ({marks})"),
                         {"task": "echo", "payload": payload, **extra})
    report = run()
    got = rows(engine, "SELECT id, status, last_error FROM pending_jobs ORDER BY id")
    assert report.failed == 5 and report.succeeded == 1
    reasons = [r.last_error for r in got[:5]]
    assert "payload must be a JSON object, got an array" in reasons[0]
    assert "got a string" in reasons[1]
    assert "max_attempts is 0" in reasons[2]
    assert "priority 999999 is outside" in reasons[3]
    assert "invalid callback_url" in reasons[4]
    assert got[5].status == "succeeded"


def test_status_counts_and_oldest_due(engine: sa.Engine, store: Store) -> None:
    enqueue_many(engine, [{"task": "noop", "queue": "a"}, {"task": "noop", "queue": "a"}, {"task": "noop"}])
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET run_at = :t WHERE id = 1"),
                     {"t": dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=90)})
    assert RunStore(store).counts() == [("a", "pending", 2), ("default", "pending", 1)]
    age = RunStore(store).oldest_due_age()
    assert age is not None and 85 <= age <= 600


def test_transition_table_covers_every_status() -> None:
    assert set(TRANSITIONS) == set(JobStatus)
    assert JobStatus.RUNNING in TRANSITIONS[JobStatus.PENDING]
    assert not TRANSITIONS[JobStatus.SUCCEEDED] - {JobStatus.PENDING}


def _dt(value: Any) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return value.replace(tzinfo=None)


def test_a_cancelled_running_job_whose_handler_gives_up_ends_cancelled(engine: sa.Engine, store: Store) -> None:
    job_id = enqueue(engine, "noop", {}, callback_url="https://hooks.example.com/c")
    claim = store.claim("default", 1, "runner", 60)
    with engine.begin() as conn:  # `pending-jobs cancel` while it runs
        conn.execute(sa.text("UPDATE pending_jobs SET cancel_requested = :t"), {"t": True})
    done = finish(store, claim.token, retried=[(job_id, 0.0, "RuntimeError: stopped, cancel requested")])
    assert done == Finished(cancelled=1)  # counted as cancelled: neither retried nor stale
    row = job(engine, job_id)
    assert (row.status, row.callback_status) == ("cancelled", "pending")
    assert row.last_error == "RuntimeError: stopped, cancel requested" and row.finished_at is not None
    assert store.claim("default", 10, "runner", 60).jobs == []


def test_rescue_of_a_job_being_cancelled_ends_it_cancelled(engine: sa.Engine, store: Store) -> None:
    job_id = enqueue(engine, "noop", {})
    store.claim("default", 1, "crashed", 60)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET cancel_requested = :t, lease_expires_at = :e"),
                     {"t": True, "e": dt.datetime(2000, 1, 1)})
    assert store.rescue_expired() == Rescued(cancelled=1)
    assert job(engine, job_id).status == "cancelled"


def test_heartbeat_extends_only_the_named_running_jobs(engine: sa.Engine, store: Store) -> None:
    first, second = enqueue(engine, "noop", {}), enqueue(engine, "noop", {})
    claim = store.claim("default", 2, "runner", 5)
    before = dict(rows(engine, "SELECT id, lease_expires_at FROM pending_jobs"))
    assert store.heartbeat([(first, claim.token)], 3600) == 1
    assert store.heartbeat([(second, "someone-elses-token")], 3600) == 0
    after = dict(rows(engine, "SELECT id, lease_expires_at FROM pending_jobs"))
    assert _dt(after[first]) - _dt(before[first]) > dt.timedelta(minutes=50)
    assert after[second] == before[second]


def test_handler_whose_connection_died_is_retried_not_stuck(engine: sa.Engine, run: Any, backend: str) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite connections cannot be killed from outside")
    job_id = enqueue(engine, "kill_own_connection_then_raise", {}, max_attempts=3)
    report = run(max_runtime=30)
    assert (report.retried, report.stopped_by) == (1, "empty")
    row = job(engine, job_id)
    assert row.status == "pending" and "failed after losing its connection" in row.last_error
    assert scalar(engine, "SELECT COUNT(*) FROM ledger") == 0  # the killed transaction's write is gone
