"""pending_jobs.testing.JobTester against a test's own database, on every database (the example in
examples/ covers the default: a fresh SQLite file)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from pending_jobs import migrate
from pending_jobs.errors import ConfigError, SchemaNotCurrent
from pending_jobs.testing import JobTester


def test_the_tester_runs_a_tests_jobs_on_its_own_database(db_url: str) -> None:
    with JobTester(db_url, tasks=["tests.jobs"]) as tester:
        ok = tester.enqueue("echo", {"n": 1}, callback_url="http://example.com/hook")
        later = tester.enqueue("retry_later", {"delay": 3600}, max_attempts=2)
        failed = tester.enqueue("fail_now", {})

        report = tester.run()
        assert (report.succeeded, report.retried, report.failed) == (1, 1, 1)
        assert tester.job(ok).result == {"payload": {"n": 1}, "attempt": 1, "job_id": ok}
        assert tester.job(failed).status == "failed" and "the input can never work" in (tester.job(failed).last_error
                                                                                          or "")
        assert tester.job(later).status == "pending"  # waiting for its backoff: not run again by run()
        assert [job.id for job in tester.callbacks()] == [ok]  # recorded, not sent

        tester.assert_enqueued(task="echo", payload={"n": 1}, count=1)
        tester.assert_not_enqueued(task="echo", payload={"n": 2})

        assert tester.run(delayed=True).failed == 1  # its backoff skipped: the second and last attempt
        assert tester.job(later).attempts == 2 and tester.job(later).status == "failed"


def test_declared_tasks_run_as_the_runner_runs_them(db_url: str) -> None:
    """`declared_tasks` (the config file's [task.NAME] tables) was accepted and ignored: every declared job
    failed with 'unknown task'."""
    tables = {"note": {"sql": "INSERT INTO tester_notes (body) VALUES (:body)"},
              "echo": {"command": ["cat"], "max_attempts": 1}}
    with JobTester(db_url, tasks={}, declared_tasks=tables) as tester:
        with tester.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS tester_notes")
            conn.exec_driver_sql("CREATE TABLE tester_notes (body VARCHAR(64))")
        try:
            noted = [tester.enqueue("note", {"body": f"n{n}"}) for n in range(3)]
            echoed = tester.enqueue("echo", {"a": 1})
            assert tester.run().succeeded == 4
            assert [tester.job(job_id).status for job_id in noted] == ["succeeded"] * 3
            assert tester.job(echoed).result == {"a": 1}
            with tester.engine.connect() as conn:
                assert sorted(conn.exec_driver_sql("SELECT body FROM tester_notes").scalars()) == ["n0", "n1", "n2"]
        finally:
            with tester.engine.begin() as conn:
                conn.exec_driver_sql("DROP TABLE tester_notes")


def test_a_tester_on_a_shared_database_clears_it_and_counts_from_none(db_url: str) -> None:
    """A test database other tests use kept their jobs: `assert_enqueued(count=1)` saw the last test's too,
    and `count=0` could never pass (it asserted the count, then that a job was found)."""
    with JobTester(db_url, tasks=["tests.jobs"]) as tester:
        tester.enqueue("echo", {"n": 1}, callback_url="http://example.com/hook")
        tester.run()
        assert tester.jobs()
    with JobTester(db_url, tasks=["tests.jobs"]) as tester:  # the next test, on the same database
        tester.clear()
        assert tester.jobs() == [] and tester.assert_enqueued(task="echo", count=0) is None
        tester.enqueue("echo", {"n": 2})
        assert tester.assert_enqueued(task="echo", count=1).payload == {"n": 2}
        with pytest.raises(AssertionError, match=r"^expected 0 job\(s\) with task='echo' status='pending', found 1"):
            tester.assert_enqueued(task="echo", status="pending", count=0)
        tester.assert_not_enqueued(task="echo", status="succeeded")
        with pytest.raises(AssertionError, match=r"^1 job\(s\) with task='echo' queue='default' were enqueued"):
            tester.assert_not_enqueued(task="echo", queue="default")
        assert tester.run().succeeded == 1
        tester.clear()
        assert tester.jobs() == []


def test_without_migrating_a_database_with_no_schema_is_named_at_once(db_url: str) -> None:
    """It failed at run() with the driver's 'no such table: pending_jobs'."""
    with JobTester(db_url, tasks={}) as tester:
        migrate.downgrade(tester.engine)
    try:
        with pytest.raises(SchemaNotCurrent, match=r"^database schema is not migrated, this pending-jobs needs \d+: "
                                                   r"run `pending-jobs migrate`"):
            JobTester(db_url, tasks={}, migrate_schema=False)
    finally:
        with JobTester(db_url, tasks={}):  # migrated again, as the other tests expect it
            pass
    if db_url.startswith("sqlite"):  # and a missing file is not created empty first
        missing = Path(str(sa.make_url(db_url).database)).with_name("typo.sqlite3")
        with pytest.raises(ConfigError, match=r"^database_url: there is no SQLite file "):
            JobTester(f"sqlite:///{missing}", tasks={}, migrate_schema=False)
        assert not missing.exists()
