"""The jobs page keeps what the operator asked for: its page size on "older →", and a filter of several
statuses in its status select (re-filtering dropped them)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa

import pending_jobs


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_older_keeps_the_page_size(console: Any, engine: sa.Engine) -> None:
    pending_jobs.enqueue_many(engine, [{"task": "echo"} for _ in range(30)])
    page = console().get("/jobs", params={"limit": 10}).text
    older = re.search(r'href="/jobs\?([^"]*)" id="next-page"', page)
    assert older is not None and "limit=10" in older.group(1).split("&amp;"), page
    default = console().get("/jobs").text
    assert 'id="next-page"' not in default  # 30 jobs fit the default page of 50: no "older" link, no limit


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_filter_of_several_statuses_stays_selected(console: Any, engine: sa.Engine) -> None:
    page = console().get("/jobs", params={"status": "failed,cancelled"}).text
    select = re.search(r'<select name="status" id="f-status">(.*?)</select>', page, re.DOTALL)
    assert select is not None
    assert '<option value="failed,cancelled" selected>failed or cancelled</option>' in select.group(1)
    one = console().get("/jobs", params={"status": "failed"}).text
    assert '<option value="failed" selected>' in one and "failed or" not in one
