"""Declared `sql` tasks through the real runner on SQLite, MariaDB and PostgreSQL.

Exactly-once on the job database (the writes commit with `succeeded`, roll back with a failure or a
lost lease), parameters bound from the payload and checked, results, and each error classified.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue
from pending_jobs.schedules import parse
from pending_jobs.store import ScheduleStore, Store, dialect_for
from tests.conftest import rows, scalar

from .conftest import SAVE_USER, outcome

T0 = dt.datetime(2026, 3, 29, 0, 50, 30, tzinfo=dt.UTC)


def test_an_insert_commits_with_succeeded_and_reports_rows_and_id(users: sa.Engine, store: Store,
                                                                  run_declared: Any) -> None:
    first = enqueue(users, "save_user", {"name": "Ann", "email": "ann@example.com"})
    second = enqueue(users, "save_user", {"name": "Bob", "email": None})

    report = run_declared({"save_user": SAVE_USER})

    assert report.succeeded == 2
    assert [tuple(r) for r in rows(users, "SELECT name, email FROM users ORDER BY name")] == [
        ("Ann", "ann@example.com"), ("Bob", None)]
    ids = [r[0] for r in rows(users, "SELECT id FROM users ORDER BY name")]  # the jobs ran concurrently
    for job_id, user_id in zip((first, second), ids, strict=True):
        job = outcome(store, job_id)
        assert job.status == "succeeded" and job.attempts == 1
        if dialect_for(users).name == "postgresql":  # no last insert id: RETURNING gives it (next test)
            assert job.result == {"rowcount": 1}
        else:
            assert job.result == {"rowcount": 1, "inserted_id": user_id}


def test_returning_gives_the_inserted_rows_on_every_database(users: sa.Engine, store: Store,
                                                             run_declared: Any) -> None:
    job_id = enqueue(users, "save_user", {"name": "Ann", "email": "ann@example.com"})

    run_declared({"save_user": {"sql": "INSERT INTO users (name, email) VALUES (:name, :email) RETURNING id, name"}})

    user_id = scalar(users, "SELECT id FROM users")
    assert outcome(store, job_id).result == {"rowcount": 1, "rows": [{"id": user_id, "name": "Ann"}]}


def test_statements_share_one_transaction_a_failure_rolls_back_the_earlier_ones(users: sa.Engine, store: Store,
                                                                                run_declared: Any) -> None:
    with users.begin() as conn:
        conn.exec_driver_sql("INSERT INTO users (name, email) VALUES ('Old', 'taken@example.com')")
    tables = {"signup": {"sql": ["INSERT INTO audit (note) VALUES (:note)",
                                 "INSERT INTO users (name, email) VALUES (:name, :email)"]}}
    duplicate = enqueue(users, "signup", {"note": "dup", "name": "New", "email": "taken@example.com"})
    fine = enqueue(users, "signup", {"note": "fine", "name": "Cat", "email": "cat@example.com"})

    report = run_declared(tables)

    failed = outcome(store, duplicate)
    assert (report.failed, report.succeeded) == (1, 1)
    assert failed.status == "failed" and failed.attempts == 1  # at once: another attempt meets the same key
    expected = {"mysql": "constraint users_email_key", "postgresql": "constraint users_email_key",
                "sqlite": "UNIQUE constraint on users.email"}[dialect_for(users).name]
    assert failed.last_error.startswith(f"Fail: statement 2 of 2: integrity error on {expected}: ")
    assert [r[0] for r in rows(users, "SELECT note FROM audit")] == ["fine"]  # statement 1 of the failure undone
    audit_result, user_result = outcome(store, fine).result["statements"]
    assert audit_result["rowcount"] == 1  # SQLite also gives the audit row's rowid as inserted_id
    assert user_result == ({"rowcount": 1} if dialect_for(users).name == "postgresql" else
                           {"rowcount": 1, "inserted_id": scalar(users, "SELECT id FROM users WHERE name = 'Cat'")})


def test_the_lease_fences_the_writes(users: sa.Engine, store: Store, run_declared: Any) -> None:
    # The second statement plays another runner rescuing the job: the lease token is no longer ours,
    # so `succeeded` cannot be written, and the insert made in the same transaction goes with it.
    tables = {"stolen": {"sql": ["INSERT INTO audit (note) VALUES (:note)",
                                 "UPDATE pending_jobs SET lease_token = 'another-runner' WHERE status = 'running'"]}}
    job_id = enqueue(users, "stolen", {"note": "must vanish"})

    report = run_declared(tables)

    assert report.stale == 1 and report.succeeded == 0
    assert scalar(users, "SELECT COUNT(*) FROM audit") == 0
    assert outcome(store, job_id).status == "running"  # left to the lease's owner (or a rescue)


def test_bad_payloads_fail_at_once_naming_the_parameter(users: sa.Engine, store: Store, run_declared: Any) -> None:
    missing = enqueue(users, "save_user", {"name": "Ann"})
    extra = enqueue(users, "save_user", {"name": "Ann", "email": "a@example.com", "emial": "typo"})
    array = enqueue(users, "save_user", {"name": ["Ann"], "email": "b@example.com"})
    good = enqueue(users, "save_user", {"name": "Cat", "email": "c@example.com"})

    report = run_declared({"save_user": SAVE_USER})

    assert (report.failed, report.succeeded, report.retried) == (3, 1, 0)
    reasons = {job_id: outcome(store, job_id).last_error for job_id in (missing, extra, array)}
    assert reasons[missing] == "Fail: payload has no parameter 'email' (needed by task save_user)"
    assert reasons[extra].startswith("Fail: payload has key 'emial', which no statement of task save_user uses")
    assert reasons[array].startswith("Fail: parameter 'name' of task save_user is an array: only strings, numbers")
    assert all(outcome(store, job_id).attempts == 1 for job_id in reasons)
    assert outcome(store, good).status == "succeeded"
    assert [r[0] for r in rows(users, "SELECT name FROM users")] == ["Cat"]


def test_a_value_of_the_wrong_type_for_its_column(users: sa.Engine, store: Store, run_declared: Any) -> None:
    job_id = enqueue(users, "set_age", {"name": "Ann", "age": "forty"})

    run_declared({"set_age": {"sql": "INSERT INTO users (name, age) VALUES (:name, :age)"}})

    job = outcome(store, job_id)
    if dialect_for(users).name == "sqlite":  # SQLite's columns take any type: the value is stored as given
        assert job.status == "succeeded" and scalar(users, "SELECT age FROM users") == "forty"
    else:
        assert job.status == "failed" and job.attempts == 1
        assert job.last_error.startswith("Fail: data error: ") and "forty" in job.last_error


def test_sql_that_cannot_run_fails_at_once_with_the_databases_words(users: sa.Engine, store: Store,
                                                                     run_declared: Any) -> None:
    unknown_table = enqueue(users, "lost", {"a": 1})
    syntax = enqueue(users, "typo", {})

    run_declared({"lost": {"sql": "INSERT INTO no_such_table (a) VALUES (:a)"}, "typo": {"sql": "SELEC 1"}})

    for job_id, words in ((unknown_table, "no_such_table"), (syntax, "SELEC")):
        job = outcome(store, job_id)
        assert job.status == "failed" and job.attempts == 1
        assert job.last_error.startswith("Fail: the statement cannot run: ") and words in job.last_error


def test_a_select_returns_its_rows_bounded_by_max_rows(users: sa.Engine, store: Store, run_declared: Any) -> None:
    with users.begin() as conn:
        for n in range(5):
            conn.execute(sa.text("INSERT INTO users (name, age, balance) VALUES (:n, :a, 12.5)"),
                         {"n": f"user{n}", "a": 20 + n})
    job_id = enqueue(users, "adults", {"min_age": 21})

    run_declared({"adults": {"sql": "SELECT name, age, balance FROM users WHERE age >= :min_age ORDER BY id",
                             "max_rows": 3}})

    result = outcome(store, job_id).result
    assert result["truncated"] is True
    assert [(r["name"], r["age"]) for r in result["rows"]] == [("user1", 21), ("user2", 22), ("user3", 23)]
    assert {str(r["balance"]) for r in result["rows"]} <= {"12.50", "12.5"}  # DECIMAL: exact, as a string or number


def test_a_result_over_the_result_limit_keeps_the_rows_that_fit(users: sa.Engine, store: Store,
                                                                run_declared: Any) -> None:
    with users.begin() as conn:
        conn.execute(sa.text("INSERT INTO users (name) VALUES (:n)"), [{"n": "x" * 60} for _ in range(20)])
    job_id = enqueue(users, "everyone", {})

    run_declared({"everyone": {"sql": "SELECT name FROM users", "result_limit": 600}})

    job = outcome(store, job_id)
    assert job.status == "succeeded" and job.result["truncated"] is True and 1 <= len(job.result["rows"]) < 20


def test_another_database_runs_in_its_own_transaction(users: sa.Engine, store: Store, run_declared: Any,
                                                      tmp_path: Path) -> None:
    other_url = f"sqlite:///{tmp_path / 'reports.sqlite3'}"
    other = sa.create_engine(other_url)
    with other.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE report_requests (id INTEGER PRIMARY KEY, month TEXT UNIQUE)")
    jobs = [enqueue(users, "request_report", {"month": "2026-11"}) for _ in range(2)]

    run_declared({"request_report": {"sql": "INSERT INTO report_requests (month) VALUES (:month)",
                                     "database_url": other_url}})

    done = sorted((outcome(store, job_id) for job_id in jobs), key=lambda job: job.status, reverse=True)
    assert [job.status for job in done] == ["succeeded", "failed"]  # whichever ran first won
    assert done[0].result == {"rowcount": 1, "inserted_id": 1}
    assert done[1].last_error.startswith("Fail: integrity error on UNIQUE constraint on report_requests.month")
    with other.connect() as conn:
        assert conn.exec_driver_sql("SELECT month FROM report_requests").scalars().all() == ["2026-11"]
    other.dispose()


def test_a_number_too_large_for_the_column_fails_at_once_on_every_database(users: sa.Engine, store: Store,
                                                                          run_declared: Any) -> None:
    """SQLite's driver raised OverflowError binding it, and the job was retried with a traceback; MariaDB
    and PostgreSQL refuse it in SQL, a data error that fails at once."""
    job_id = enqueue(users, "save_user", {"id": 2**70, "name": "Ann"})

    run_declared({"save_user": {"sql": "INSERT INTO users (id, name) VALUES (:id, :name)"}})

    job = outcome(store, job_id)
    assert (job.status, job.attempts) == ("failed", 1)
    assert job.last_error.startswith("Fail: ") and "Traceback" not in job.last_error


def test_a_statement_over_its_timeout_is_cancelled_and_retried(users: sa.Engine, store: Store,
                                                               run_declared: Any, backend: str) -> None:
    # SQLite: a progress handler interrupts it. The runner's backstop closed the connection under the
    # worker thread still inside SQLite instead, 5 s later, and the process died of SIGSEGV.
    sleep = {"postgresql": "SELECT pg_sleep(30)", "mysql": "SELECT SLEEP(30)",
             "sqlite": "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) SELECT count(*) FROM c",
             }[backend]
    slow = enqueue(users, "slow", {})
    fine = enqueue(users, "save_user", {"name": "Ann", "email": None})

    run_declared({"slow": {"sql": sleep, "timeout": 0.5, "backoff": 60}, "save_user": SAVE_USER})

    job = outcome(store, slow)
    assert job.status == "pending" and job.attempts == 1
    assert job.last_error.startswith("Retry: lock conflict or timeout: ")
    assert outcome(store, fine).status == "succeeded"


def test_a_user_variable_outlives_its_statements_timeout_on_mariadb(users: sa.Engine, store: Store,
                                                                    run_declared: Any, backend: str) -> None:
    # With a timeout each statement runs as SET STATEMENT max_statement_time = … FOR <statement>: a SET @uid
    # wrapped so must still set the variable the next statement reads.
    if backend != "mysql":
        pytest.skip("user variables and SET STATEMENT … FOR are MariaDB's")
    job_id = enqueue(users, "signup", {"name": "Ann"})
    statements = ["INSERT INTO users (name) VALUES (:name)", "SET @uid = LAST_INSERT_ID()",
                  "UPDATE users SET email = CONCAT('user', @uid, '@example.com') WHERE id = @uid"]

    run_declared({"signup": {"sql": statements, "timeout": 5}})

    user_id = scalar(users, "SELECT id FROM users")
    assert outcome(store, job_id).status == "succeeded"
    assert scalar(users, "SELECT email FROM users") == f"user{user_id}@example.com"


def test_a_lost_connection_is_retried(users: sa.Engine, store: Store, run_declared: Any, backend: str) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite has no connection to lose")
    sleep = "SELECT pg_sleep(20)" if backend == "postgresql" else "SELECT SLEEP(20)"
    job_id = enqueue(users, "slow", {})
    killed = threading.Event()

    def kill_it() -> None:
        # A SELECT runs through a server-side cursor on PostgreSQL: the sleep happens in a FETCH.
        find = ("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'"
                " AND (query LIKE :q OR query LIKE 'FETCH%') AND pid <> pg_backend_pid()"
                if backend == "postgresql" else
                "SELECT id FROM information_schema.processlist WHERE info LIKE :q AND id <> CONNECTION_ID()")
        end = "SELECT pg_terminate_backend(:p)" if backend == "postgresql" else "KILL CONNECTION :p"
        for _ in range(200):
            with users.connect() as conn:
                found = conn.execute(sa.text(find), {"q": f"%{sleep}"}).scalar()
                if found is not None:
                    conn.execute(sa.text(end), {"p": found})
                    killed.set()
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_it)
    killer.start()
    run_declared({"slow": {"sql": sleep, "backoff": 60}})
    killer.join()

    job = outcome(store, job_id)
    assert killed.is_set()
    assert job.status == "pending" and job.attempts == 1
    assert job.last_error.startswith("Retry: database connection lost or unavailable: ")


def test_a_scheduled_sql_task_runs_and_may_bind_its_slot(users: sa.Engine, store: Store, run_declared: Any) -> None:
    # A schedule adds `_schedule` (an object) to its job's payload; an sql task refused it as an unused key
    # and could not bind an object either: every scheduled job of an sql task failed.
    plan = parse({
        "plain": {"every": "1m", "task": "save_user", "payload": {"name": "Ann", "email": "ann@example.com"}},
        "slotted": {"every": "1m", "task": "stamp", "payload": {"name": "Bob"}},
    })
    schedules = ScheduleStore(store)
    schedules.enqueue_due(plan, now=T0)  # the first look records the schedules: nothing before it is due
    schedules.enqueue_due(plan, now=T0 + dt.timedelta(minutes=1))
    report = run_declared({"save_user": SAVE_USER,
                           "stamp": {"sql": "INSERT INTO users (name, email) VALUES (:name, :_schedule_slot)"}})
    assert report.succeeded == 2 and report.failed == 0
    assert [tuple(r) for r in rows(users, "SELECT name, email FROM users ORDER BY name")] == [
        ("Ann", "ann@example.com"), ("Bob", "2026-03-29T00:51:00Z")]
