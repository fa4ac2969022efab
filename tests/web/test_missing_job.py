"""An action on a job that does not exist says so (as `pending-jobs retry` and `cancel` do), in its answer
and in the audit, instead of calling the job "not finished" or "missing"."""

from __future__ import annotations

from typing import Any

import pytest

BEARER = {"Authorization": "Bearer tok"}


@pytest.mark.parametrize(("action", "done"), [("retry", "retried"), ("cancel", "cancelled")])
def test_an_action_on_a_job_that_does_not_exist_says_so(console: Any, action: str, done: str) -> None:
    client = console(token="tok")
    answer = client.post(f"/api/actions/{action}", json={"job_id": 424242}, headers=BEARER)
    assert answer.json() == {"changed": False, "message": f"job 424242 does not exist: not {done}"}
    assert "does not exist" in client.get("/api/audit", headers=BEARER).json()["entries"][0]["detail"]
