"""Ordinary bad input to the console is a 400 or a 404 naming what is wrong, never a 500 from the database:
ids outside BIGINT, NUL characters (PostgreSQL text cannot hold one), and ages too large to subtract from now."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue
from pending_jobs.store import OpsStore, Store
from pending_jobs.web import live

HUGE = "99999999999999999999999"  # above 2**63 - 1: no BIGINT column holds it
BEARER = {"Authorization": "Bearer tok"}


@pytest.mark.parametrize("path", [f"/api/jobs/{HUGE}", f"/jobs/{HUGE}", f"/events?view=job&id={HUGE}&once=1"])
def test_a_job_id_outside_bigint_is_no_job(console: Any, path: str) -> None:
    answer = console().get(path)
    assert answer.status_code in (400, 404), answer.text
    assert HUGE in answer.text or "no such job" in answer.text


def test_a_job_id_that_is_not_a_number_on_the_live_stream_is_a_400(console: Any) -> None:
    answer = console().get("/events?view=job&id=abc&once=1")
    assert answer.status_code == 400
    assert answer.text.startswith("id:")


@pytest.mark.parametrize(("query", "field"), [("q=%00", "q"), ("queue=%00", "queue"), ("task=%00x", "task"),
                                              ("since=1e308d", "since"), ("until=1e308d", "until")])
@pytest.mark.parametrize("path", ["/api/jobs", "/jobs", "/jobs/bulk?action=cancel", "/events?view=jobs&once=1"])
def test_a_filter_with_nul_or_a_huge_age_is_a_400_naming_the_field(console: Any, path: str, query: str,
                                                                    field: str) -> None:
    joiner = "&" if "?" in path else "?"
    answer = console().get(f"{path}{joiner}{query}")
    assert answer.status_code == 400, answer.text
    assert f"{field}:" in answer.text


@pytest.mark.parametrize(("action", "body", "field"), [
    ("pause", {"queue": "a\u0000b"}, "queue"),
    ("resume", {"queue": "a\u0000b"}, "queue"),
    ("pause", {"queue": "q" * 65}, "queue"),
    ("pause", {"queue": "mail", "reason": "x\u0000"}, "reason"),
    ("bulk-cancel", {"q": "\u0000"}, "q"),
    ("bulk-retry", {"queue": "\u0000"}, "queue"),
    ("purge", {"older_than": "1e308d"}, "older_than"),
    ("purge", {"older_than": "3651d"}, "older_than"),
])
def test_an_action_with_nul_or_a_huge_age_is_a_400_naming_the_field(console: Any, store: Store, action: str,
                                                                     body: dict[str, str], field: str) -> None:
    answer = console(token="tok").post(f"/api/actions/{action}", json=body, headers=BEARER)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith(f"{field}:")
    assert OpsStore(store).paused() == []


@pytest.mark.parametrize("value", [HUGE, "0", "-3", "abc"])
@pytest.mark.parametrize("action", ["retry", "cancel", "callback-retry"])
def test_an_action_on_a_job_id_that_is_no_job_id_is_a_400_in_the_cli_s_words(console: Any, action: str,
                                                                                value: str) -> None:
    answer = console(token="tok").post(f"/api/actions/{action}", json={"job_id": value}, headers=BEARER)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error.startswith("job id: "), error
    if value != "abc":
        assert error == f"job id: a job id is a whole number from 1 to {2**63 - 1}, not {value}"


@pytest.mark.parametrize("statuses", [["succeeded", "cancelled"], "succeeded,cancelled", "succeeded, cancelled"])
def test_purge_takes_its_statuses_as_a_list_or_as_text(console: Any, statuses: Any) -> None:
    answer = console(token="tok").post("/api/actions/purge", json={"older_than": "30d", "statuses": statuses},
                                       headers=BEARER)
    assert answer.status_code == 200, answer.text
    assert answer.json()["message"] == "0 finished job(s) purged"


def test_the_largest_age_is_still_accepted(console: Any) -> None:
    client = console(token="tok")
    answer = client.post("/api/actions/purge", json={"older_than": "3650d"}, headers=BEARER)
    assert answer.status_code == 200, answer.text
    assert client.get("/api/jobs?since=3650d&until=1d", headers=BEARER).status_code == 200


def test_a_job_purged_while_its_page_streams_ends_the_stream_quietly(console: Any, store: Store,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "INTERVAL", 0.05)
    job_id = enqueue(store.engine, "noop")
    with console().stream("GET", f"/events?view=job&id={job_id}") as answer:
        assert answer.status_code == 200
        lines = answer.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        with store.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM pending_jobs WHERE id = :id"), {"id": job_id})
        rest = list(lines)  # raised the snapshot's BadRequest into the server's log before; now the end
    assert all("Traceback" not in line for line in rest)
