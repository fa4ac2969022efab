"""How to test handlers with pending_jobs.testing (run by the suite: tests/system/test_flow_example.py).

`job_tester` is the fixture pending-jobs' pytest plugin provides: a fresh SQLite job database per test,
and every `@task` handler imported so far.
"""

from __future__ import annotations

import welcome

from pending_jobs.testing import JobTester


def test_signup_enqueues_and_sends_the_welcome_mail(job_tester: JobTester) -> None:
    welcome.signup(job_tester.engine, "ann@example.com")
    job = job_tester.assert_enqueued(task="welcome_mail", payload={"to": "ann@example.com"})

    report = job_tester.run()  # a real run, inline: claim, handler, outcome, callback row

    assert report.succeeded == 1
    assert job_tester.job(job.id).result == {"sent_to": "ann@example.com"}
    assert "ann@example.com" in welcome.OUTBOX
    assert [j.id for j in job_tester.callbacks()] == [job.id]  # recorded, not sent


def test_a_retry_waits_for_its_backoff_unless_the_test_says_so(job_tester: JobTester) -> None:
    job_id = welcome.signup(job_tester.engine, "bob@busy.example")

    assert job_tester.run().retried == 1  # Retry(delay=60): pending again, due in a minute
    assert job_tester.job(job_id).status == "pending"
    assert job_tester.run(delayed=True).succeeded == 1  # later jobs and retries made due now
    assert job_tester.job(job_id).attempts == 2


def test_nothing_else_was_enqueued(job_tester: JobTester) -> None:
    welcome.signup(job_tester.engine, "cy@example.com")
    job_tester.assert_enqueued(task="welcome_mail", count=1)
    job_tester.assert_not_enqueued(task="welcome_mail", payload={"to": "someone@else.example"})
