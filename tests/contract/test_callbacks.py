"""Callback delivery against real loopback receivers, on every database."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa
from standardwebhooks import Webhook

from pending_jobs import enqueue, registry
from pending_jobs.callbacks import Deliverer, delivery
from pending_jobs.callbacks.guard import Resolver
from pending_jobs.models import AttemptRow, Job, RunReport
from pending_jobs.run import run_once
from pending_jobs.store import CallbackStore, Store
from tests.conftest import cli, free_port, scalar, settings_for
from tests.receivers import answer, hang, huge, receiver, sequence, trickle, verified

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET_B = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24="


def deliver(store: Store, db_url: str, resolver: Resolver | None = None, clock: Any = time.time,
            **overrides: Any) -> RunReport:
    """One in-process run with callbacks on: loopback allowed, signed, retries due at once."""
    overrides.setdefault("callback_allow", ["127.0.0.1"])
    overrides.setdefault("callback_secret", [SECRET])
    overrides.setdefault("callback_schedule", [0.0, 0.0, 0.0])
    overrides.setdefault("callback_timeout", 3.0)
    settings = settings_for(db_url, **overrides)
    deliverer = Deliverer(CallbackStore(store), settings, resolver=resolver, clock=clock)
    return run_once(store, registry.load(settings.tasks), settings, deliverer=deliverer)


def job(store: Store, job_id: int) -> Job:
    found = store.get(job_id)
    assert found is not None
    return found


def attempts(store: Store, job_id: int) -> list[AttemptRow]:
    return CallbackStore(store).attempts(job_id)


def test_a_failed_jobs_callback_says_the_short_reason_and_keeps_the_rest_on_the_row(store: Store,
                                                                                   db_url: str) -> None:
    # What a driver's error looks like: the first line says what went wrong, the next ones carry the SQL
    # and the values bound to it (a user's e-mail address), and a traceback follows.
    message = ("IntegrityError: (1062, \"Duplicate entry 'alice@example.com' for key 'uq_users_email'\")\n"
               "[SQL: INSERT INTO users (email) VALUES (%(email)s)]\n[parameters: {'email': 'alice@example.com'}]")
    with receiver(answer(200)) as server:
        failed = enqueue(store.engine, "boom", {"message": message}, callback_url=server.url(), max_attempts=1)
        deliver(store, db_url)
        [received] = server.received
    sent = json.loads(received.body)["data"]["error"]
    assert sent.startswith("RuntimeError: IntegrityError: (1062") and "\n" not in sent
    assert "[SQL:" not in sent and "parameters" not in sent and "Traceback" not in sent
    kept = job(store, failed).last_error or ""
    assert "[parameters: {'email': 'alice@example.com'}]" in kept and "Traceback" in kept  # for operators


# -- acceptance 1: signatures ----------------------------------------------------------------------


def test_every_callback_verifies_with_the_reference_receiver(store: Store, db_url: str) -> None:
    with receiver(verified(SECRET)) as server:
        ok = enqueue(store.engine, "echo", {"n": 1}, callback_url=server.url())
        bad = enqueue(store.engine, "fail_now", {}, callback_url=server.url("/hook?token=abc"))
        report = deliver(store, db_url)
        assert (report.callbacks_delivered, report.callbacks_failed) == (2, 0)
        bodies = {json.loads(r.body)["data"]["id"]: r for r in server.received}
    assert set(bodies) == {ok, bad}
    first = json.loads(bodies[ok].body)
    assert first["type"] == "job.succeeded" and first["data"]["status"] == "succeeded"
    assert first["data"]["result"] == {"payload": {"n": 1}, "attempt": 1, "job_id": ok}
    assert first["data"]["task"] == "echo" and first["data"]["queue"] == "default"
    assert first["data"]["attempts"] == 1 and first["data"]["finished_at"] and first["timestamp"]
    second = json.loads(bodies[bad].body)
    assert second["type"] == "job.failed" and second["data"]["error"] == job(store, bad).last_error
    headers = bodies[ok].headers
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("pending-jobs/")
    for job_id in (ok, bad):
        row = job(store, job_id)
        assert row.callback_status == "delivered" and row.callback_attempts == 1
        assert [a.status_code for a in attempts(store, job_id)] == [200]
    assert bodies[bad].path == "/hook?token=abc"
    assert attempts(store, bad)[0].url.endswith("/hook")  # the query string is never stored


def test_webhook_id_is_stable_and_timestamp_changes_across_retries(store: Store, db_url: str) -> None:
    ticks = iter(range(int(time.time()), int(time.time()) + 100))
    with receiver(sequence(answer(500), answer(503), verified(SECRET_B))) as server:
        job_id = enqueue(store.engine, "noop", callback_url=server.url())
        for _ in range(3):
            deliver(store, db_url, clock=lambda: next(ticks), callback_secret=[SECRET, SECRET_B])
        received = list(server.received)
    assert len(received) == 3
    assert len({r.headers["webhook-id"] for r in received}) == 1
    assert len({r.headers["webhook-timestamp"] for r in received}) == 3
    for request in received:  # both signatures of every attempt verify, each with its own secret
        assert len(request.headers["webhook-signature"].split(" ")) == 2
        for secret in (SECRET, SECRET_B):
            Webhook(secret).verify(request.body, request.headers)
    rows = attempts(store, job_id)
    assert [(a.attempt, a.status_code) for a in rows] == [(1, 500), (2, 503), (3, 200)]
    assert {a.webhook_id for a in rows} == {received[0].headers["webhook-id"]}
    assert job(store, job_id).callback_status == "delivered"


# -- acceptance 2: each rule, job status untouched -----------------------------------------------


def test_receiver_that_hangs_is_timed_out_and_retried(store: Store, db_url: str) -> None:
    with receiver(hang()) as server:
        job_id = enqueue(store.engine, "noop", callback_url=server.url())
        report = deliver(store, db_url, callback_timeout=1.0, callback_schedule=[600.0])
        assert len(server.received) == 1
    row = job(store, job_id)
    assert report.callbacks_failed == 0  # to be retried: not failed (for good) yet
    assert row.status == "succeeded" and row.callback_status == "pending"
    assert "timed out" in (row.callback_last_error or "")
    assert attempts(store, job_id)[0].status_code is None


def test_whole_request_deadline_holds_against_a_trickling_body(store: Store, db_url: str) -> None:
    with receiver(trickle()) as server:
        job_id = enqueue(store.engine, "noop", callback_url=server.url())
        deliver(store, db_url, callback_timeout=1.0)
        assert len(server.received) == 1
    (attempt,) = attempts(store, job_id)
    assert attempt.status_code == 200 and "whole request" in (attempt.error or "")
    assert job(store, job_id).status == "succeeded"


def test_a_callback_queued_longer_than_its_lease_allows_is_released_unsent(
    store: Store, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one sender and one round queued, the second callback may start at most one timeout after
    the claim; the first one hangs for the whole timeout, so the second is handed back, not sent late."""
    monkeypatch.setattr(delivery, "QUEUED_ROUNDS", 1)
    with receiver(hang(5.0)) as server:
        first = enqueue(store.engine, "noop", callback_url=server.url("/first"))
        second = enqueue(store.engine, "noop", callback_url=server.url("/second"))
        deliver(store, db_url, callback_timeout=1.0, callback_concurrency=1, callback_schedule=[600.0])
        assert [r.path for r in server.received] == ["/first"]
    assert "timed out" in (attempts(store, first)[0].error or "")
    assert attempts(store, second) == []
    row = job(store, second)
    assert row.callback_status == "pending" and row.callback_attempts == 0


