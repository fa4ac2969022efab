"""The console in a real browser: Debian's Chromium driven by Selenium against `pending-jobs web` served by
uvicorn in a subprocess on a free loopback port, over a real database, with real `pending-jobs run`s.

PENDING_JOBS_SCREENSHOTS=1 also writes docs/console-overview.png, console-jobs.png and console-job.png.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import pending_jobs
from pending_jobs.store import Store
from tests.conftest import ROOT, cli, finish, scalar

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOTS = os.environ.get("PENDING_JOBS_SCREENSHOTS") == "1"



@pytest.fixture
def server(web_command: Any, db_url: str) -> str:
    """`pending-jobs web` on a free loopback port; its base URL."""
    return str(web_command(db_url))


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (shutil.which(CHROMIUM) and shutil.which(DRIVER)):
        message = "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    ends = time.monotonic() + timeout
    while True:
        try:
            found = check()
            if found:
                return found
        except Exception:  # an element swapped out by the live update: look again
            if time.monotonic() > ends:
                raise
        if time.monotonic() > ends:
            raise AssertionError("the page did not show it in time")
        time.sleep(0.2)


def _click(browser: Any, css: str) -> None:
    """Click what `css` selects, again if a live update swapped it out between finding and clicking."""
    from selenium.webdriver.common.by import By

    _wait(lambda: browser.find_element(By.CSS_SELECTOR, css).click() or True)


def _shot(browser: Any, name: str) -> None:
    if SCREENSHOTS:
        browser.save_screenshot(str(ROOT / "docs" / f"console-{name}.png"))


def _jobs(store: Store, engine: sa.Engine) -> int:
    """Some history: echo jobs that succeeded, one waiting, and an echo job whose two attempts failed."""
    with engine.begin() as conn:
        for n in range(4):
            pending_jobs.enqueue(conn, "echo", {"n": n}, queue="mail")
        pending_jobs.enqueue(conn, "echo", {"report": "monthly"}, queue="reports", delay=3600)
    cli("run", env={"PENDING_JOBS_DATABASE_URL": str(engine.url.render_as_string(hide_password=False))})
    with engine.begin() as conn:  # then two attempts that failed, each with its own error
        failing = pending_jobs.enqueue(conn, "echo", {"to": "ada@example.com", "note": "<b>not bold</b>"},
                                       queue="mail", max_attempts=2)
    claim = store.claim("mail", 1, "browser-test", 60)
    finish(store, claim.token, retried=[(failing, 0.0, "SMTPServerDisconnected: first attempt")])
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET run_at = created_at WHERE id = :id"), {"id": failing})
    claim = store.claim("mail", 1, "browser-test", 60)
    finish(store, claim.token, failed=[(failing, "SMTPAuthenticationError: second attempt")])
    return failing


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "mysql", "postgresql"], indirect=True)
def test_operator_follows_a_failed_job_retries_it_and_pauses_a_queue(server: str, browser: Any, store: Store,
                                                                    engine: sa.Engine, db_url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    failing = _jobs(store, engine)
    env = {"PENDING_JOBS_DATABASE_URL": db_url}

    browser.get(server + "/")
    _wait(lambda: [row.get_attribute("data-queue") for row in browser.find_elements(
        By.CSS_SELECTOR, "table.queues tr[data-queue]")] == ["mail", "reports"])
    _wait(lambda: "succeeded" in browser.find_element(By.CSS_SELECTOR, "svg.chart").get_attribute("innerHTML"))
    _shot(browser, "overview")

    browser.get(server + "/jobs")
    Select(browser.find_element(By.ID, "f-status")).select_by_value("failed")
    browser.find_element(By.ID, "f-queue").send_keys("mail")
    browser.find_element(By.ID, "f-apply").click()
    _wait(lambda: [row.get_attribute("data-job") for row in browser.find_elements(
        By.CSS_SELECTOR, "table.jobs tr[data-job]")] == [str(failing)])
    assert "status=failed" in browser.current_url
    _shot(browser, "jobs")

    _click(browser, f"tr[data-job='{failing}'] a")
    errors = _wait(lambda: [(e.get_attribute("data-attempt"), e.text) for e in browser.find_elements(
        By.CSS_SELECTOR, "#errors li")])
    assert [attempt for attempt, _ in errors] == ["1", "2"]
    assert "first attempt" in errors[0][1] and "second attempt" in errors[1][1]
    assert "<b>not bold</b>" in browser.find_element(By.ID, "payload").text  # shown as text, not markup
    _shot(browser, "job")

    _click(browser, "#retry")
    alert = _wait(lambda: browser.switch_to.alert)
    assert f"Run job {failing} again" in alert.text
    alert.accept()
    _wait(lambda: browser.find_element(By.ID, "job-status").text == "pending")
    assert "pending+again" in browser.current_url or "pending again" in browser.find_element(By.ID, "message").text
    # From here the page is not reloaded: a marker set on it now must survive while the status changes.
    browser.execute_script("document.body.dataset.marker = 'same-page';")
    assert cli("run", env=env).returncode == 0  # the retried job runs (echo succeeds)
    _wait(lambda: browser.find_element(By.ID, "job-status").text == "succeeded")
    assert browser.execute_script("return document.body.dataset.marker;") == "same-page"

    browser.get(server + "/")
    _click(browser, "tr[data-queue='mail'] button")
    _wait(lambda: browser.switch_to.alert).accept()
    _wait(lambda: "paused" in browser.find_element(By.CSS_SELECTOR, "tr[data-queue='mail'] td.state").text)
    with engine.begin() as conn:
        held = pending_jobs.enqueue(conn, "echo", {"held": True}, queue="mail")
    assert cli("run", env=env).returncode == 0
    assert scalar(engine, "SELECT status FROM pending_jobs WHERE id = :id", id=held) == "pending"  # skipped
    browser.get(server + "/audit")
    actions = _wait(lambda: [td.text for td in browser.find_elements(By.CSS_SELECTOR, "table.audit td:nth-child(3)")])
    assert actions == ["pause", "retry"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_longest_names_stay_inside_the_window(server: str, browser: Any, engine: sa.Engine) -> None:
    # A 191-character task and a 64-character queue (the schema's widest) pushed every other column of
    # the jobs table off a 1400-pixel window: 3,375 pixels wide.
    with engine.begin() as conn:
        job = pending_jobs.enqueue(conn, "t" * 191, {"n": 1}, queue="q" * 64)
    for path in ("/jobs", f"/jobs/{job}"):
        browser.get(server + path)
        _wait(lambda: browser.execute_script("return document.readyState") == "complete")
        wide, window = browser.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth];")
        assert wide <= window, (path, wide, window)


def test_screenshots_are_in_the_docs() -> None:
    """The README shows them: they must exist (refresh with PENDING_JOBS_SCREENSHOTS=1)."""
    for name in ("overview", "jobs", "job"):
        assert (Path(ROOT) / "docs" / f"console-{name}.png").stat().st_size > 10_000
