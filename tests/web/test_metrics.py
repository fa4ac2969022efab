"""/metrics through the console: the counters keep what the console's purge and bulk retry take out of the rows."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

import pending_jobs
from tests.conftest import scalar

from .conftest import csrf_of


def _scrape(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def _finished(queue: str, task: str, outcome: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("pending_jobs_finished_total", (("outcome", outcome), ("queue", queue), ("task", task)))


@pytest.mark.parametrize("backend", ["sqlite", "mysql", "postgresql"], indirect=True)
def test_counters_never_go_down_across_the_consoles_purge_and_bulk_retry(console: Any, engine: sa.Engine,
                                                                         run: Any) -> None:
    with engine.begin() as conn:
        for n in range(3):
            pending_jobs.enqueue(conn, "echo", {"n": n}, queue="mail")
        for n in range(2):
            pending_jobs.enqueue(conn, "boom", {"n": n}, queue="mail", max_attempts=1,
                                 callback_url="http://127.0.0.1:9/cb")
    run(callbacks="off")
    client = console()
    token = csrf_of(client.get("/").text)
    counters = [_finished("mail", "echo", "succeeded"), _finished("mail", "boom", "failed")]
    before = _scrape(client)
    assert [before[c] for c in counters] == [3, 2]
    assert before[("pending_jobs_callbacks_pending", ())] == 2
    assert not [key for key in before if key[0] == "pending_jobs_callbacks_total"]  # no outcome yet

    def act(name: str, **fields: str) -> None:
        answer = client.post(f"/actions/{name}", data={"csrf": token, **fields})
        assert answer.status_code == 303, answer.text

    with engine.begin() as conn:  # their callbacks gave up long ago (purge keeps a job whose callback is due)
        conn.execute(sa.text("UPDATE pending_jobs SET finished_at = '2000-01-01 00:00:00', "
                             "callback_status = CASE WHEN callback_url IS NULL THEN NULL ELSE 'failed' END"))
    callbacks = ("pending_jobs_callbacks_total", (("outcome", "failed"),))
    assert _scrape(client)[callbacks] == 2

    act("bulk-retry", queue="mail", status="failed")
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status = 'pending'") == 2
    after_retry = _scrape(client)
    assert [after_retry[c] for c in [*counters, callbacks]] == [3, 2, 2]
    assert after_retry[("pending_jobs_callbacks_pending", ())] == 0

    act("purge", older_than="1d", statuses="succeeded")
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs") == 2
    after_purge = _scrape(client)
    assert [after_purge[c] for c in [*counters, callbacks]] == [3, 2, 2]

    run(callbacks="off")  # the two reopened jobs fail again: counted again
    again = _scrape(client)
    assert [again[c] for c in [*counters, callbacks]] == [3, 4, 2]
    assert again[("pending_jobs_callbacks_pending", ())] == 2
