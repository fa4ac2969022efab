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


@pytest.mark.parametrize(("action", "body", "error"), [
    ("bulk-cancel", {"queue": ["q"], "task": None}, "queue: must be text or a number, not [\"q\"]"),
    ("bulk-cancel", {"queue": "q", "task": None}, "task: must be text or a number, not null"),
    ("bulk-retry", {"staus": "failed"}, "staus: not a field of bulk-retry (it takes status, queue, task, since, "
                                        "until, q, callback)"),
    ("bulk-cancel", {"queue": {"name": "q"}}, "queue: must be text or a number, not {\"name\": \"q\"}"),
    ("bulk-cancel", {"since": True}, "since: must be text or a number, not true"),
    ("cancel", {"job_id": 1, "queue": "q"}, "queue: not a field of cancel (it takes job_id)"),
    ("pause", {"queue": "q", "reason": {"why": "deploy"}}, "reason: must be text or a number, not {\"why\": "),
    ("purge", {"older_than": "1d", "statuses": ["failed", 3]}, "statuses: must be text or a number, not "),
])
def test_a_field_an_action_cannot_use_is_a_400_and_nothing_changes(console: Any, store: Store, action: str,
                                                                   body: dict[str, Any], error: str) -> None:
    """A misspelt field or a value that is not text (a list, null, an object) was dropped: a bulk cancel
    meant for one queue cancelled every job."""
    jobs = [enqueue(store.engine, "noop", queue=queue) for queue in ("q", "other")]
    answer = console(token="tok").post(f"/api/actions/{action}", json=body, headers=BEARER)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith(error)
    assert [store.get(job_id).status for job_id in jobs] == ["pending", "pending"]  # type: ignore[union-attr]
    assert OpsStore(store).paused() == []


@pytest.mark.parametrize("value", ["1_0", "\u0661", "0x1", "1.0", "+"])
def test_a_job_id_is_ascii_digits(console: Any, value: str) -> None:
    answer = console(token="tok").post("/api/actions/cancel", json={"job_id": value}, headers=BEARER)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith("job id: must be a whole number")


@pytest.mark.parametrize("body", [b'{"queue": "\\ud800"}', b'{"queue": "q", "x": ' + b"[" * 100_000 + b"]" * 100_000
                                  + b"}", b'{"queue": "\xff"}'])
def test_a_body_that_is_no_text_or_too_deep_to_read_is_a_400(console: Any, body: bytes) -> None:
    answer = console(token="tok").post("/api/actions/pause", content=body,
                                       headers={**BEARER, "Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith("the body must be a JSON object in valid UTF-8")


def test_a_bulk_action_acts_on_its_filter_alone(console: Any, store: Store) -> None:
    jobs = [enqueue(store.engine, "noop", queue=queue) for queue in ("q", "other")]
    answer = console(token="tok").post("/api/actions/bulk-cancel", json={"queue": "q"}, headers=BEARER)
    assert answer.json() == {"changed": True, "message": "1 job(s) cancelled (or asked to stop)"}
    assert [store.get(job_id).status for job_id in jobs] == ["cancelled", "pending"]  # type: ignore[union-attr]


def test_a_text_filter_over_its_limit_is_a_400_not_cut(console: Any, store: Store) -> None:
    # Cut to 200 characters it matched both jobs, and a bulk cancel of one cancelled both.
    keep, cancel = (enqueue(store.engine, "noop", {"ref": "A" * 200 + end}) for end in ("KEEP-ME", "CANCEL-ME"))
    long = "A" * 200 + "CANCEL-ME"
    answer = console(token="tok").post("/api/actions/bulk-cancel", json={"q": long}, headers=BEARER)
    assert answer.status_code == 400 and answer.json()["error"] == "q: 209 characters, at most 200"
    listed = console().get("/api/jobs", params={"q": long})
    assert listed.status_code == 400 and listed.json()["error"] == "q: 209 characters, at most 200"
    assert [store.get(job_id).status for job_id in (keep, cancel)] == ["pending", "pending"]  # type: ignore[union-attr]
    assert console().get("/api/jobs", params={"q": "A" * 200}).status_code == 200


def test_a_misspelt_parameter_of_the_jobs_api_is_a_400(console: Any, store: Store) -> None:
    enqueue(store.engine, "noop")
    answer = console().get("/api/jobs", params={"stauts": "failed"})  # listed every job, as if none had failed
    assert answer.status_code == 400
    assert answer.json()["error"] == ("stauts: not a parameter of /api/jobs (it takes status, queue, task, since, "
                                      "until, q, callback, before, limit, count)")
    assert console().get("/api/jobs", params={"status": "failed", "limit": "5", "count": "1"}).json()["count"] == 0


def test_a_payload_and_result_nested_past_what_is_read_show_as_their_text(console: Any, store: Store,
                                                                           engine: sa.Engine) -> None:
    """PostgreSQL and SQLite store JSON of any depth written by hand; 600 levels took pages, `show --json`
    and the JSON API past Python's recursion limit (a 500, exit 1). Such a value is shown as its text."""
    deep = "[" * 600 + "]" * 600
    if engine.dialect.name == "mysql":  # its JSON check refuses the row: nothing to show
        with pytest.raises(sa.exc.DBAPIError, match="CONSTRAINT"), engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO pending_jobs (task, payload) VALUES ('t', :deep)"), {"deep": deep})
        return
    with engine.begin() as conn:
        job_id = conn.execute(sa.text("INSERT INTO pending_jobs (task, payload, result, status, run_at, created_at) "
                                      "VALUES ('t', :deep, :deep, 'succeeded', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP) "
                                      "RETURNING id"), {"deep": f'{{"a": {deep}}}'}).scalar_one()
    client = console(token="tok")
    shown = client.get(f"/api/jobs/{job_id}", headers=BEARER)
    assert shown.status_code == 200 and shown.json()["result"] == f'{{"a": {deep}}}'
    assert client.get("/api/jobs", headers=BEARER).json()["jobs"][0]["payload"] == f'{{"a": {deep}}}'
    assert client.get(f"/jobs/{job_id}", headers=BEARER).status_code == 200
