"""examples/push/follow.html in a real headless Chromium, served from another origin than the push server:
the page shows the job's state, then its end without a reload; a page of an origin not allowed is refused."""

from __future__ import annotations

import functools
import html
import http.server
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs.models import Completion
from pending_jobs.store import Store
from pending_jobs.web import tokens
from pending_jobs.web.push import PushSettings, create_push_app
from tests.conftest import ROOT
from tests.web.test_push import SECRET, Server, add_job

PAGE = ROOT / "examples" / "push" / "follow.html"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        _unavailable("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    chrome = webdriver.Chrome(service=Service(str(driver)), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


class PageServer:
    """The application's page: follow.html with the push base, job id and token filled in, on its own port."""

    def __init__(self, folder: Path) -> None:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *args: None  # type: ignore[attr-defined]
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.folder = folder
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def page(self, push_base: str, job_id: int, token: str) -> str:
        text = PAGE.read_text()
        for name, value in (("push-base", push_base), ("job-id", str(job_id)), ("token", token)):
            text = re.sub(rf'data-{name}="[^"]*"', f'data-{name}="{html.escape(value)}"', text)
        (self.folder / f"job{job_id}.html").write_text(text)
        return f"{self.origin}/job{job_id}.html"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def text_of(browser: Any, wanted: str, timeout: float = 20) -> str:
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while True:
        text = str(browser.find_element(By.ID, "job").text)
        if wanted in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def test_a_page_of_an_allowed_origin_follows_a_job_to_its_end(browser: Any, store: Store, engine: sa.Engine,
                                                               tmp_path: Path) -> None:
    pages = PageServer(tmp_path)
    push = Server(create_push_app(PushSettings(SECRET, [pages.origin]), store)).start()
    try:
        job_id = add_job(engine, "echo", {"n": 1})
        browser.get(pages.page(f"http://127.0.0.1:{push.port}", job_id, tokens.mint(SECRET, job_id)))
        assert text_of(browser, "(pending)") == "Working on it… (pending)"
        claim = store.claim_job(job_id, "test", 60)
        store.finish_many([Completion(claim.token, succeeded=[(job_id, {"rows": "<b>12</b>"})])])
        assert text_of(browser, "Done") == 'Done: {"rows":"<b>12</b>"}'  # shown as text, not markup

        other = add_job(engine)
        refused = Server(create_push_app(PushSettings(SECRET, ["https://app.example.com"]), store)).start()
        try:
            browser.get(pages.page(f"http://127.0.0.1:{refused.port}", other, tokens.mint(SECRET, other)))
            assert text_of(browser, "not allowed") == "This page may not follow jobs (origin not allowed)."
        finally:
            refused.stop()
    finally:
        push.stop()
        pages.stop()
