"""Two declared sql tasks that update the same two rows in opposite order, run at the same time by one
runner with two workers, on MariaDB and PostgreSQL: the database breaks the deadlock by rolling one
transaction back (MariaDB error 1213, PostgreSQL 40P01).

Run alone (a task with a timeout), the victim job is retried, not failed, its error history says
deadlock, and in the end each job has done its work exactly once. Run in shared transactions (one per
worker), the victim's whole group is rolled back and worked again one job at a time, which waits for
the other group's commit: every job succeeds at its first attempt, once.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue
from pending_jobs.store import Store, dialect_for
from tests.conftest import rows, scalar

from .conftest import outcome

SLEEP = {"mysql": "SELECT SLEEP(:pause)", "postgresql": "SELECT pg_sleep(:pause)"}
ACCOUNTS = "CREATE TABLE accounts (id INT PRIMARY KEY, n INT NOT NULL)"
EFFECTS = "CREATE TABLE effects (job VARCHAR(16) PRIMARY KEY)"  # a second run of a job would break the key


def crossing(first: int, second: int, sleep: str, **policy: Any) -> dict[str, Any]:
    """A task updating account `first`, pausing (holding its lock), then account `second`."""
    return {"sql": [f"UPDATE accounts SET n = n + 1 WHERE id = {first}", sleep,
                    f"UPDATE accounts SET n = n + 1 WHERE id = {second}",
                    "INSERT INTO effects (job) VALUES (:job)"],
            "backoff": [0], "max_attempts": 5, **policy}  # backoff 0: a retry runs in the same run


def accounts(engine: sa.Engine, **policy: Any) -> dict[str, Any]:
    """The two tables and two accounts; the two crossing tasks."""
    name = dialect_for(engine).name
    if name == "sqlite":
        pytest.skip("SQLite has one writer at a time: two transactions cannot deadlock")
    with engine.begin() as conn:
        conn.exec_driver_sql(ACCOUNTS)
        conn.exec_driver_sql(EFFECTS)
        conn.exec_driver_sql("INSERT INTO accounts (id, n) VALUES (1, 0), (2, 0)")
    return {"one_then_two": crossing(1, 2, SLEEP[name], **policy),
            "two_then_one": crossing(2, 1, SLEEP[name], **policy)}


def test_the_victim_of_a_deadlock_is_retried_and_both_jobs_succeed_once(engine: sa.Engine, store: Store,
                                                                         run_declared: Any) -> None:
    # A timeout keeps each job in a transaction of its own (tasks with one never share: declared/sql.py),
    # so the claim's two jobs run side by side on the two workers.
    tables = accounts(engine, timeout=30)
    name = dialect_for(engine).name
    # Each holds its first row for a second: the other has started by then, even on a loaded machine.
    ids = [enqueue(engine, "one_then_two", {"job": "a", "pause": 1}),
           enqueue(engine, "two_then_one", {"job": "b", "pause": 1})]

    report = run_declared(tables, concurrency=2, batch_size=2)

    assert (report.succeeded, report.failed) == (2, 0), report
    jobs = [outcome(store, job_id) for job_id in ids]
    assert [job.status for job in jobs] == ["succeeded", "succeeded"]
    assert sorted(job.attempts for job in jobs) == [1, 2]  # one deadlock victim, retried once
    errors = rows(engine, "SELECT job_id, attempt, error FROM pending_job_errors ORDER BY job_id, attempt")
    assert len(errors) == 1, errors
    victim, attempt, error = errors[0]
    assert victim in ids and attempt == 1
    code = {"mysql": "(1213) Deadlock found", "postgresql": "deadlock detected"}[name]
    assert error.startswith("Retry: statement 3 of 4: lock conflict or timeout: ") and code in error, error
    # Both jobs' statements took effect once each: the victim's first attempt was rolled back whole.
    assert sorted(row[0] for row in rows(engine, "SELECT job FROM effects")) == ["a", "b"]
    assert rows(engine, "SELECT id, n FROM accounts ORDER BY id") == [(1, 2), (2, 2)]
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status <> 'succeeded'") == 0


def test_a_deadlock_between_shared_transactions_loses_no_job_and_doubles_none(
        engine: sa.Engine, store: Store, run_declared: Any, caplog: pytest.LogCaptureFixture) -> None:
    # 16 jobs of one claim make two groups (runner/shared.py: at least 8 jobs each), one per worker: the
    # first 8 jobs cross the last 8. Each group's first job holds its first row for a second, so the two
    # groups meet even if one worker starts late; the others need no pause.
    tables = accounts(engine)
    ids = [enqueue(engine, "one_then_two", {"job": f"a{n}", "pause": 0 if n else 1}) for n in range(8)]
    ids += [enqueue(engine, "two_then_one", {"job": f"b{n}", "pause": 0 if n else 1}) for n in range(8)]

    with caplog.at_level(logging.DEBUG, logger="pending_jobs.store.shared"):
        report = run_declared(tables, concurrency=2, batch_size=16)

    code = {"mysql": "1213", "postgresql": "deadlock detected"}[dialect_for(engine).name]
    assert "a shared transaction's jobs run one at a time" in caplog.text and code in caplog.text, caplog.text
    assert (report.succeeded, report.failed, report.retried) == (16, 0, 0), report
    assert {(job.status, job.attempts) for job in (outcome(store, job_id) for job_id in ids)} == {("succeeded", 1)}
    assert len(rows(engine, "SELECT job FROM effects")) == 16
    assert rows(engine, "SELECT id, n FROM accounts ORDER BY id") == [(1, 16), (2, 16)]
