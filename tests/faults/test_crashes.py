"""Scenarios 1, 2, 3 and 13: runners killed, frozen, outlived by their handlers, or stopped by SIGTERM."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from .conftest import (
    RunnerProcess,
    check_invariant,
    drain,
    insert_jobs,
    job,
    payload_of,
    run_once,
    statuses,
    wait_for,
    wait_leases_expired,
)

Runners = Callable[..., RunnerProcess]


def _running(engine: sa.Engine, count: int) -> Callable[[], bool]:
    def check() -> bool:
        return statuses(engine).get("running", 0) >= count

    return check


def _sleeping(engine: sa.Engine) -> Callable[[], bool]:
    def check() -> bool:  # a job's `SELECT SLEEP(…)` runs in a runner's transaction
        with engine.connect() as conn:
            return bool(conn.execute(sa.text("SELECT COUNT(*) FROM information_schema.processlist"
                                             " WHERE info LIKE 'SELECT SLEEP(%'")).scalar())

    return check


@pytest.mark.slow
def test_kill_9_mid_handler_is_reclaimed_after_lease_expiry(
    fresh: str, engine_on: Callable[[str], sa.Engine], runners: Runners
) -> None:
    """Scenario 1."""
    engine = engine_on(fresh)
    ids = insert_jobs(engine, "stall_first", [{"seconds": 60, "ledger": True} for _ in range(3)])
    # A lease long enough that the run just after the kill surely meets it live, even on a loaded machine.
    runner = runners(fresh, "--lease", "10", "--concurrency", "3")
    wait_for(_running(engine, 3), 30, "the jobs to be running")

    runner.kill()

    assert statuses(engine) == {"running": 3}  # nothing released: a killed runner cleans up nothing
    assert run_once(fresh, "--lease", "10").stdout == ""  # leases still live: nothing rescued or claimed
    assert statuses(engine) == {"running": 3}
    drain(fresh, engine)
    for job_id in ids:
        row = job(engine, job_id)
        assert row["status"] == "succeeded" and row["attempts"] == 2
        assert "lease expired" in row["last_error"]
    check_invariant(engine)


@pytest.mark.slow
def test_stale_runner_finishing_after_rescue_changes_nothing(
    fresh: str, engine_on: Callable[[str], sa.Engine], runners: Runners
) -> None:
    """Scenario 2: runner A is frozen past its lease; B rescues and finishes; A wakes and finishes too."""
    engine = engine_on(fresh)
    (job_id,) = insert_jobs(engine, "stall_first", [{"seconds": 3, "ledger": True}])
    stale = runners(fresh, "--lease", "2")
    wait_for(_running(engine, 1), 30, "the job to be running")
    stale.signal(signal.SIGSTOP)  # no heartbeat from here on
    wait_leases_expired(engine)

    second = run_once(fresh, "--lease", "30")
    assert second.returncode == 0, second.stderr
    won = job(engine, job_id)
    assert won["status"] == "succeeded" and won["attempts"] == 2

    stale.signal(signal.SIGCONT)
    assert stale.wait(60) == 0, stale.stderr()

    after = job(engine, job_id)
    assert (after["status"], after["attempts"], after["result"], after["finished_at"]) == (
        won["status"], won["attempts"], won["result"], won["finished_at"])
    assert payload_of({"payload": after["result"]})["attempt"] == 2
    assert "not recorded: their lease had been taken over" in stale.stderr()
    check_invariant(engine)


@pytest.mark.slow
def test_handler_longer_than_lease_is_kept_by_heartbeat(
    fresh: str, engine_on: Callable[[str], sa.Engine], runners: Runners
) -> None:
    """Scenario 3: other runs keep trying to rescue while a 9 s handler holds a 3 s lease (renewed every
    second: a beat late by up to 2 s on a loaded machine still keeps it)."""
    engine = engine_on(fresh)
    (job_id,) = insert_jobs(engine, "stall_first", [{"seconds": 9, "ledger": True}])
    holder = runners(fresh, "--lease", "3")
    wait_for(_running(engine, 1), 30, "the job to be running")

    rescuers = 0
    while holder.proc.poll() is None:
        other = run_once(fresh, "--lease", "3", "-v")
        assert other.returncode == 0, other.stderr
        assert "claimed 0," in other.stdout and "rescued 0," in other.stdout
        rescuers += 1

    assert holder.wait() == 0, holder.stderr()
    assert rescuers >= 2
    row = job(engine, job_id)
    assert row["status"] == "succeeded" and row["attempts"] == 1 and row["last_error"] is None
    check_invariant(engine)


@pytest.mark.slow
def test_sigterm_during_a_batch_releases_unstarted_jobs(
    fresh: str, engine_on: Callable[[str], sa.Engine], runners: Runners
) -> None:
    """Scenario 13."""
    engine = engine_on(fresh)
    insert_jobs(engine, "ledger", [{"sleep": 1} for _ in range(20)])
    runner = runners(fresh, "--lease", "30", "--concurrency", "2", "--batch-size", "20", "--grace", "10")
    wait_for(_running(engine, 20), 30, "the batch to be claimed")

    runner.signal(signal.SIGTERM)

    assert runner.wait(60) == 0, runner.stderr()
    with engine.connect() as conn:
        left = list(conn.execute(sa.text("SELECT status, attempts, lease_expires_at FROM pending_jobs")))
    assert {status for status, _, _ in left} == {"succeeded", "pending"}
    assert all(attempts == 0 and lease is None for status, attempts, lease in left if status == "pending")
    assert all(attempts == 1 for status, attempts, _ in left if status == "succeeded")
    drain(fresh, engine)
    rows = check_invariant(engine)
    assert all(row["attempts"] == 1 for row in rows)


@pytest.mark.slow
def test_kill_9_mid_shared_sql_transaction_leaves_nothing_half_written(
    fresh: str, engine_on: Callable[[str], sa.Engine], runners: Runners, tmp_path: Path
) -> None:
    """A declared sql task's jobs of one claim share a transaction (runner/shared.py). The runner is
    killed while its third job sleeps in it: the two INSERTs before it were never committed, so
    nothing is written and no job is recorded; after the leases expire each job writes exactly once."""
    engine = engine_on(fresh)
    config = tmp_path / "pending-jobs.toml"
    config.write_text('[task.sql_ledger]\nsql = ["INSERT INTO ledger (job_id, note) VALUES (:id, \'sql\')",'
                      ' "SELECT SLEEP(:pause)"]\n')
    ids = insert_jobs(engine, "sql_ledger", [{} for _ in range(5)])
    with engine.begin() as conn:  # each payload names its own job, so the ledger row is the job's
        conn.execute(sa.text("UPDATE pending_jobs SET payload = JSON_OBJECT('id', id, 'pause', IF(id = :slow, 60, 0))"),
                     {"slow": ids[2]})
    runner = runners(fresh, "--config", str(config), "--lease", "10", "--concurrency", "1")

    wait_for(_sleeping(engine), 30, "the third job to sleep in the shared transaction")
    runner.kill()

    assert statuses(engine) == {"running": 5}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM ledger")).scalar() == 0  # jobs 1 and 2 not half-written
        conn.execute(sa.text("UPDATE pending_jobs SET payload = JSON_OBJECT('id', id, 'pause', 0)"))
        conn.commit()
    drain(fresh, engine, "--config", str(config))
    with engine.connect() as conn:
        ledger = dict(conn.execute(sa.text("SELECT job_id, COUNT(*) FROM ledger GROUP BY job_id")).all())
    assert ledger == {job_id: 1 for job_id in ids}
    assert all(job(engine, job_id)["status"] == "succeeded" and job(engine, job_id)["attempts"] == 2 for job_id in ids)


@pytest.mark.slow
def test_kill_9_mid_order_leaves_its_jobs_pending_their_attempt_uncounted(
    fresh: str, engine_on: Callable[[str], sa.Engine], runners: Runners, tmp_path: Path
) -> None:
    """A backlog of declared sql jobs is claimed by the transactions that run it (runner/ordering.py): no job of
    an order is marked `running` before its transaction commits. The runner is killed while a job of an order
    sleeps in it: that order's jobs were never marked, so they are `pending` at once, their attempt uncounted,
    no lease to wait out, and their INSERTs were never committed; the next runs write each job once."""
    engine = engine_on(fresh)
    config = tmp_path / "pending-jobs.toml"
    config.write_text('[task.sql_ledger]\nsql = ["INSERT INTO ledger (job_id, note) VALUES (:id, \'sql\')",'
                      ' "SELECT SLEEP(:pause)"]\n')
    ids = insert_jobs(engine, "sql_ledger", [{} for _ in range(40)])
    order = ids[25:30]  # batches of 5 in claim order; by the sixth the first plain claims have made the rest orders
    with engine.begin() as conn:  # each payload names its own job, so the ledger row is the job's
        conn.execute(sa.text("UPDATE pending_jobs SET payload = JSON_OBJECT('id', id, 'pause', IF(id = :slow, 60, 0))"),
                     {"slow": order[2]})
    runner = runners(fresh, "--config", str(config), "--lease", "5", "--concurrency", "1", "--batch-size", "5")

    wait_for(_sleeping(engine), 30, "a job of an order to sleep in its transaction")
    runner.kill()

    def rolled_back() -> bool:  # the server notices the closed connection
        with engine.connect() as conn:
            return {row[0] for row in conn.execute(sa.text("SELECT id FROM pending_jobs WHERE status = 'pending'"
                                                           " AND attempts = 0 AND lease_token IS NULL"))} >= set(order)

    wait_for(rolled_back, 30, "the killed order's jobs to be pending, never claimed")
    with engine.connect() as conn:
        ledger = {row[0] for row in conn.execute(sa.text("SELECT job_id FROM ledger"))}
        assert ledger == set(ids[:25])  # the order's first two INSERTs went with its transaction
        conn.execute(sa.text("UPDATE pending_jobs SET payload = JSON_OBJECT('id', id, 'pause', 0)"))
        conn.commit()
    assert statuses(engine)["succeeded"] == 25
    # Jobs a plain claim took ahead meanwhile (a plain claim looks at the queue every second) are `running`
    # under a lease of 5 s: the drain waits it out, as for any killed run.
    drain(fresh, engine, "--config", str(config))
    with engine.connect() as conn:
        ledger_counts = dict(conn.execute(sa.text("SELECT job_id, COUNT(*) FROM ledger GROUP BY job_id")).all())
    assert ledger_counts == {job_id: 1 for job_id in ids}
    assert all(job(engine, job_id)["status"] == "succeeded" for job_id in ids)
    assert all(job(engine, job_id)["attempts"] == 1 for job_id in order)
