"""The app factory's mount point for routes of other modules (the push endpoint): outside the console's
guard (they authenticate their own callers), with their lifespan hook run by the server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from pending_jobs import config
from pending_jobs.store import Store
from pending_jobs.web.app import create_app

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def test_extra_routes_are_served_beside_the_guarded_console(store: Store) -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        events.append("started")
        yield
        events.append("stopped")

    def ping(request: Request) -> PlainTextResponse:
        return PlainTextResponse("pong")

    settings = config.load_web({"token": "t"}, environ={})
    app = create_app(settings, store, extra_routes=[Route("/push/ping", ping)], lifespan=lifespan)
    with TestClient(app, client=("203.0.113.9", 1)) as client:
        assert events == ["started"]
        assert client.get("/push/ping").text == "pong"  # no console credentials needed
        assert client.get("/").status_code == 401  # the console still needs them
        assert client.get("/", headers={"Authorization": "Bearer t"}).status_code == 200
    assert events == ["started", "stopped"]