def test_only_20kb_of_a_10mb_body_is_read(store: Store, db_url: str) -> None:
    with receiver(huge()) as server:
        job_id = enqueue(store.engine, "noop", callback_url=server.url())
        deliver(store, db_url)
        for _ in range(100):  # the server notices the hang-up on its next write
            if server.write_failed:
                break
            time.sleep(0.05)
        assert server.write_failed and server.sent_bytes < 10 * 1024 * 1024
    row = job(store, job_id)
    assert row.status == "succeeded" and row.callback_status == "delivered"
    excerpt = attempts(store, job_id)[0].response_excerpt or ""
    assert 0 < len(excerpt) <= 1024


def test_redirect_is_not_followed(store: Store, db_url: str) -> None:
    with receiver(sequence(answer(302, headers={"Location": "/elsewhere"}), answer(200))) as server:
        job_id = enqueue(store.engine, "noop", callback_url=server.url())
        deliver(store, db_url, callback_schedule=[600.0])
        paths = [r.path for r in server.received]
    assert paths == ["/hook"]
    row = job(store, job_id)
    assert row.status == "succeeded" and row.callback_status == "pending"
    assert "redirects are not followed" in (row.callback_last_error or "")
    assert attempts(store, job_id)[0].status_code == 302


def test_410_fails_at_once(store: Store, db_url: str) -> None:
    with receiver(answer(410)) as server:
        job_id = enqueue(store.engine, "fail_now", callback_url=server.url())
        deliver(store, db_url)
        deliver(store, db_url)  # nothing left to send
        assert len(server.received) == 1
    row = job(store, job_id)
    assert row.callback_status == "failed" and row.callback_attempts == 1 and "410" in (row.callback_last_error or "")
    assert row.status == "failed" and row.last_error == "Fail: the input can never work"


