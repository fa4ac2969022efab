"""Console actions through the forms and the API, each audited; the API's shapes, /metrics, /events."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

import pending_jobs
from pending_jobs.store import OpsStore, Store
from tests.conftest import cli, scalar

from .conftest import csrf_of


def _status(engine: sa.Engine, job: int) -> str:
    return str(scalar(engine, "SELECT status FROM pending_jobs WHERE id = :id", id=job))


@pytest.mark.parametrize("backend", ["sqlite", "mysql", "postgresql"], indirect=True)
def test_every_action_changes_the_jobs_and_is_audited(console: Any, store: Store, engine: sa.Engine,
                                                      run: Any) -> None:
    with engine.begin() as conn:
        failed = [pending_jobs.enqueue(conn, "boom", {"n": n}, queue="mail", max_attempts=1,
                                       callback_url="http://127.0.0.1:9/cb") for n in range(3)]
        waiting = pending_jobs.enqueue(conn, "echo", {}, queue="reports", delay=3600)
    run(callbacks="off")
    client = console()
    token = csrf_of(client.get("/").text)

    def act(name: str, **fields: Any) -> str:
        answer = client.post(f"/actions/{name}", data={"csrf": token, **{k: str(v) for k, v in fields.items()}})
        assert answer.status_code == 303, answer.text
        return str(answer.headers["location"])

    assert "pending+again" in act("retry", job_id=failed[0])
    assert _status(engine, failed[0]) == "pending"
    assert "not+finished" in act("retry", job_id=waiting)
    act("cancel", job_id=waiting)
    assert _status(engine, waiting) == "cancelled"
    act("callback-retry", job_id=failed[1])
    assert scalar(engine, "SELECT callback_next_at IS NOT NULL FROM pending_jobs WHERE id = :id", id=failed[1])
    act("pause", queue="mail", reason="incident 42")
    assert [p.queue for p in OpsStore(store).paused()] == ["mail"]
    assert 'class="paused"' in client.get("/").text
    act("resume", queue="mail")
    assert OpsStore(store).paused() == []

    confirm = client.get("/jobs/bulk", params={"action": "retry", "queue": "mail", "status": "failed"})
    assert confirm.status_code == 200 and "<strong>2</strong> of the 2 matching job(s)" in confirm.text
    act("bulk-retry", queue="mail", status="failed")
    assert {_status(engine, j) for j in failed} == {"pending"}
    act("bulk-cancel", queue="mail")
    assert {_status(engine, j) for j in failed} == {"cancelled"}
    with engine.begin() as conn:
        # their callbacks gave up long ago (purge keeps a job whose callback is still due)
        conn.execute(sa.text("UPDATE pending_jobs SET finished_at = '2000-01-01 00:00:00', callback_status = 'failed'"))
        # a newer job, in another queue: SQLite's purge keeps the newest row, so that no id is given twice
        pending_jobs.enqueue(conn, "echo", {}, queue="later")
    assert "4+finished+job" in act("purge", older_than="1d", statuses="cancelled")
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE queue = 'mail'") == 0

    entries = client.get("/api/audit").json()["entries"]
    assert [e["action"] for e in entries] == ["purge", "bulk-cancel", "bulk-retry", "resume", "pause",
                                              "callback-retry", "cancel", "retry", "retry"]
    assert {e["actor"] for e in entries} == {"local@127.0.0.1"}
    assert entries[4]["queue"] == "mail" and entries[-1]["job_id"] == failed[0]
    assert json.loads(entries[4]["detail"]) == {"reason": "incident 42", "outcome": "queue mail paused"}
    assert json.loads(entries[2]["detail"])["changed"] == "2"
    page = client.get("/audit").text
    assert "bulk-retry" in page and "local@127.0.0.1" in page


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_api_shapes_and_keyset_pages(console: Any, engine: sa.Engine, run: Any, db_url: str) -> None:
    with engine.begin() as conn:
        ids = [pending_jobs.enqueue(conn, "echo", {"n": n}) for n in range(5)]
        flaky = pending_jobs.enqueue(conn, "boom", {"n": 9}, max_attempts=2)
    run()
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET run_at = created_at WHERE id = :id"), {"id": flaky})
    run()
    client = console()
    page = client.get("/api/jobs", params={"limit": 4, "count": 1}).json()
    assert [j["id"] for j in page["jobs"]] == [flaky, *ids[:1:-1]] and page["next"] == ids[2] and page["count"] == 6
    assert set(page["jobs"][0]) >= {"id", "queue", "task", "payload", "status", "attempts", "last_error",
                                    "callback_url", "created_at", "finished_at"}
    rest = client.get("/api/jobs", params={"limit": 4, "before": page["next"]}).json()
    assert [j["id"] for j in rest["jobs"]] == ids[1::-1] and rest["next"] is None
    assert client.get("/api/jobs", params={"status": "nope"}).status_code == 400
    assert client.get("/api/jobs", params={"since": "soon"}).json()["error"].startswith("since:")

    listed = cli("list", "--json", env={"PENDING_JOBS_DATABASE_URL": db_url})
    assert json.loads(listed.stdout) == client.get("/api/jobs").json()["jobs"]  # the CLI's shape, to the byte
    job = client.get(f"/api/jobs/{flaky}").json()
    assert job["status"] == "failed" and [e["attempt"] for e in job["errors"]] == [1, 2]
    assert all("boom" in e["error"] for e in job["errors"]) and job["callback_attempts_log"] == []
    assert client.get("/api/jobs/999999").status_code == 404
    overview = client.get("/api/overview").json()
    assert overview["queues"][0]["queue"] == "default" and overview["queues"][0]["counts"]["succeeded"] == 5
    assert len(overview["throughput"]["minutes"]) == 60 and overview["runs"][0]["report"]["succeeded"] == 0
    assert client.get("/api/runs").json()["runs"][1]["report"]["succeeded"] == 5
    paths = client.get("/api/openapi.json").json()["paths"]
    assert {"/api/overview", "/api/jobs", "/api/jobs/{job_id}", "/api/actions/{action}", "/metrics"} <= set(paths)

    page_html = client.get(f"/jobs/{flaky}").text
    assert 'data-attempt="1"' in page_html and 'data-attempt="2"' in page_html
    metrics = client.get("/metrics").text
    assert 'pending_jobs_finished_total{outcome="succeeded",queue="default",task="echo"} 5.0' in metrics
    assert 'pending_jobs_finished_total{outcome="failed",queue="default",task="boom"} 1.0' in metrics
    assert 'pending_jobs_queue_depth{queue="default"} 0.0' in metrics
    assert client.get("/healthz").text == "ok\n"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_events_send_the_page_fragment_as_json(console: Any, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        job = pending_jobs.enqueue(conn, "echo", {"n": 1})
    answer = console().get(f"/events?once=1&view=job&id={job}")
    assert answer.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in answer.text.splitlines() if line.startswith("data: ")]
    snapshot = json.loads(lines[0][6:])
    assert snapshot["view"] == "job" and 'id="job-status">pending<' in snapshot["html"]
    assert console().get("/events?once=1&view=nothing").status_code == 400
    jobs = json.loads(console().get("/events?once=1&view=jobs&status=pending").text.split("data: ", 1)[1])
    assert f'data-job="{job}"' in jobs["html"]
