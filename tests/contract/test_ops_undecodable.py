"""SQLite keeps text that is not UTF-8; the claim fails such a job and keeps its bytes. Retention, purge and
retry must still handle that row: it once made every run's retention raise (exit 1 each minute) once the
row was old enough, and stopped the retention of every failed job after it."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.conftest import cli, scalar

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

OLD = "2000-01-01 00:00:00"


def _bad_failed_job(db_url: str, engine: sa.Engine) -> int:
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO pending_jobs (task, payload, callback_url) "
                             "VALUES (CAST(x'6563686fff' AS TEXT), '{}', 'https://hooks.example.com/x')"))
        conn.execute(sa.text("INSERT INTO pending_jobs (task, payload) VALUES ('echo', '{}')"))
    env = {"PENDING_JOBS_DATABASE_URL": db_url, "PENDING_JOBS_CALLBACK_SCHEDULE": "3600"}
    assert cli("run", env=env).returncode == 0
    job = int(scalar(engine, "SELECT id FROM pending_jobs WHERE status = 'failed'"))
    with engine.begin() as conn:  # as if it had failed long ago, its callback given up on
        conn.execute(sa.text("UPDATE pending_jobs SET finished_at = :t, callback_status = 'failed' WHERE id = :id"),
                     {"t": OLD, "id": job})
    return job


def test_retention_and_purge_delete_a_row_whose_task_is_not_utf8(db_url: str, engine: sa.Engine) -> None:
    job = _bad_failed_job(db_url, engine)
    env = {"PENDING_JOBS_DATABASE_URL": db_url}
    ran = cli("run", "--retention-failed", "1d", env=env)
    assert ran.returncode == 0, ran.stderr
    assert scalar(engine, f"SELECT COUNT(*) FROM pending_jobs WHERE id = {job}") == 0
    assert scalar(engine, "SELECT SUM(total) FROM pending_job_totals WHERE kind = 'job' AND outcome = 'failed'") == 1


def test_purge_and_retry_take_a_row_whose_task_is_not_utf8(db_url: str, engine: sa.Engine) -> None:
    job = _bad_failed_job(db_url, engine)
    env = {"PENDING_JOBS_DATABASE_URL": db_url}
    retried = cli("callbacks", "retry", str(job), env=env)
    assert retried.returncode == 0, retried.stderr
    retried = cli("retry", "--failed", env=env)
    assert retried.returncode == 0 and "1 failed job(s) pending again" in retried.stdout, retried.stderr
    assert cli("run", env=env).returncode == 0  # the claim fails it again
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET finished_at = :t WHERE id = :id"), {"t": OLD, "id": job})
    purged = cli("purge", "--older-than", "1d", "--status", "failed", env=env)
    assert purged.returncode == 0 and "1 job(s) deleted" in purged.stdout, purged.stderr


@pytest.mark.parametrize("held", [False, True])
def test_the_rescue_takes_a_running_row_whose_queue_is_not_utf8(db_url: str, engine: sa.Engine, tmp_path: object,
                                                                held: bool) -> None:
    """A producer's `running` row with no lease and a queue that is not UTF-8: the rescue read each expired row's
    task and queue (to know the held ones) and raised, so every run stopped at its start (found by the property
    test). With and without a held queue in the config."""
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO pending_jobs (task, queue, payload, status) "
                             "VALUES ('echo', CAST(x'6d61696cff' AS TEXT), '{}', 'running')"))
        conn.execute(sa.text("INSERT INTO pending_jobs (task, payload) VALUES ('echo', '{}')"))
    config = tmp_path / "pending-jobs.toml"  # type: ignore[operator]
    config.write_text(f'database_url = "{db_url}"\n' + ('[queue.mail]\nmax_running = "two"\n' if held else ""))
    ran = cli("run", "--config", str(config))
    assert ran.returncode == (2 if held else 0), ran.stderr
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status = 'running'") == 0  # rescued
    assert scalar(engine, "SELECT status FROM pending_jobs WHERE task = 'echo' AND queue = 'default'") == "succeeded"
