"""pending_jobs.testing.JobTester against a test's own database, on every database (the example in
examples/ covers the default: a fresh SQLite file)."""

from __future__ import annotations

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
