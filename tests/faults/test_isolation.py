"""Scenario 4 and process isolation: a handler that kills or exhausts its process fails alone."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa

from .conftest import check_invariant, drain, insert_jobs, job, payload_of, run_once, statuses


@pytest.mark.slow
def test_crashing_isolated_handlers_fail_after_max_attempts_and_the_batch_succeeds(
    fresh: str, engine_on: Callable[[str], sa.Engine]
) -> None:
    """Scenario 4 (isolation='process'): os._exit, SIGKILL and memory exhaustion every time."""
    engine = engine_on(fresh)
    crashers = {task: insert_jobs(engine, task, [{}], max_attempts=3)[0]
                for task in ("exit_isolated", "kill_isolated", "hog_isolated")}
    good = insert_jobs(engine, "ledger", [{} for _ in range(6)])
    echoed = insert_jobs(engine, "echo_isolated", [{"emoji": "\U0001f600"}])[0]

    done = run_once(fresh, "--concurrency", "3", "--batch-size", "20")

    assert done.returncode == 0, done.stderr
    reasons = {task: job(engine, job_id) for task, job_id in crashers.items()}
    for row in reasons.values():
        assert row["status"] == "failed" and row["attempts"] == 3  # counted at claim, retried at once
        assert "attempt 3 of 3: giving up" in row["last_error"]
    assert "exited with code 3" in reasons["exit_isolated"]["last_error"]
    assert "killed by signal SIGKILL" in reasons["kill_isolated"]["last_error"]
    assert "MemoryError" in reasons["hog_isolated"]["last_error"]
    assert all(job(engine, job_id)["status"] == "succeeded" for job_id in good)
    echo = job(engine, echoed)
    assert echo["status"] == "succeeded"
    assert payload_of({"payload": echo["result"]})["payload"] == {"emoji": "\U0001f600"}
    check_invariant(engine)


@pytest.mark.slow
def test_an_isolated_result_nested_too_deep_fails_at_once_as_in_a_thread(
    fresh: str, engine_on: Callable[[str], sa.Engine]
) -> None:
    """Pickling it raised RecursionError in the child, and the job was retried as a handler error."""
    engine = engine_on(fresh)
    deep = insert_jobs(engine, "deep_isolated", [{"depth": 5000}], max_attempts=3)[0]

    done = run_once(fresh)

    assert done.returncode == 0, done.stderr
    row = job(engine, deep)
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert row["last_error"] == ("Fail: the handler's result cannot be stored: result nests 5001 levels deep; at most "
                                 "31 can be stored on every database (MariaDB's limit)")


@pytest.mark.slow
def test_isolated_timeout_kills_the_child_and_connection_is_refused(
    fresh: str, engine_on: Callable[[str], sa.Engine]
) -> None:
    engine = engine_on(fresh)
    hang = insert_jobs(engine, "hang_isolated", [{}], max_attempts=1)[0]
    conn_job = insert_jobs(engine, "connection_isolated", [{}], max_attempts=1)[0]

    done = run_once(fresh)

    assert done.returncode == 0, done.stderr
    assert "ran longer than 1.0s" in job(engine, hang)["last_error"]
    assert "ctx.connection is not available with isolation='process'" in job(engine, conn_job)["last_error"]
    assert statuses(engine) == {"failed": 2}


@pytest.mark.slow
def test_handler_that_exits_the_runner_fails_after_max_attempts_by_rescue(
    fresh: str, engine_on: Callable[[str], sa.Engine]
) -> None:
    """Scenario 4 (thread isolation): the whole runner dies each time; rescue counts the attempts."""
    engine = engine_on(fresh)
    crasher = insert_jobs(engine, "exit_now", [{"after": 0.5}], max_attempts=2)[0]
    others = insert_jobs(engine, "ledger", [{} for _ in range(5)])

    first = run_once(fresh, "--lease", "2", "--concurrency", "4")

    assert first.returncode == 3  # the handler's os._exit took the process down
    drain(fresh, engine, "--concurrency", "4", exits=(0, 3))
    row = job(engine, crasher)
    assert row["status"] == "failed" and row["attempts"] == 2
    assert "lease expired" in row["last_error"] and "no attempts left" in row["last_error"]
    assert all(job(engine, job_id)["status"] == "succeeded" for job_id in others)
    check_invariant(engine)


