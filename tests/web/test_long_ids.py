"""A job id in a path too long for int() (more than 4,300 digits) is no job, not a 500 raised while routing
(before any authentication on the push endpoints)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from pending_jobs.store import Store
from pending_jobs.web.push import PushSettings, create_push_app

LONG = "9" * 5000  # past Python's 4,300-digit limit on int(text): Starlette's int converter raised ValueError


@pytest.mark.parametrize("path", [f"/api/jobs/{LONG}", f"/jobs/{LONG}"])
def test_a_job_id_too_long_to_convert_is_no_job(console: Any, path: str) -> None:
    answer = console().get(path)
    assert answer.status_code == 404, answer.text


def test_a_push_path_with_an_id_too_long_to_convert_is_refused_not_a_500(store: Store) -> None:
    app = create_push_app(PushSettings("push secret for the tests, 32 b."), store)
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get(f"/push/jobs/{LONG}/events?token=v1.1.1.{'0' * 64}")
        assert answer.status_code == 401, answer.text
