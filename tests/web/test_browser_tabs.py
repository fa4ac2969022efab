"""Console pages in many browser tabs: a tab in the background holds no /events stream. Chromium allows 6
connections per host over HTTP/1.1, and six open console tabs held them all: the seventh did not load."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

import pending_jobs
from tests.web.test_browser import _wait, browser, server

__all__ = ["browser", "server"]  # the fixtures, used by name


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_seventh_tab_loads_and_a_tab_shown_again_follows_changes(server: str, browser: Any,
                                                                      engine: sa.Engine) -> None:
    from selenium.webdriver.common.by import By

    with engine.begin() as conn:
        ids = [pending_jobs.enqueue(conn, "echo", {"n": n}, delay=3600) for n in range(8)]
    browser.set_page_load_timeout(15)
    browser.get(f"{server}/jobs/{ids[0]}")
    first = browser.current_window_handle
    for job in ids[1:]:
        browser.switch_to.new_window("tab")
        browser.get(f"{server}/jobs/{job}")  # a TimeoutException here: the tabs before hold every connection
        assert browser.title.startswith(f"Job {job} ")
    browser.switch_to.window(first)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET status = 'cancelled' WHERE id = :id"), {"id": ids[0]})
    _wait(lambda: browser.find_element(By.ID, "job-status").text == "cancelled")
