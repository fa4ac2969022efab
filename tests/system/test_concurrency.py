"""Several `pending-jobs run` processes on one table: every job runs and succeeds exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue_many, migrate
from pending_jobs.store import create_engine
from tests import jobs
from tests.conftest import ROOT, create_database, rows, scalar
from tests.contract.test_declared_orders import changes_by_job, watch_status_changes

JOBS = 5_000
RUNNERS = 4


@pytest.mark.slow
@pytest.mark.parametrize("backend_name", ["mysql", "postgresql"])
def test_four_runners_drain_5000_jobs_exactly_once(backend_name: str, tmp_path: Path) -> None:
    url, drop = create_database(backend_name, tmp_path)
    engine = create_engine(url)
    try:
        migrate.upgrade(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql(jobs.LEDGER_DDL)
        enqueue_many(engine, [{"task": "ledger", "payload": {"n": i}} for i in range(JOBS)])

        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PENDING_JOBS_TASKS": "tests.jobs",
           "PENDING_JOBS_POLL": "0",
               "PENDING_JOBS_DATABASE_URL": url}
        command = [sys.executable, "-m", "pending_jobs", "run", "--batch-size", "50", "--concurrency", "4",
                   "--max-runtime", "240", "-v"]
        runners = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for _ in range(RUNNERS)]
        outputs = [runner.communicate(timeout=300) for runner in runners]
        assert [runner.returncode for runner in runners] == [0] * RUNNERS, outputs

        # Every runner took part, and the claims did not overlap.
        claimed = [int(out.split("claimed ")[1].split(",")[0]) for out, _ in outputs]
        assert sum(claimed) == JOBS, [err for _, err in outputs if err]
        assert sum(1 for n in claimed if n > 0) >= 2
        assert dict(rows(engine, "SELECT status, COUNT(*) FROM pending_jobs GROUP BY status")) == {"succeeded": JOBS}
        assert scalar(engine, "SELECT MAX(attempts) FROM pending_jobs") == 1
        # The ledger's primary key would have refused a second run of any job: one row per job.
        assert scalar(engine, "SELECT COUNT(*) FROM ledger") == JOBS
        missing = scalar(engine, "SELECT COUNT(*) FROM pending_jobs p LEFT JOIN ledger l ON l.job_id = p.id "
                                 "WHERE l.job_id IS NULL")
        assert missing == 0
        assert len({row[0] for row in rows(engine, "SELECT note FROM ledger")}) >= 2  # several pids wrote
    finally:
        engine.dispose()
        drop()


def test_sqlite_runners_serialise_but_lose_nothing(tmp_path: Path) -> None:
    """SQLite is single-host: two runners take turns on the write lock and still run each job once."""
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    engine = create_engine(url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(jobs.LEDGER_DDL)
    enqueue_many(engine, [{"task": "ledger"} for _ in range(500)])
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PENDING_JOBS_TASKS": "tests.jobs",
           "PENDING_JOBS_POLL": "0",
           "PENDING_JOBS_DATABASE_URL": url}
    command = [sys.executable, "-m", "pending_jobs", "run", "--batch-size", "20"]
    runners = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [runner.communicate(timeout=120)[1] for runner in runners]
    assert [runner.returncode for runner in runners] == [0, 0], errors
    assert scalar(engine, "SELECT COUNT(*) FROM ledger") == 500
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status = 'succeeded' AND attempts = 1") == 500
    with engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
    engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("backend_name", ["mysql", "postgresql"])
def test_four_runners_drain_5000_sql_jobs_exactly_once_most_of_them_by_orders(backend_name: str,
                                                                               tmp_path: Path) -> None:
    """A backlog of declared sql jobs is claimed by the transactions that run it (runner/ordering.py): four runs
    at once lock, run and end their groups side by side; each job's INSERT is committed once (the effects table
    has no key: a second write would show), and its row changed status once or, from a plain claim, twice."""
    url, drop = create_database(backend_name, tmp_path)
    engine = create_engine(url)
    try:
        migrate.upgrade(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE effects (n INT NOT NULL)")
        watch_status_changes(engine)
        enqueue_many(engine, [{"task": "effect", "payload": {"n": i}} for i in range(JOBS)])
        config = tmp_path / "jobs.toml"
        config.write_text(f'database_url = "{url}"\n[task.effect]\nsql = "INSERT INTO effects (n) VALUES (:n)"\n')
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PENDING_JOBS_POLL": "0",
               "PENDING_JOBS_LOCK_FILE": "none"}
        command = [sys.executable, "-m", "pending_jobs", "run", "--config", str(config), "--batch-size", "50",
                   "--concurrency", "4", "--max-runtime", "240", "-v"]
        runners = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for _ in range(RUNNERS)]
        outputs = [runner.communicate(timeout=300) for runner in runners]
        assert [runner.returncode for runner in runners] == [0] * RUNNERS, outputs

        claimed = [int(out.split("claimed ")[1].split(",")[0]) for out, _ in outputs]
        assert sum(claimed) == JOBS, outputs
        assert dict(rows(engine, "SELECT status, COUNT(*) FROM pending_jobs GROUP BY status")) == {"succeeded": JOBS}
        assert scalar(engine, "SELECT MAX(attempts) FROM pending_jobs") == 1
        assert scalar(engine, "SELECT COUNT(*) FROM effects") == JOBS
        assert scalar(engine, "SELECT COUNT(DISTINCT n) FROM effects") == JOBS
        histories = changes_by_job(engine)
        once, twice = [("pending", "succeeded")], [("pending", "running"), ("running", "succeeded")]
        odd = {job_id: history for job_id, history in histories.items() if history not in (once, twice)}
        assert not odd and len(histories) == JOBS, (len(odd), list(odd.items())[:5])
        assert sum(history == once for history in histories.values()) > JOBS // 2
    finally:
        engine.dispose()
        drop()
