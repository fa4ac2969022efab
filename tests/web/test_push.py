"""The push endpoints over a real uvicorn server on loopback, real databases and a real websockets client:
the state at once, the end after a real run, refusals, the SSE fallback and its CORS, and bounded queries."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import pending_jobs
from pending_jobs.errors import ConfigError
from pending_jobs.models import Completion
from pending_jobs.store import Store
from pending_jobs.web import tokens
from pending_jobs.web.push import PushHub, PushSettings, create_push_app
from tests.conftest import cli

SECRET = "push secret for the tests, 32 b."
APP = "https://app.example.com"
EVIL = "https://evil.example.net"
KEYS = {"id", "status", "result", "error", "finished_at"}

class Server:
    """uvicorn serving an app in a thread of this process, on a free loopback port."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                                         timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()
        assert not self.thread.is_alive()

    @property
    def hub(self) -> PushHub:
        hub: PushHub = self.app.state.push_hub
        return hub

    def ws(self, job_id: int, token: str | None) -> str:
        query = "" if token is None else f"?token={token}"
        return f"ws://127.0.0.1:{self.port}/push/jobs/{job_id}/ws{query}"

    def wait_listening(self) -> None:
        deadline = time.monotonic() + 10
        while not self.hub.listening():
            assert time.monotonic() < deadline, "LISTEN never in place"
            time.sleep(0.02)


@pytest.fixture
def serve(store: Store, engine: sa.Engine) -> Iterator[Callable[..., Server]]:
    """`serve(**PushSettings overrides)`: the push app on this test's database, stopped after the test."""
    started: list[Server] = []

    def _serve(**overrides: Any) -> Server:
        settings = PushSettings(**{"secret": SECRET, "allowed_origins": [APP], **overrides})
        server = Server(create_push_app(settings, store)).start()
        started.append(server)
        server.wait_listening()
        return server

    yield _serve
    for server in started:
        server.stop()


def add_job(engine: sa.Engine, task: str = "echo", payload: dict[str, Any] | None = None, **options: Any) -> int:
    with engine.begin() as conn:
        return pending_jobs.enqueue(conn, task, payload or {}, **options)


async def follow(url: str, origin: str | None = APP, timeout: float = 30) -> tuple[list[dict[str, Any]], int]:
    """Every message of one push WebSocket until the server closes it, and the close code."""
    messages: list[dict[str, Any]] = []
    async with connect(url, origin=origin, open_timeout=timeout) as ws:  # type: ignore[arg-type]
        try:
            while True:
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
        except ConnectionClosed:
            pass
        assert ws.close_code is not None
        return messages, ws.close_code


def ws_close_code(url: str, origin: str | None = APP) -> tuple[list[dict[str, Any]], int]:
    return asyncio.run(follow(url, origin))


