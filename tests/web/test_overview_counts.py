"""The overview page and /api/overview mark the counts above the bound (lowered here) as estimates."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

import pending_jobs
from pending_jobs.schema import pending_jobs as J
from pending_jobs.store import overview


@pytest.mark.parametrize("backend", ["sqlite", "mysql", "postgresql"], indirect=True)
def test_counts_above_the_bound_are_marked_in_the_page_and_the_json(console: Any, engine: sa.Engine,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(overview, "BOUND", 5)
    ids = pending_jobs.enqueue_many(engine, [{"task": "echo", "payload": {}, "queue": "mail"} for _ in range(30)])
    with engine.begin() as conn:
        conn.execute(sa.update(J).where(J.c.id.in_(ids[:27])).values(status="succeeded"))
        conn.execute(sa.update(J).where(J.c.id == ids[27]).values(status="failed"))
    client = console()
    data = client.get("/api/overview").json()
    (mail,) = data["queues"]
    assert data["count_bound"] == 5
    assert (mail["counts"]["pending"], mail["counts"]["failed"]) == (2, 1)  # exact: at or below the bound
    mark = mail["inexact"]["succeeded"]
    assert set(mail["inexact"]) == {"succeeded"} and mark in (overview.ESTIMATE, overview.MORE_THAN)
    assert mail["counts"]["succeeded"] > 5 if mark == overview.ESTIMATE else mail["counts"]["succeeded"] == 5
    page = client.get("/").text
    shown = f'{"≈" if mark == overview.ESTIMATE else "&gt;"} {mail["counts"]["succeeded"]:,}'
    assert f'data-inexact="{mark}"' in page and shown in page
    assert page.count("data-inexact=") == 1 and "Counts up to 5 are exact" in page
