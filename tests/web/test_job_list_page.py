"""The jobs page and /api/jobs say when a slow filter was searched in a window only (store/joblist.py;
budget and window lowered so that 20,000 rows show it)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs.store import joblist
from tests.conftest import fill_needles


@pytest.mark.parametrize("backend", ["mysql", "postgresql"], indirect=True)
def test_a_page_searched_in_a_window_says_so_and_links_further(console: Any, engine: sa.Engine,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(joblist, "BUDGET", 0.001)
    monkeypatch.setattr(joblist, "WINDOW", 5_000)
    fill_needles(engine, 20_000, (3,))
    client = console()
    data = client.get("/api/jobs", params={"q": "needle"}).json()
    assert data["jobs"] == [] and data["searched_from"] == data["next"] and data["next"] is not None
    page = client.get("/jobs", params={"q": "needle"}).text
    assert 'id="searched"' in page and f"searched jobs #{data['next']} and newer" in page
    assert f"before={data['next']}" in page  # "older →" searches the next window
    hay = client.get("/api/jobs", params={"q": "hay", "limit": 5}).json()
    assert len(hay["jobs"]) == 5 and hay["searched_from"] is None  # a full page is the exact page
