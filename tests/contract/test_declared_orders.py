"""Declared `sql` jobs claimed by the transaction that runs them (runner/ordering.py, store/shared.py).

On MariaDB and PostgreSQL a backlog of such jobs changes each row's status once, from `pending` to
`succeeded`, in the transaction that writes the job's rows; SQLite (one writer) keeps the plain claim. A
trigger on `pending_jobs` records every status change the runs make, so the tests see each row's history.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue
from pending_jobs.errors import CommandFailed
from pending_jobs.store import Store, dialect_for
from tests.conftest import rows, scalar

from .conftest import SAVE_USER, outcome

SEQ = {"mysql": "BIGINT AUTO_INCREMENT PRIMARY KEY", "postgresql": "BIGSERIAL PRIMARY KEY",
       "sqlite": "INTEGER PRIMARY KEY"}  # the order the changes were made in, for each job's history
CHANGES = "CREATE TABLE status_changes (seq {}, job_id BIGINT NOT NULL, old_status VARCHAR(16), new_status VARCHAR(16))"
NOTE = "INSERT INTO status_changes (job_id, old_status, new_status) VALUES (OLD.id, OLD.status, NEW.status)"
TRIGGER = {
    "mysql": [f"CREATE TRIGGER pj_status_changes AFTER UPDATE ON pending_jobs FOR EACH ROW {NOTE}"],
    "postgresql": [f"CREATE FUNCTION pj_note_change() RETURNS trigger AS $$ BEGIN {NOTE}; RETURN NEW; END $$"
                   " LANGUAGE plpgsql",
                   "CREATE TRIGGER pj_status_changes AFTER UPDATE ON pending_jobs FOR EACH ROW"
                   " EXECUTE FUNCTION pj_note_change()"],
    "sqlite": [f"CREATE TRIGGER pj_status_changes AFTER UPDATE ON pending_jobs BEGIN {NOTE}; END"],
}
ONCE = [("pending", "succeeded")]
TWICE = [("pending", "running"), ("running", "succeeded")]


def watch_status_changes(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(CHANGES.format(SEQ[dialect_for(engine).name]))
        for statement in TRIGGER[dialect_for(engine).name]:
            conn.exec_driver_sql(statement)


def changes_by_job(engine: sa.Engine) -> dict[int, list[tuple[str, str]]]:
    found: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for job_id, old, new in rows(engine, "SELECT job_id, old_status, new_status FROM status_changes ORDER BY seq"):
        if old != new:  # a heartbeat changes no status
            found[int(job_id)].append((old, new))
    return found


def test_a_backlog_of_sql_jobs_changes_each_row_once_where_writers_run_side_by_side(
        users: sa.Engine, store: Store, run_declared: Any) -> None:
    watch_status_changes(users)
    ids = [enqueue(users, "save_user", {"name": f"u{n}", "email": f"u{n}@example.com"}) for n in range(200)]

    report = run_declared({"save_user": SAVE_USER}, batch_size=20, concurrency=2)

    assert (report.claimed, report.succeeded, report.failed, report.stale) == (200, 200, 0, 0)
    histories = changes_by_job(users)
    if dialect_for(users).name == "sqlite":
        assert all(histories[job_id] == TWICE for job_id in ids)
    else:
        assert all(histories[job_id] in (ONCE, TWICE) for job_id in ids)
        # The first claims' jobs change twice (until a group has ended, how long a job takes is not known).
        assert sum(histories[job_id] == ONCE for job_id in ids) >= 100, histories
    user_ids = dict(rows(users, "SELECT email, id FROM users"))
    assert len(user_ids) == 200
    leases = rows(users, "SELECT lease_owner, lease_token, lease_expires_at FROM pending_jobs")
    assert all(owner and token and expires is None for owner, token, expires in leases)  # who ran it, as ever
    returning = dialect_for(users).name == "postgresql"  # the id only with RETURNING there
    for number, job_id in enumerate(ids):
        job = outcome(store, job_id)
        assert job.status == "succeeded" and job.attempts == 1 and job.last_error is None
        assert job.started_at is not None and job.finished_at is not None and job.started_at <= job.finished_at
        inserted = {} if returning else {"inserted_id": user_ids[f"u{number}@example.com"]}  # each its own
        assert job.result == {"rowcount": 1, **inserted}


def test_a_duplicate_in_the_backlog_fails_alone_and_every_other_job_writes_once(
        users: sa.Engine, store: Store, run_declared: Any) -> None:
    watch_status_changes(users)
    ids = [enqueue(users, "save_user", {"name": f"u{n}", "email": f"u{n}@example.com"}) for n in range(45)]
    duplicate = enqueue(users, "save_user", {"name": "again", "email": "u3@example.com"})
    ids += [enqueue(users, "save_user", {"name": f"v{n}", "email": f"v{n}@example.com"}) for n in range(45)]

    report = run_declared({"save_user": SAVE_USER}, batch_size=10, concurrency=2)

    assert (report.succeeded, report.failed, report.retried, report.stale) == (90, 1, 0, 0)
    failed = outcome(store, duplicate)
    assert failed.status == "failed" and failed.attempts == 1 and "users_email_key" in failed.last_error.replace(
        "UNIQUE constraint on users.email", "users_email_key")
    assert all(outcome(store, job_id).status == "succeeded" and outcome(store, job_id).attempts == 1 for job_id in ids)
    assert scalar(users, "SELECT COUNT(*) FROM users") == 90
    assert scalar(users, "SELECT COUNT(*) FROM users WHERE name = 'again'") == 0
    histories = changes_by_job(users)
    assert all(histories[job_id] in (ONCE, TWICE) for job_id in ids)  # an order that rolled back changed nothing
    if dialect_for(users).name != "sqlite":
        assert any(histories[job_id] == ONCE for job_id in ids)


def test_a_job_an_order_ends_was_last_changed_when_it_finished(
        users: sa.Engine, store: Store, run_declared: Any) -> None:
    """The order's UPDATE is its transaction's last statement: on PostgreSQL now() is that transaction's start
    (before its jobs ran), so a row's `updated_at` must come from the statement's clock, as its `finished_at`."""
    watch_status_changes(users)
    ids = [enqueue(users, "save_user", {"name": f"u{n}", "email": f"u{n}@example.com"}) for n in range(120)]

    run_declared({"save_user": SAVE_USER}, batch_size=20, concurrency=2)

    histories = changes_by_job(users)
    assert dialect_for(users).name == "sqlite" or any(histories[job_id] == ONCE for job_id in ids)
    for job_id in ids:
        job = outcome(store, job_id)
        assert job.finished_at is not None and job.updated_at is not None
        assert job.started_at <= job.finished_at <= job.updated_at, (histories[job_id], job)


def test_run_job_of_a_job_an_order_holds_says_it_is_held_not_that_it_is_not_pending(
        engine: sa.Engine, run: Any) -> None:
    """An order (runner/ordering.py) leaves its rows `pending` and locked until it commits: `run --job` of one
    finds nothing to claim (SKIP LOCKED), and must not say the job "is pending, not pending"."""
    if dialect_for(engine).name == "sqlite":
        return  # no orders there (one writer)
    job_id = enqueue(engine, "echo", {})
    with engine.connect() as order:  # as an order's transaction holds its jobs
        order.begin()
        order.execute(sa.text("SELECT id FROM pending_jobs WHERE id = :id FOR UPDATE"), {"id": job_id})
        with pytest.raises(CommandFailed) as refused:
            run(job_id=job_id)
        order.rollback()
    assert "not pending" not in str(refused.value) and "locked" in str(refused.value), str(refused.value)