def test_429_and_503_honour_retry_after(store: Store, db_url: str) -> None:
    with receiver(sequence(answer(429, headers={"Retry-After": "0"}), answer(503, headers={"Retry-After": "120"}),
                           answer(200))) as server:
        job_id = enqueue(store.engine, "noop", callback_url=server.url())
        deliver(store, db_url, callback_schedule=[3600.0, 3600.0])  # Retry-After 0: due again in a second
        soon = job(store, job_id).callback_next_at - attempts(store, job_id)[-1].attempted_at  # type: ignore[operator]
        assert dt.timedelta(seconds=0.9) < soon < dt.timedelta(seconds=5)  # not at once: 5 attempts in 10 ms
        time.sleep(1.2)
        deliver(store, db_url, callback_schedule=[3600.0, 3600.0])
        assert len(server.received) == 2
    row = job(store, job_id)
    assert row.status == "succeeded" and row.callback_status == "pending" and row.callback_next_at
    asked = row.callback_next_at - attempts(store, job_id)[-1].attempted_at  # type: ignore[operator]
    assert dt.timedelta(seconds=60) < asked < dt.timedelta(seconds=600)  # 120 s asked, not the 3600 s schedule


def test_repeated_500s_are_retried_on_schedule_until_failed(store: Store, db_url: str) -> None:
    with receiver(answer(500, b"internal trouble")) as server:
        job_id = enqueue(store.engine, "noop", callback_url=server.url())
        states = []
        for _ in range(4):
            deliver(store, db_url, callback_schedule=[0.0, 0.0])
            states.append(job(store, job_id).callback_status)
        assert len(server.received) == 3
    assert states == ["pending", "pending", "failed", "failed"]
    row = job(store, job_id)
    assert row.status == "succeeded" and "giving up" in (row.callback_last_error or "")
    rows = attempts(store, job_id)
    assert [(a.attempt, a.status_code) for a in rows] == [(1, 500), (2, 500), (3, 500)]
    assert rows[0].response_excerpt == "internal trouble" and all(a.duration_ms >= 0 for a in rows)


def test_refused_url_fails_without_a_request(store: Store, db_url: str) -> None:
    with receiver() as server:
        job_id = enqueue(store.engine, "noop", callback_url=server.url())
        deliver(store, db_url, callback_allow=[])
        assert server.received == []
    row = job(store, job_id)
    assert row.status == "succeeded" and row.callback_status == "failed"
    assert "loopback" in (row.callback_last_error or "") and "PENDING_JOBS_CALLBACK_ALLOW" in (row.callback_last_error
                                                                                                or "")


def test_connection_goes_to_the_checked_address_not_a_second_lookup(store: Store, db_url: str) -> None:
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"] if len(calls) == 1 else ["169.254.169.254"]

    with receiver() as server:
        job_id = enqueue(store.engine, "noop", callback_url=f"http://hooks.test:{server.port}/hook")
        deliver(store, db_url, resolver=resolver)
        assert [r.headers["host"] for r in server.received] == [f"hooks.test:{server.port}"]
    assert calls == ["hooks.test"]
    assert job(store, job_id).callback_status == "delivered"