def sse(server: Server, job_id: int, token: str | None, origin: str | None = APP,
        method: str = "GET") -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Origin": origin} if origin else {}
    conn.request(method, f"/push/jobs/{job_id}/events" + (f"?token={token}" if token else ""), headers=headers)
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def events(body: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            found.append((fields["event"], json.loads(fields["data"])))
    return found


def test_state_at_once_then_the_end_after_a_real_run(serve: Callable[..., Server], engine: sa.Engine,
                                                     db_url: str) -> None:
    server = serve()
    job_id = add_job(engine, "echo", {"n": 1}, callback_url="https://user:pw@hooks.example.com/x")

    async def scenario() -> tuple[list[dict[str, Any]], int]:
        following = asyncio.create_task(follow(server.ws(job_id, tokens.mint(SECRET, job_id))))
        while server.hub.waiting == 0:  # the first state was read
            await asyncio.sleep(0.02)
        done = await asyncio.to_thread(cli, "run", env={"PENDING_JOBS_DATABASE_URL": db_url})
        assert done.returncode == 0, done.stderr
        return await following

    messages, code = asyncio.run(scenario())
    assert code == 1000
    assert [m["status"] for m in messages] == ["pending", "succeeded"]
    assert all(set(m) == KEYS for m in messages)  # never the callback URL, tokens or leases
    assert messages[1]["result"] == {"payload": {"n": 1}, "attempt": 1, "job_id": job_id}
    assert messages[1]["error"] is None and messages[1]["finished_at"].endswith("+00:00")
    assert "hooks.example.com" not in json.dumps(messages)
    assert server.hub.subscribers == 0


def test_a_finished_job_is_sent_at_once_and_closed(serve: Callable[..., Server], engine: sa.Engine,
                                                   run: Any) -> None:
    job_id = add_job(engine, "boom", {"message": "it broke"}, max_attempts=1)
    run()
    server = serve()
    messages, code = ws_close_code(server.ws(job_id, tokens.mint(SECRET, job_id)))
    assert code == 1000 and len(messages) == 1
    assert messages[0]["status"] == "failed" and "it broke" in messages[0]["error"]
    status, headers, body = sse(server, job_id, tokens.mint(SECRET, job_id))
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert events(body) == [("state", messages[0])]


def test_refused_tokens_and_origins(serve: Callable[..., Server], engine: sa.Engine) -> None:
    server = serve()
    job_id = add_job(engine)
    other = add_job(engine)
    good = tokens.mint(SECRET, job_id)
    tampered = good[:-1] + ("0" if good[-1] != "0" else "1")
    refused = {
        "wrong job": tokens.mint(SECRET, other),
        "expired": tokens.mint(SECRET, job_id, ttl=1, now=time.time() - 10),
        "tampered": tampered,
        "other secret": tokens.mint("another secret of 32 bytes......", job_id),
        "malformed": f"v1.{job_id}.abc",
        "missing": None,
    }
    for token in refused.values():
        assert ws_close_code(server.ws(job_id, token)) == ([], 4401)
        status, headers, body = sse(server, job_id, token)
        assert (status, body) == (401, "invalid token\n")  # no detail: which check refused is not told
    assert ws_close_code(server.ws(job_id, good), origin=EVIL) == ([], 4403)
    status, headers, _ = sse(server, job_id, good, origin=EVIL)
    assert status == 403 and "access-control-allow-origin" not in headers
    assert ws_close_code(server.ws(job_id + 1000, tokens.mint(SECRET, job_id + 1000))) == ([], 4404)
    assert server.hub.subscribers == 0


def test_sse_follows_a_job_to_its_end_with_cors_for_allowed_origins_only(
        serve: Callable[..., Server], engine: sa.Engine, store: Store) -> None:
    server = serve()
    job_id = add_job(engine, "echo", {"x": "é"})
    token = tokens.mint(SECRET, job_id)
    got: dict[str, Any] = {}
    reader = threading.Thread(target=lambda: got.update(answer=sse(server, job_id, token)))
    reader.start()
    deadline = time.monotonic() + 10
    while server.hub.waiting == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    claim = store.claim_job(job_id, "test", 60)
    store.finish_many([Completion(claim.token, succeeded=[(job_id, {"done": "é"})])])
    reader.join(timeout=30)
    status, headers, body = got["answer"]
    assert status == 200 and headers["access-control-allow-origin"] == APP and headers["vary"] == "Origin"
    assert [(name, data["status"]) for name, data in events(body)] == [("state", "pending"), ("end", "succeeded")]
    assert events(body)[1][1]["result"] == {"done": "é"}
    # Without an Origin (no browser, or a same-origin GET) the token alone decides, and no CORS header is sent.
    status, headers, _ = sse(server, job_id, token, origin=None)
    assert status == 200 and "access-control-allow-origin" not in headers
    status, headers, _ = sse(server, job_id, token, method="OPTIONS")
    assert status == 204 and headers["access-control-allow-origin"] == APP


def test_many_subscribers_cost_a_bounded_number_of_queries(serve: Callable[..., Server], engine: sa.Engine,
                                                           store: Store) -> None:
    # With NOTIFY (PostgreSQL) the hub reads at notify_poll_interval, a backstop, instead: the same 0.25 s here,
    # or a 2-second window could hold no read at all.
    server = serve(poll_interval=0.25, notify_poll_interval=0.25)
    ids = pending_jobs.enqueue_many(engine, [{"task": "echo", "payload": {"i": i}} for i in range(200)])
    statements: list[str] = []
    counting = threading.Event()

    @sa.event.listens_for(engine, "before_cursor_execute")
    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # The hub's reads (the BEGIN, on SQLite BEGIN IMMEDIATE, of their transactions is not counted).
        if counting.is_set() and statement.startswith("SELECT") and "FROM pending_jobs" in statement:
            statements.append(statement)

    async def scenario() -> list[tuple[list[dict[str, Any]], int]]:
        counting.set()
        followers = [asyncio.create_task(follow(server.ws(i, tokens.mint(SECRET, i)))) for i in ids]
        while server.hub.waiting < len(ids):
            await asyncio.sleep(0.02)
        connected = len(statements)
        await asyncio.sleep(2.0)  # eight intervals of waiting
        waiting = len(statements) - connected
        counting.clear()
        claim = await asyncio.to_thread(store.claim, "default", 200, "test", 60)
        await asyncio.to_thread(store.finish_many, [Completion(claim.token, succeeded=[(i, i) for i in ids])])
        results = await asyncio.gather(*followers)
        assert connected <= 40, connected  # 200 first states, read in batches, not one query each
        assert 1 <= waiting <= 8 + 2, waiting  # at most one query per interval for all 200
        return results

    results = asyncio.run(scenario())
    sa.event.remove(engine, "before_cursor_execute", count)
    assert all(code == 1000 and [m["status"] for m in messages] == ["pending", "succeeded"]
               for messages, code in results)
    assert all(messages[1]["result"] == messages[1]["id"] for messages, _ in results)


def test_subscribers_beyond_the_limit_are_refused(serve: Callable[..., Server], engine: sa.Engine) -> None:
    server = serve(max_subscribers=1)
    job_id = add_job(engine)

    async def scenario() -> int:
        async with connect(server.ws(job_id, tokens.mint(SECRET, job_id)), origin=APP) as first:  # type: ignore[arg-type]
            assert json.loads(await first.recv())["status"] == "pending"
            _, code = await follow(server.ws(job_id, tokens.mint(SECRET, job_id)))
            return code

    assert asyncio.run(scenario()) == 1013
    deadline = time.monotonic() + 10
    while server.hub.subscribers:  # the first one left: room again
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_notify_delivers_the_end_without_waiting_for_a_poll(backend: str, serve: Callable[..., Server],
                                                            engine: sa.Engine, store: Store) -> None:
    if backend != "postgresql":
        pytest.skip("NOTIFY is PostgreSQL's")
    server = serve(poll_interval=60, notify_poll_interval=600)  # only a notification can deliver in time
    assert server.hub.notify
    job_id = add_job(engine)

    async def scenario() -> tuple[list[dict[str, Any]], float]:
        following = asyncio.create_task(follow(server.ws(job_id, tokens.mint(SECRET, job_id))))
        while server.hub.waiting == 0:
            await asyncio.sleep(0.02)
        claim = await asyncio.to_thread(store.claim_job, job_id, "test", 60)
        await asyncio.to_thread(store.finish_many, [Completion(claim.token, failed=[(job_id, "no")])])
        committed = time.monotonic()
        messages, _ = await following
        return messages, time.monotonic() - committed

    messages, took = asyncio.run(scenario())
    assert [m["status"] for m in messages] == ["pending", "failed"] and messages[1]["error"] == "no"
    assert took < 5, took


def test_without_the_trigger_postgresql_polls(backend: str, store: Store, engine: sa.Engine) -> None:
    if backend != "postgresql":
        pytest.skip("the trigger is PostgreSQL's")
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER IF EXISTS pending_jobs_notify_finished ON pending_jobs")
    server = Server(create_push_app(PushSettings(SECRET, [APP]), store)).start()
    try:
        assert not server.hub.notify
        job_id = add_job(engine)
        store.finish_many([Completion(store.claim_job(job_id, "t", 60).token, succeeded=[(job_id, None)])])
        messages, code = ws_close_code(server.ws(job_id, tokens.mint(SECRET, job_id)))
        assert code == 1000 and messages[0]["status"] == "succeeded"
    finally:
        server.stop()


@pytest.mark.parametrize("overrides, message", [
    ({"secret": "short"}, "push secret: must be at least 16 bytes, got 5"),
    ({"allowed_origins": ["*"]}, "push allowed_origins: '*' is not allowed"),
    ({"allowed_origins": ["https://app.example.com/"]},
     "push allowed_origins: 'https://app.example.com/' is not an origin like https://app.example.com"),
    ({"poll_interval": 0}, "push poll_interval: must be a number of seconds from 0.01 to 60.0, got 0"),
    ({"max_subscribers": 0}, "push max_subscribers: must be an integer from 1 to 1000000, got 0"),
])
def test_settings_are_checked(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        PushSettings(**{"secret": SECRET, **overrides})



def test_a_failed_attempt_that_will_be_retried_is_no_end_and_a_cancel_is(
        serve: Callable[..., Server], engine: sa.Engine, store: Store, run: Any) -> None:
    from pending_jobs.store import OpsStore

    server = serve(poll_interval=0.05)
    job_id = add_job(engine, "flaky", {"succeed_on": 2})

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
        async with connect(server.ws(job_id, tokens.mint(SECRET, job_id)), origin=APP) as ws:  # type: ignore[arg-type]
            first = [json.loads(await ws.recv())]
            await asyncio.to_thread(run)  # attempt 1 fails: back to pending, with a backoff
            looked = []
            with contextlib.suppress(TimeoutError):  # ten intervals, each with a look at the job
                looked.append(json.loads(await asyncio.wait_for(ws.recv(), 0.5)))
            assert await asyncio.to_thread(OpsStore(store).cancel, job_id) == "done"
            messages = [*looked, json.loads(await asyncio.wait_for(ws.recv(), 30))]
            with contextlib.suppress(ConnectionClosed):
                await ws.recv()
            assert ws.close_code is not None
            return first, messages, ws.close_code

    first, messages, code = asyncio.run(scenario())
    assert [m["status"] for m in first] == ["pending"]
    assert [m["status"] for m in messages] == ["cancelled"] and messages[0]["error"] == "cancelled by an operator"
    assert code == 1000


def test_a_lost_listen_connection_is_opened_again(backend: str, serve: Callable[..., Server],
                                                  engine: sa.Engine, store: Store) -> None:
    if backend != "postgresql":
        pytest.skip("LISTEN is PostgreSQL's")
    server = serve(poll_interval=60, notify_poll_interval=600)  # only a notification can deliver in time
    with engine.begin() as conn:
        killed = conn.exec_driver_sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query = 'LISTEN pending_jobs_finished'").scalar()
    assert killed == 1
    deadline = time.monotonic() + 10
    while server.hub.listening():  # noticed the cut (within the listener's one-second wait)
        assert time.monotonic() < deadline
        time.sleep(0.02)
    server.wait_listening()
    job_id = add_job(engine)

    async def scenario() -> tuple[list[dict[str, Any]], int]:
        following = asyncio.create_task(follow(server.ws(job_id, tokens.mint(SECRET, job_id))))
        while server.hub.waiting == 0:
            await asyncio.sleep(0.02)
        claim = await asyncio.to_thread(store.claim_job, job_id, "test", 60)
        await asyncio.to_thread(store.finish_many, [Completion(claim.token, succeeded=[(job_id, 1)])])
        return await asyncio.wait_for(following, 10)  # the poll would take 600 s

    messages, code = asyncio.run(scenario())
    assert code == 1000 and [m["status"] for m in messages] == ["pending", "succeeded"]


def test_a_server_shutting_down_closes_open_streams(store: Store, engine: sa.Engine) -> None:
    logged: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = logged.append  # type: ignore[method-assign]
    server = Server(create_push_app(PushSettings(SECRET, [APP]), store)).start()
    logging.getLogger("uvicorn.error").addHandler(handler)  # uvicorn's loggers do not propagate to caplog
    job_id = add_job(engine)
    token = tokens.mint(SECRET, job_id)
    cut: list[BaseException] = []
    bodies: list[str] = []

    def read_sse() -> None:
        try:
            bodies.append(sse(server, job_id, token)[2])
        except http.client.IncompleteRead as error:  # a response cut, not ended, after uvicorn's grace time
            cut.append(error)

    sse_reader = threading.Thread(target=read_sse, daemon=True)

    async def scenario() -> int:
        async with connect(server.ws(job_id, token), origin=APP) as ws:  # type: ignore[arg-type]
            assert json.loads(await ws.recv())["status"] == "pending"
            sse_reader.start()
            while server.hub.waiting < 2:
                await asyncio.sleep(0.02)
            started = time.monotonic()
            await asyncio.to_thread(server.stop)  # with uvicorn's timeout_graceful_shutdown of 5 s
            assert time.monotonic() - started < 15
            with contextlib.suppress(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code is not None
            return ws.close_code

    try:
        assert asyncio.run(scenario()) == 1012  # "service restart": the page may reconnect later
    finally:
        logging.getLogger("uvicorn.error").removeHandler(handler)
    sse_reader.join(timeout=10)
    # The SSE stream ends as a complete response (EventSource reconnects after `retry`), without a traceback.
    assert not sse_reader.is_alive() and cut == [] and [e for e, _ in events(bodies[0])] == ["state"]
    assert [r.getMessage() for r in logged if r.exc_info] == []


def test_the_secret_is_never_in_the_settings_repr() -> None:
    settings = PushSettings(SECRET, [APP])
    assert SECRET not in repr(settings) and settings.allowed_origins == (APP,)


def test_no_query_while_nobody_waits(serve: Callable[..., Server], engine: sa.Engine) -> None:
    serve(poll_interval=0.05)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        time.sleep(1.0)  # twenty intervals
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert statements == []
