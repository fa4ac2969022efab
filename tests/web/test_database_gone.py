"""The console while its database is gone: 503 and the reason in one line on every page and the API, not
"Internal Server Error" (and a traceback per request in the log)."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from pending_jobs import config
from pending_jobs.store import create_engine, open_store
from pending_jobs.web.app import create_app
from tests.conftest import free_port

URLS = {"mysql": "mysql://root@127.0.0.1:{port}/gone", "postgresql": "postgresql://postgres@127.0.0.1:{port}/gone"}


@pytest.mark.parametrize("backend", ["mysql", "postgresql"])
def test_every_page_says_the_database_is_unavailable(backend: str, caplog: pytest.LogCaptureFixture) -> None:
    engine = create_engine(URLS[backend].format(port=free_port()), create=False)  # nothing listens there
    settings = config.load_web({}, environ={})
    client = TestClient(create_app(settings, open_store(engine)), base_url="http://127.0.0.1",
                        client=("127.0.0.1", 40000), raise_server_exceptions=False)
    for path in ("/", "/jobs", "/jobs/1", "/runs", "/audit", "/healthz", "/events?once=1", "/metrics"):
        answer = client.get(path)
        assert answer.status_code == 503 and answer.text.startswith("database unavailable: "), (path, answer.text)
        assert answer.headers["x-frame-options"] == "DENY"  # still behind the guard
    api = client.get("/api/jobs")
    assert api.status_code == 503 and api.json()["error"].startswith("database unavailable: ")
    assert "Traceback" not in caplog.text
    engine.dispose()
