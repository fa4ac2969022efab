"""`cancel` of a job a run has claimed but not started, then the run stops (SIGTERM, the hand-over to the next
cron tick's run, --max-runtime) and puts its unstarted jobs back: the job must end `cancelled`, as `cancel`
promised. It went back to pending with the request set, and the next run ran it to `succeeded`."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

import pending_jobs
from pending_jobs.store import OpsStore, Store
from tests.conftest import rows

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "mysql", "postgresql"], indirect=True)


def test_a_cancelled_job_put_back_unstarted_ends_cancelled(store: Store, engine: sa.Engine) -> None:
    cancelled = pending_jobs.enqueue(engine, "echo", {}, callback_url="https://hooks.example.com/x")
    other = pending_jobs.enqueue(engine, "echo", {})
    claim = store.claim("default", 10, "host-a", 300)
    assert sorted(job.id for job in claim.jobs) == [cancelled, other]
    assert OpsStore(store).cancel(cancelled) == "requested"

    assert store.release(claim.token, [cancelled, other]) == (1, 1)  # one put back, one cancelled

    found = {row.id: row for row in rows(engine, "SELECT id, status, attempts, callback_status, lease_token "
                                                 "FROM pending_jobs")}
    assert (found[cancelled].status, found[cancelled].attempts, found[cancelled].callback_status) == \
        ("cancelled", 0, "pending")
    assert (found[other].status, found[other].attempts) == ("pending", 0)
    assert [job.id for job in store.claim("default", 10, "host-b", 300).jobs] == [other]
    # No attempt ran: no error-history row (one for attempt 1 sat beside "0 of 5" attempts in the console).
    assert rows(engine, "SELECT job_id FROM pending_job_errors") == []
