"""Fixtures of the console tests: the app on a real, migrated database, driven through Starlette's TestClient."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from pending_jobs import config
from pending_jobs.store import Store
from pending_jobs.web.app import create_app

LOCAL = ("127.0.0.1", 40000)


@pytest.fixture
def console(store: Store) -> Iterator[Any]:
    """`console(client=LOCAL, **web settings)`: a TestClient on a new app over the test database."""
    clients: list[TestClient] = []

    def make(client: tuple[str, int] = LOCAL, **web: Any) -> TestClient:
        settings = dataclasses.replace(config.load_web({}, environ={}), **web)
        test_client = TestClient(create_app(settings, store), client=client, follow_redirects=False)
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
