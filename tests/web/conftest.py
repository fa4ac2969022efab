"""Fixtures of the console tests: the app on a real, migrated database, driven through Starlette's TestClient."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from pending_jobs import config
from pending_jobs.store import Store
from pending_jobs.web.app import create_app
from tests.conftest import ROOT, free_port

LOCAL = ("127.0.0.1", 40000)


@pytest.fixture
def console(store: Store) -> Iterator[Any]:
    """`console(client=LOCAL, metrics_cache=0.0, **web settings)`: a TestClient on a new app over the test
    database."""
    clients: list[TestClient] = []

    def make(client: tuple[str, int] = LOCAL, **web: Any) -> TestClient:
        # A scrape reads what the test just did (the 5 s cache of /metrics: test_metrics_cache).
        metrics_cache = web.pop("metrics_cache", 0.0)
        settings = dataclasses.replace(config.load_web({}, environ={}), **web)
        test_client = TestClient(create_app(settings, store, metrics_cache=metrics_cache), base_url="http://127.0.0.1",
                                 client=client, follow_redirects=False)
        clients.append(test_client)
        return test_client

    yield make
    for made in clients:
        made.close()


def csrf_of(page: str) -> str:
    """The CSRF token a page's forms carry."""
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert found, "no form with a CSRF token on the page"
    return found.group(1)


@pytest.fixture
def web_command() -> Iterator[Any]:
    """`web_command(db_url, **env)`: `pending-jobs web` started as a process on a free loopback port, once
    it answers /healthz; its base URL. Stopped after the test."""
    started: list[subprocess.Popen[str]] = []

    def start(db_url: str, **env: str) -> str:
        port = free_port()
        environ = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT),
                   "PENDING_JOBS_DATABASE_URL": db_url, **env}
        process = subprocess.Popen([sys.executable, "-m", "pending_jobs", "web", "--port", str(port)],
                                   env=environ, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started.append(process)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        return base
            except OSError:
                if process.poll() is not None:
                    said = process.stdout.read() if process.stdout else ""
                    raise AssertionError(f"the console exited: {said}") from None
                if time.monotonic() > deadline:
                    raise AssertionError("the console did not answer /healthz within 15 s") from None
                time.sleep(0.1)

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
