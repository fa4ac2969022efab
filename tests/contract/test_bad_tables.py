"""A config table with an error fails alone, on SQLite, MariaDB and PostgreSQL: the run serves every other
task, queue and schedule; the jobs of the bad task or queue are put back with the error as their reason, their
attempt uncounted, and run once the table is fixed (held.py)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue
from pending_jobs.errors import EXIT_CONFIG
from pending_jobs.metrics import render
from pending_jobs.store import Store
from pending_jobs.store.testing import TestingStore
from tests.conftest import scalar

from .conftest import SAVE_USER, outcome

BROKEN = {"sql": "INSERT INTO audit (note) VALUES (:note)", "timeout": "soon"}
NOTE = {"sql": "INSERT INTO audit (note) VALUES (:note)"}


def test_bad_tables_hold_their_jobs_and_the_run_serves_the_rest(users: sa.Engine, store: Store, run_declared: Any,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    good = enqueue(users, "save_user", {"name": "Ann", "email": None})
    python = enqueue(users, "noop", {})
    broken = enqueue(users, "note", {"note": "from a bad table"})
    unlimited = enqueue(users, "echo", {"x": 1})  # a Python task whose [task.echo] limit has an error
    queued = enqueue(users, "save_user", {"name": "Bob", "email": None}, queue="mail")
    bad = {"queue_tables": {"mail": {"max_running": "two"}},
           "schedule_tables": {"nightly": {"cron": "every day", "task": "noop"}}}

    report = run_declared({"save_user": SAVE_USER, "note": BROKEN, "echo": {"rate_limit": "lots"}}, **bad)

    assert report.exit_code == EXIT_CONFIG  # served the rest, but the config still needs a fix
    assert (report.succeeded, report.held, report.failed, report.retried) == (2, 3, 0, 0)
    assert ", held 3," in report.summary()  # `run -v`'s line: claimed 5 where only 2 had an outcome
    assert b'pending_jobs_run_jobs{outcome="held"} 3.0' in render(report, 0.0, None)
    assert outcome(store, good).status == "succeeded" and outcome(store, python).status == "succeeded"
    for job_id, said in ((broken, "[task.note] timeout"), (unlimited, "[task.echo] rate_limit"),
                         (queued, "[queue.mail] max_running")):
        job = outcome(store, job_id)
        assert (job.status, job.attempts, job.started_at) == ("pending", 0, None), job
        assert job.last_error is not None and job.last_error.startswith(f"held back, not run: {said}"), job
    assert scalar(users, "SELECT COUNT(*) FROM audit") == 0  # the broken task's statement never ran
    assert scalar(users, "SELECT COUNT(*) FROM users WHERE name = 'Bob'") == 0
    assert scalar(users, "SELECT COUNT(*) FROM pending_job_schedules") == 0  # the bad schedule was skipped
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("[schedules.nightly] cron" in line and "skipped until it is fixed" in line for line in logged)
    assert any("[task.note] timeout" in line for line in logged), logged

    again = run_declared({"save_user": SAVE_USER, "note": BROKEN, "echo": {"rate_limit": "lots"}}, **bad)
    assert again.claimed == 0 and again.exit_code == EXIT_CONFIG  # held for HOLD_DELAY: not claimed each run

    TestingStore(store).make_due()  # the fix lands after the hold (a minute: cron's next tick)
    fixed = run_declared({"save_user": SAVE_USER, "note": NOTE, "echo": {"rate_limit": "5/s"}},
                         queue_tables={"mail": {"max_running": 2}})
    assert fixed.exit_code == 0 and fixed.succeeded == 3 and fixed.held == 0
    for job_id in (broken, unlimited, queued):
        job = outcome(store, job_id)
        assert (job.status, job.attempts) == ("succeeded", 1), job  # the held attempts were never counted
    assert scalar(users, "SELECT note FROM audit") == "from a bad table"


def test_a_held_job_an_operator_cancels_ends_cancelled(users: sa.Engine, store: Store, run_declared: Any) -> None:
    held = enqueue(users, "note", {"note": "x"})
    with users.begin() as conn:  # asked while it ran: the put-back ends it cancelled, as `cancel` promised
        conn.execute(sa.text("UPDATE pending_jobs SET cancel_requested = :yes WHERE id = :id"),
                     {"yes": True, "id": held})

    report = run_declared({"note": BROKEN})

    job = outcome(store, held)
    assert (job.status, job.attempts, report.cancelled) == ("cancelled", 0, 1), job
    assert job.last_error is not None and "held it back" in job.last_error


def test_a_held_job_is_put_back_at_once_not_after_the_jobs_ahead_of_it(users: sa.Engine, store: Store,
                                                                      run_declared: Any) -> None:
    # Claimed with a slow job ahead of it and one worker, a held job waited its turn in the pool, `running`:
    # out of reach of other runners, a slot of its queue's max_running for them, and a runner killed meanwhile
    # left it to the rescue. Nothing runs it: it goes back as soon as it is claimed.
    slow = enqueue(users, "sleep", {"seconds": 1.8}, priority=5)
    held = enqueue(users, "note", {"note": "x"})

    report = run_declared({"note": BROKEN}, concurrency=1, batch_size=10)

    assert (report.succeeded, report.held) == (1, 1), report
    put_back, finished = outcome(store, held).updated_at, outcome(store, slow).finished_at
    assert put_back is not None and finished is not None
    assert (finished - put_back).total_seconds() >= 1.0, (put_back, finished)


def test_held_jobs_take_no_limit_from_the_jobs_that_run(users: sa.Engine, store: Store, run_declared: Any) -> None:
    # Held jobs first in claim order: a held task's job in a rate-limited queue, and a job of a rate-limited
    # task in a held queue. Admitted under those limits, they took the only tokens and were put back unrun: the
    # good job waited behind them a token each, and each came due again a minute later to take the next.
    held_task = enqueue(users, "echo", {"x": 1}, priority=5)
    held_queue = enqueue(users, "noop", {}, queue="mail", priority=5)
    good = enqueue(users, "noop", {})

    report = run_declared({"echo": {"rate_limit": "lots"}, "noop": {"rate_limit": "1/h"}}, max_runtime=3.0,
                          queue_tables={"default": {"rate_limit": "1/h"}, "mail": {"max_running": "two"}})

    assert (report.held, report.succeeded) == (2, 1), report
    assert outcome(store, good).status == "succeeded"
    assert outcome(store, held_task).status == outcome(store, held_queue).status == "pending"


def test_a_held_job_whose_runner_died_before_putting_it_back_is_not_counted(users: sa.Engine, store: Store,
                                                                           run_declared: Any) -> None:
    # A runner claims held jobs to put them back; killed (kill -9) in between, the next run's rescue counted
    # the attempt they never ran: a `max_attempts = 1` job ended failed, unrun, and each crash cost one more.
    task_job = enqueue(users, "note", {"note": "x"}, max_attempts=1)
    queue_job = enqueue(users, "noop", {}, queue="mail", max_attempts=1)
    for queue in ("default", "mail"):  # the dead runner's claims, then its lease runs out
        assert len(store.claim(queue, 10, "killed-runner", 60).jobs) == 1
    with users.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET lease_expires_at = :t"), {"t": dt.datetime(2000, 1, 1)})

    report = run_declared({"note": BROKEN}, queue_tables={"mail": {"max_running": "two"}})

    assert (report.rescued, report.failed, report.held) == (2, 0, 2), report  # rescued uncounted, then held
    for job_id in (task_job, queue_job):
        job = outcome(store, job_id)
        assert (job.status, job.attempts, job.started_at) == ("pending", 0, None), job
        assert job.last_error is not None and "held back, not run" in job.last_error, job
    assert scalar(users, "SELECT COUNT(*) FROM pending_job_errors") == 0  # no attempt ran: none recorded
