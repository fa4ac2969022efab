"""The overview's failed callbacks link to the jobs whose callback failed (it had linked to the failed jobs:
another set, where a succeeded job whose callback failed was not), and the jobs page filters by it."""

from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa

import pending_jobs
from pending_jobs.schema import pending_jobs as J


@pytest.mark.parametrize("backend", ["sqlite", "mysql", "postgresql"], indirect=True)
def test_the_failed_callbacks_link_lists_the_jobs_whose_callback_failed(console: Any, engine: sa.Engine) -> None:
    cb_failed, job_failed, delivered = pending_jobs.enqueue_many(engine, [
        {"task": "echo", "payload": {}, "callback_url": "https://app.example/cb"},
        {"task": "echo", "payload": {}},
        {"task": "echo", "payload": {}, "callback_url": "https://app.example/cb"}])
    with engine.begin() as conn:
        conn.execute(sa.update(J).where(J.c.id == cb_failed).values(status="succeeded", callback_status="failed"))
        conn.execute(sa.update(J).where(J.c.id == job_failed).values(status="failed"))
        conn.execute(sa.update(J).where(J.c.id == delivered).values(status="failed", callback_status="delivered"))
    client = console()
    link = re.search(r'<a href="([^"]*)"[^>]*>failed</a> 1', client.get("/").text)
    assert link, "the overview shows 1 failed callback, linked"
    listed = client.get(link.group(1).replace("&amp;", "&")).text
    assert re.findall(r'data-job="(\d+)"', listed) == [str(cb_failed)]
    assert '<option value="failed" selected>failed</option>' in listed.split('id="f-callback"')[1]
    data = client.get("/api/jobs", params={"callback": "none"}).json()
    assert [j["id"] for j in data["jobs"]] == [job_failed]
    assert client.get("/api/jobs", params={"callback": "lost"}).status_code == 400