def test_circuit_breaker_holds_back_a_failing_hosts_remaining_callbacks(store: Store, db_url: str) -> None:
    with receiver(answer(500)) as server:
        ids = [enqueue(store.engine, "noop", callback_url=server.url()) for _ in range(8)]
        deliver(store, db_url, callback_concurrency=1, callback_schedule=[3600.0])
        assert len(server.received) == 5
    rows = [job(store, i) for i in ids]
    assert sorted(r.callback_attempts for r in rows) == [0, 0, 0, 1, 1, 1, 1, 1]
    assert all(r.callback_status == "pending" and r.callback_next_at is not None for r in rows)


def test_logs_never_show_secret_signature_query_or_userinfo(store: Store, db_url: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with receiver(answer(410)) as server:
        url = server.url().replace("http://", "http://user:hunter2@") + "?token=TOPSECRET"
        job_id = enqueue(store.engine, "noop", callback_url=url)
        deliver(store, db_url)
        signature = server.received[0].headers["webhook-signature"]
    assert caplog.text and f"job {job_id}" in caplog.text
    for secret in ("TOPSECRET", "hunter2", SECRET, SECRET.removeprefix("whsec_"), signature.split(",", 1)[1]):
        assert secret not in caplog.text
    assert "TOPSECRET" not in attempts(store, job_id)[0].url


# -- acceptance 3: no lock held while a request is in flight ---------------------------------------


@pytest.mark.parametrize("backend", ["mysql", "postgresql"], indirect=True)
def test_job_row_can_be_locked_nowait_while_receiver_hangs(store: Store, db_url: str, engine: sa.Engine) -> None:
    with receiver(hang()) as server:
        job_id = enqueue(store.engine, "noop", callback_url=server.url())
        worker = threading.Thread(target=deliver, args=(store, db_url), kwargs={"callback_timeout": 20.0})
        worker.start()
        for _ in range(400):
            if server.received:
                break
            time.sleep(0.05)
        assert len(server.received) == 1  # the request is in flight now
        with engine.begin() as conn:
            locked = conn.execute(sa.text("SELECT id FROM pending_jobs WHERE id = :id FOR UPDATE NOWAIT"),
                                  {"id": job_id}).scalar()
            conn.execute(sa.text("UPDATE pending_jobs SET priority = 7 WHERE id = :id"), {"id": job_id})
        assert locked == job_id
        server.stopping.set()  # let the receiver give up; the attempt ends as a failure
        worker.join(timeout=60)
        assert not worker.is_alive()
    row = job(store, job_id)
    assert row.priority == 7 and row.status == "succeeded" and row.callback_status == "pending"


# -- acceptance 6: a receiver that was down ---------------------------------------------------------


def test_callback_of_a_job_finished_while_receiver_was_down_is_delivered_later(store: Store, db_url: str) -> None:
    port = free_port()
    job_id = enqueue(store.engine, "noop", callback_url=f"http://127.0.0.1:{port}/hook")
    deliver(store, db_url)
    row = job(store, job_id)
    assert row.status == "succeeded" and row.callback_status == "pending" and row.callback_last_error
    with receiver(verified(SECRET), port=port) as server:
        report = deliver(store, db_url)  # no jobs to run: the run still delivers
        assert len(server.received) == 1
    assert report.claimed == 0 and report.callbacks_delivered == 1
    assert job(store, job_id).callback_status == "delivered"


def test_a_failed_callback_set_pending_again_by_hand_is_delivered(store: Store, db_url: str) -> None:
    # A failed callback has no next time; an operator's plain `UPDATE … SET callback_status = 'pending'`
    # kept it so, and a claim takes only `callback_next_at <= now`: it stayed pending for ever.
    with receiver(sequence(answer(410), answer(200))) as server:
        job_id = enqueue(store.engine, "noop", callback_url=server.url("/hook"))
        deliver(store, db_url)
        assert job(store, job_id).callback_status == "failed" and job(store, job_id).callback_next_at is None
        with store.engine.begin() as conn:
            conn.execute(sa.text("UPDATE pending_jobs SET callback_status = 'pending' WHERE id = :id"), {"id": job_id})
        report = deliver(store, db_url)
        assert len(server.received) == 2 and report.callbacks_delivered == 1
    assert job(store, job_id).callback_status == "delivered"


# -- the command line ---------------------------------------------------------------------------------


def test_cli_run_delivers_and_warns_when_unsigned(store: Store, db_url: str) -> None:
    with receiver() as server:
        job_id = enqueue(store.engine, "noop", callback_url=server.url())
        env = {"PENDING_JOBS_DATABASE_URL": db_url, "PENDING_JOBS_CALLBACK_ALLOW": "127.0.0.1"}
        done = cli("run", "-v", env=env)
        assert done.returncode == 0, done.stderr
        assert "unsigned" in done.stderr and "callbacks delivered 1" in done.stdout
        assert len(server.received) == 1 and "webhook-signature" not in server.received[0].headers
    assert scalar(store.engine, "SELECT callback_status FROM pending_jobs WHERE id = :id", id=job_id) == "delivered"


def test_cli_callbacks_list_shows_a_callback_being_sent_as_sending_not_due_at_its_lease(store: Store,
                                                                                       db_url: str) -> None:
    # A runner's claim pushes callback_next_at to its lease's end (195 s by default): listed as "next at"
    # that time, a callback on its way looked like one waiting three minutes for a retry.
    env = {"PENDING_JOBS_DATABASE_URL": db_url}
    held, expired, waiting = (enqueue(store.engine, "noop", callback_url=f"http://127.0.0.1:9/{n}") for n in range(3))
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET status = 'succeeded', finished_at = created_at, "
                             "callback_status = 'pending', callback_next_at = created_at"))
    callbacks = CallbackStore(store)
    assert {c.job_id for c in callbacks.claim(2, 600.0)} == {held, expired}
    with store.engine.begin() as conn:  # the second runner died: its lease ran out a minute ago
        conn.execute(sa.text("UPDATE pending_jobs SET callback_next_at = :then WHERE id = :id"),
                     {"then": dt.datetime(2020, 1, 1), "id": expired})

    document = {d["job_id"]: d for d in json.loads(cli("callbacks", "list", "--json", env=env).stdout)}
    assert [document[i]["sending"] for i in (held, expired, waiting)] == [True, False, False]
    assert {document[i]["callback_status"] for i in (held, expired, waiting)} == {"pending"}
    table = {int(line.split()[0]): line.split() for line in cli("callbacks", "list", env=env).stdout.splitlines()
             if line.split() and line.split()[0].isdigit()}
    assert table[held][3] == "sending" and "sending" not in table[expired] + table[waiting]
    assert table[expired][3] == table[waiting][3] == "pending"


