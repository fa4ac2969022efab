"""How a run reports what happened: cancellations as an outcome of their own, cancellation in a
process-isolated handler, tracebacks that show the handler's own code, and a log line per failure."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue
from pending_jobs.metrics import render
from pending_jobs.runner.waiting import CANCELLED_WAITING
from pending_jobs.store import RunStore, Store
from tests.conftest import cli, scalar


def test_a_cancelled_job_whose_handler_gives_up_is_reported_cancelled(engine: sa.Engine, store: Store, db_url: str,
                                                                       run: Any) -> None:
    job_id = enqueue(engine, "cancelled_then_raise", {"url": db_url})
    report = run()
    assert scalar(engine, f"SELECT status FROM pending_jobs WHERE id = {job_id}") == "cancelled"
    assert (report.cancelled, report.stale, report.retried, report.failed) == (1, 0, 0, 0)
    last = RunStore(store).runs(1)[0]
    assert last.report.cancelled == 1
    assert b'pending_jobs_run_jobs{outcome="cancelled"} 1.0' in render(report, 0.0, None)


def test_a_cancelled_job_whose_handler_gives_up_is_logged_as_cancelled_not_retried(
        engine: sa.Engine, db_url: str, run: Any, caplog: pytest.LogCaptureFixture) -> None:
    job_id = enqueue(engine, "cancelled_then_raise", {"url": db_url})
    with caplog.at_level(logging.INFO, logger="pending_jobs"):
        run()
    lines = [r.getMessage() for r in caplog.records if r.name == "pending_jobs.runner.executor"]
    assert not any("will be retried" in line for line in lines), lines
    assert any(line.startswith(f"job {job_id} (cancelled_then_raise) gave up on attempt 1 after an operator asked "
                               "to cancel it: cancelled") for line in lines), lines


def test_a_job_cancelled_while_it_waits_for_a_worker_never_runs(engine: sa.Engine, db_url: str, run: Any,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    # One worker, one claim of three jobs: the second and third wait while the first cancels the second.
    first = enqueue(engine, "cancel_a_waiting_job", {"url": db_url, "job_id": 0})
    waiting = enqueue(engine, "ledger", {})
    after = enqueue(engine, "ledger", {})
    with engine.begin() as conn:  # the first job's payload names the second, whose id is known only now
        conn.execute(sa.text("UPDATE pending_jobs SET payload = :p WHERE id = :id"),
                     {"p": json.dumps({"url": db_url, "job_id": waiting}), "id": first})
    with caplog.at_level(logging.INFO, logger="pending_jobs"):
        report = run(concurrency=1)
    said = scalar(engine, f"SELECT result FROM pending_jobs WHERE id = {first}")
    assert (json.loads(said) if isinstance(said, str) else said) == {"cancel": "requested"}  # it was running
    assert scalar(engine, f"SELECT status FROM pending_jobs WHERE id = {waiting}") == "cancelled"
    assert scalar(engine, f"SELECT last_error FROM pending_jobs WHERE id = {waiting}") == CANCELLED_WAITING
    assert scalar(engine, f"SELECT COUNT(*) FROM ledger WHERE job_id = {waiting}") == 0  # its handler never ran
    assert scalar(engine, f"SELECT status FROM pending_jobs WHERE id = {after}") == "succeeded"
    assert (report.succeeded, report.cancelled, report.failed, report.stale) == (2, 1, 0, 0)
    assert f"job {waiting} (ledger) {CANCELLED_WAITING}" in caplog.messages


def test_a_process_isolated_handler_can_ask_whether_it_was_cancelled(engine: sa.Engine, db_url: str,
                                                                     run: Any) -> None:
    job_id = enqueue(engine, "cancel_check_isolated", {"url": db_url})
    report = run()
    assert report.succeeded == 1
    result = scalar(engine, f"SELECT result FROM pending_jobs WHERE id = {job_id}")
    assert (json.loads(result) if isinstance(result, str) else result) == {"before": False, "after": True}


def test_last_error_shows_the_handlers_own_frame_not_only_library_frames(engine: sa.Engine, run: Any) -> None:
    job_id = enqueue(engine, "duplicate_in_handler", {}, max_attempts=1)
    run()
    error = scalar(engine, f"SELECT last_error FROM pending_jobs WHERE id = {job_id}")
    assert error.startswith("sqlalchemy.exc.IntegrityError: ")
    assert "tests/jobs.py" in error and "in duplicate_in_handler" in error  # where the handler called
    assert "frame(s) left out" in error  # the library's middle is dropped …
    assert error.count("Traceback") == 1  # … and the chained driver error is one line, not a second traceback
    assert "caused by " in error


def test_each_failed_or_retried_job_is_logged_with_its_reason(engine: sa.Engine, run: Any,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    failed = enqueue(engine, "fail_now", {})
    retried = enqueue(engine, "flaky", {"succeed_on": 3})
    with caplog.at_level(logging.INFO, logger="pending_jobs"):
        run()
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "pending_jobs.runner.executor"]
    assert (logging.WARNING, f"job {failed} (fail_now) failed on attempt 1 of 5: Fail: the input can never work") \
        in lines
    assert any(level == logging.INFO and message.startswith(f"job {retried} (flaky) will be retried in ")
               and message.endswith("after attempt 1 of 5: ValueError: attempt 1 fails") for level, message in lines)


def test_a_failed_job_is_logged_under_cron_without_verbose(engine: sa.Engine, db_url: str) -> None:
    job_id = enqueue(engine, "fail_now", {})
    done = cli("run", env={"PENDING_JOBS_DATABASE_URL": db_url})
    assert done.returncode == 0
    assert f"job {job_id} (fail_now) failed on attempt 1 of 5: Fail: the input can never work" in done.stderr
