"""Declared `url` tasks through the real runner against real HTTP servers on 127.0.0.1.

Loopback is allowed because the URL is the task's own configuration; callbacks to the same address
stay refused (test_callbacks covers the guard).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pending_jobs import enqueue
from pending_jobs.store import Store
from tests.receivers import Handler, Received, answer, hang, huge, receiver, sequence, trickle, verified

from .conftest import outcome

ROUTES = {
    "/json": answer(200, b'{"width": 100, "ok": true}', {"Content-Type": "application/json"}),
    "/empty": answer(204, b""),
    "/text": answer(200, b"resized"),
    "/huge": huge(10 * 1024 * 1024),
    "/invalid": answer(422, b'{"error": "email is invalid"}'),
    "/redirect": answer(302, b"", {"Location": "https://elsewhere.example/login?token=s3cret"}),
    "/busy": answer(503, b"<html>maintenance</html>"),
    "/request_timeout": answer(408, b""),
    "/slow_down": answer(429, b"too many", {"Retry-After": "120"}),
    "/hang": hang(30),
    "/trickle": trickle(0.2),  # 200 and its headers at once, then a byte now and then: past the deadline
    "/early_hints": lambda handler, _received: _early_hints(handler),
    "/not_modified": answer(304, b""),
    "/other_host": answer(301, b"", {"Location": "//other.example/login?token=s3cret"}),
    "/odd_status": answer(799, b"what"),
}


def _early_hints(handler: Handler) -> None:
    """`103 Early Hints`, then the final 200: http.client reads only the 103."""
    handler.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
    handler.wfile.write(b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"late": 1}')


def _route(handler: Handler, received: Received) -> None:
    ROUTES[received.path.split("?")[0]](handler, received)


def _secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def test_each_answer_ends_its_job_as_documented(engine: sa.Engine, store: Store, run_declared: Any) -> None:
    with receiver(_route) as server:
        tables: dict[str, dict[str, Any]] = {path.strip("/"): {"url": server.url(path), "timeout": 1, "backoff": 60}
                                             for path in ROUTES}
        tables["huge"]["result_limit"] = 100_000
        tables["invalid"]["url"] = server.url("/invalid?api_key=s3cret")  # a token in the query is never shown
        ids = {name: enqueue(engine, name, {"image": 7}) for name in tables}

        report = run_declared(tables, concurrency=len(tables))

    done = {name: outcome(store, job_id) for name, job_id in ids.items()}
    assert (report.succeeded, report.retried, report.failed) == (4, 6, 5)
    assert done["json"].result == {"width": 100, "ok": True}
    assert done["empty"].status == "succeeded" and done["empty"].result is None
    assert done["text"].result == "resized"
    assert done["huge"].status == "succeeded" and "[output cut at" in done["huge"].result
    base = f"http://127.0.0.1:{server.port}"
    assert done["invalid"].status == "failed" and done["invalid"].attempts == 1
    assert done["invalid"].last_error == f'Fail: POST {base}/invalid: HTTP 422: {{"error": "email is invalid"}}'
    assert not any("s3cret" in (job.last_error or "") for job in done.values())
    assert done["redirect"].last_error == (f"Fail: POST {base}/redirect: HTTP 302: redirects are not followed "
                                           "(Location: https://elsewhere.example/login); set the task's url to the "
                                           "final address")
    # A 304 is no redirect; a protocol-relative Location names its host; 600-999 is no status to retry.
    assert done["not_modified"].last_error == f"Fail: POST {base}/not_modified: HTTP 304: no body"
    assert done["other_host"].last_error == (f"Fail: POST {base}/other_host: HTTP 301: redirects are not followed "
                                             "(Location: //other.example/login); set the task's url to the final "
                                             "address")
    assert done["odd_status"].last_error == f"Fail: POST {base}/odd_status: HTTP 799: not an HTTP status code " \
                                            "(100-599): what"
    assert done["busy"].last_error == f"Retry: POST {base}/busy: HTTP 503: <html>maintenance</html>"
    assert done["request_timeout"].last_error == f"Retry: POST {base}/request_timeout: HTTP 408: no body"
    assert done["slow_down"].last_error == f"Retry: POST {base}/slow_down: HTTP 429 (Retry-After 120s): too many"
    assert done["hang"].last_error == f"Retry: POST {base}/hang: timed out after 1s (whole request)"
    # A 2xx whose answer did not all come is no result: retried (the endpoint sees the same Idempotency-Key).
    assert done["trickle"].last_error == (f"Retry: POST {base}/trickle: HTTP 200, but the answer was cut off: "
                                          "timed out after 1s (whole request)")
    assert done["early_hints"].last_error == (f"Retry: POST {base}/early_hints: HTTP 103: an interim answer and no "
                                              "final one (answers like 103 Early Hints before the final one are not "
                                              "supported: turn them off for this endpoint)")
    for name in ("busy", "request_timeout", "slow_down", "hang", "trickle", "early_hints"):
        job = done[name]
        assert job.status == "pending" and job.run_at is not None and job.updated_at is not None
        wanted = 120.0 if name == "slow_down" else 60.0  # Retry-After wins over the task's backoff
        assert abs((job.run_at - job.updated_at).total_seconds() - wanted) < 0.01


def test_requests_are_signed_and_carry_the_idempotency_key(engine: sa.Engine, store: Store, run_declared: Any,
                                                           db_url: str) -> None:
    shared, own = _secret(), _secret()
    with receiver(verified(shared)) as default_server, receiver(verified(own)) as own_server:
        tables = {"signed": {"url": default_server.url("/jobs/resize")},
                  "own_secret": {"url": own_server.url("/jobs/report"), "secret": own}}
        signed = enqueue(engine, "signed", {"image": 7, "name": "é"})
        mine = enqueue(engine, "own_secret", {"month": "2026-11"})

        run_declared(tables, callback_secret=[shared])

        [request] = default_server.received
        [own_request] = own_server.received
    assert outcome(store, signed).result == "ok" and outcome(store, mine).result == "ok"  # 400 unless verified
    assert json.loads(request.body) == {"image": 7, "name": "é"}
    assert request.headers["idempotency-key"] == f"job_{signed}"
    assert request.headers["webhook-id"] == f"job_{signed}_attempt_1"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["pending-jobs-task"] == "signed" and request.headers["pending-jobs-attempt"] == "1"
    assert own_request.headers["idempotency-key"] == f"job_{mine}"


def test_a_retry_is_a_new_message_with_the_same_idempotency_key(engine: sa.Engine, store: Store,
                                                                 run_declared: Any) -> None:
    with receiver(sequence(answer(503), answer(200, b'{"done": 1}'))) as server:
        job_id = enqueue(engine, "resize", {"image": 7})
        tables = {"resize": {"url": server.url("/jobs/resize"), "backoff": 0}}

        run_declared(tables)
        with engine.begin() as conn:  # the retry is due at once (backoff 0), but the clock may not have ticked
            conn.execute(sa.text("UPDATE pending_jobs SET run_at = :t"), {"t": dt.datetime(2000, 1, 1)})
        run_declared(tables)

        first, second = server.received
    assert outcome(store, job_id).result == {"done": 1} and outcome(store, job_id).attempts == 2
    assert (first.headers["webhook-id"], second.headers["webhook-id"]) == (f"job_{job_id}_attempt_1",
                                                                           f"job_{job_id}_attempt_2")
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"] == f"job_{job_id}"


def test_connections_are_kept_alive(engine: sa.Engine, store: Store, run_declared: Any) -> None:
    ports: list[int] = []

    def remember_port(handler: Handler, received: Received) -> None:
        ports.append(handler.client_address[1])
        handler.reply(200, b"{}")

    with receiver(remember_port) as server:
        for n in range(40):
            enqueue(engine, "ping", {"n": n})
        report = run_declared({"ping": {"url": server.url("/ping")}}, concurrency=2)

    assert report.succeeded == 40 and len(ports) == 40
    assert len(set(ports)) <= 4  # a pooled connection per worker thread, give or take a race: not one per job


def test_the_tasks_own_host_is_allowed_but_a_callback_to_it_is_still_refused(
        engine: sa.Engine, store: Store, run_declared: Any, tmp_path: Path) -> None:
    from pending_jobs.callbacks import Guard, Refused

    with receiver(answer(200, b"{}")) as server:
        job_id = enqueue(engine, "internal", {})
        run_declared({"internal": {"url": server.url("/internal")}})

    assert outcome(store, job_id).status == "succeeded"
    try:
        Guard([]).check(server.url("/internal"))
    except Refused as refused:
        assert "loopback" in str(refused)
    else:
        raise AssertionError("a producer's callback URL to loopback must stay refused")