def test_cli_callbacks_list_and_retry(store: Store, db_url: str) -> None:
    env = {"PENDING_JOBS_DATABASE_URL": db_url}
    with receiver(sequence(answer(410), answer(200))) as server:
        job_id = enqueue(store.engine, "noop", callback_url=server.url("/hook?token=TOPSECRET"))
        other = enqueue(store.engine, "noop")
        deliver(store, db_url)
        listed = cli("callbacks", "list", "--failed", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        document = json.loads(listed.stdout)
        assert [(d["job_id"], d["callback_status"]) for d in document] == [(job_id, "failed")]
        assert "TOPSECRET" not in listed.stdout
        table = cli("callbacks", "list", env=env)
        assert table.returncode == 0 and "410" in table.stdout and "TOPSECRET" not in table.stdout
        retried = cli("callbacks", "retry", str(job_id), env=env)
        assert retried.returncode == 0, retried.stderr
        assert retried.stdout == f"callback of job {job_id} is due now: the next run sends it\n"
        assert job(store, job_id).callback_status == "pending"
        for job_id_, state in ((other, "has no callback_url"), (2**40, "does not exist")):
            refused = cli("callbacks", "retry", str(job_id_), env=env)
            assert (refused.returncode, refused.stdout) == (1, ""), refused.stderr
            assert f"job {job_id_} {state}: only a finished job with a callback_url has one to send" in refused.stderr
        deliver(store, db_url)
        assert len(server.received) == 2
    assert job(store, job_id).callback_status == "delivered"
