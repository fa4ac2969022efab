"""A config table with an error fails alone, on SQLite, MariaDB and PostgreSQL: the run serves every other
task, queue and schedule; the jobs of the bad task or queue are put back with the error as their reason, their
attempt uncounted, and run once the table is fixed (held.py)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue
from pending_jobs.errors import EXIT_CONFIG
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
