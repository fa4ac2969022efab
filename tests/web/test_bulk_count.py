"""The bulk confirmation counts the jobs the action would change: a cancel over a filter that also matches
finished jobs showed every match ("225504 job(s) match ... (at most 10000 at once)") for 50,000 pending."""

from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa

import pending_jobs
from pending_jobs.schema import pending_jobs as J
from pending_jobs.web import pages
from tests.web.conftest import csrf_of


@pytest.mark.parametrize("backend", ["sqlite", "mysql", "postgresql"], indirect=True)
def test_the_confirmation_counts_what_the_action_changes(console: Any, engine: sa.Engine,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pages, "BULK_LIMIT", 2)
    ids = pending_jobs.enqueue_many(engine, [{"task": "echo", "payload": {}, "queue": "mail"} for _ in range(4)])
    with engine.begin() as conn:
        conn.execute(sa.update(J).where(J.c.id.in_(ids[:3])).values(status="succeeded"))
    client = console()
    cancel = client.get("/jobs/bulk", params={"action": "cancel", "queue": "mail"}).text
    shown = re.search(r'<p id="bulk-count">(.*?)</p>', cancel, re.S)
    assert shown and shown.group(1).startswith("<strong>1</strong> of the 4 matching job(s)")
    assert "at most" not in shown.group(1)  # one job to cancel is not past the limit of 2
    retry = client.get("/jobs/bulk", params={"action": "retry", "queue": "mail"}).text
    assert "<strong>3</strong> of the 4 matching job(s) are finished" in retry and "(at most 2 at once" in retry
    answer = client.post("/actions/bulk-cancel", data={"csrf": csrf_of(cancel), "queue": "mail", "back": "/jobs"})
    assert answer.status_code == 303 and "1+job%28s%29+cancelled" in answer.headers["location"]
