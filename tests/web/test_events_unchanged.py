"""/events sends a page's fragment again only when it changed: a finished job's page, whose 1 MB result
never changes, had sent it every 2 s for as long as the tab stayed open."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import sqlalchemy as sa

import pending_jobs
from pending_jobs.schema import pending_jobs as J
from pending_jobs.web import live


@pytest.mark.parametrize("backend", ["sqlite", "mysql"], indirect=True)
def test_an_unchanged_fragment_is_not_sent_again(console: Any, engine: sa.Engine,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "INTERVAL", 0.05)
    monkeypatch.setattr(live, "STREAM_FOR", 1.0)
    with engine.begin() as conn:
        job = pending_jobs.enqueue(conn, "echo", {"n": 1})

    def cancel() -> None:
        with engine.begin() as conn:
            conn.execute(sa.update(J).where(J.c.id == job).values(status="cancelled"))

    timer = threading.Timer(0.4, cancel)
    timer.start()
    try:
        text = console().get(f"/events?view=job&id={job}").text
    finally:
        timer.join()
    sent = [json.loads(line[6:])["html"] for line in text.splitlines() if line.startswith("data: ")]
    assert len(sent) == 2, f"{len(sent)} snapshots sent for one change"
    assert 'id="job-status">pending<' in sent[0] and 'id="job-status">cancelled<' in sent[1]
    assert text.count(": unchanged") >= 5  # the stream stays alive between changes
