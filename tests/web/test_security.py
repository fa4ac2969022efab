"""Console security: authentication beyond loopback, CSRF, read-only, escaping, headers, no secrets shown."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from typing import Any

import pytest
import sqlalchemy as sa

import pending_jobs
from pending_jobs import config
from pending_jobs.store import Store
from pending_jobs.web.security import refusal
from tests.conftest import cli, scalar

from .conftest import LOCAL, csrf_of

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
REMOTE = ("203.0.113.7", 40000)
PAGES = ["/", "/jobs", "/runs", "/audit", "/api/overview", "/api/jobs", "/metrics", "/events?once=1"]


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_without_auth_only_loopback_clients_are_served(console: Any) -> None:
    assert console(LOCAL).get("/").status_code == 200
    remote = console(REMOTE)
    for path in PAGES:
        assert remote.get(path).status_code == 401, path
    assert remote.post("/actions/retry", data={"job_id": "1"}).status_code == 401


def test_without_auth_only_a_loopback_name_is_served(console: Any, engine: sa.Engine) -> None:
    # DNS rebinding: a page of attacker.example, its name re-pointed at 127.0.0.1, reaches the console
    # from a loopback client; only the Host it asks for tells it apart.
    job = _failed_job(engine)
    client = console()
    for host in ("localhost:8080", "127.0.0.1", "[::1]:8080", "localhost"):
        assert client.get("/", headers={"Host": host}).status_code == 200, host
    rebound = {"Host": "attacker.example:8080"}
    for path in PAGES:
        answer = client.get(path, headers=rebound)
        assert answer.status_code == 403, path
        assert answer.text.startswith("refused: without authentication the console answers only as localhost")
    token = csrf_of(client.get("/").text)
    posted = client.post("/actions/retry", data={"job_id": str(job), "csrf": token}, headers=rebound)
    assert posted.status_code == 403
    assert scalar(engine, "SELECT status FROM pending_jobs WHERE id = :id", id=job) == "failed"
    # With authentication the name is not what protects it: a rebound page has no token to send.
    assert console(LOCAL, token="t0ken").get("/", headers={**rebound, "Authorization": "Bearer t0ken"}
                                             ).status_code == 200


def test_token_and_basic_auth(console: Any) -> None:
    with_token = console(REMOTE, token="s3cret-token")
    assert with_token.get("/").status_code == 401
    assert with_token.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert with_token.get("/", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    assert with_token.get("/", headers={"Authorization": "bearer s3cret-token"}).status_code == 200  # any case
    # configured auth applies on loopback too
    assert console(LOCAL, token="s3cret-token").get("/api/jobs").status_code == 401

    basic = console(REMOTE, basic_user="alice", basic_password="pw")
    refused = basic.get("/")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    assert basic.get("/", headers=_basic("alice", "nope")).status_code == 401
    assert basic.get("/", headers=_basic("bob", "pw")).status_code == 401
    lower = basic.get("/", headers={"Authorization": _basic("alice", "pw")["Authorization"].replace("Basic", "basic")})
    assert lower.status_code == 200
    page = basic.get("/", headers=_basic("alice", "pw"))
    assert page.status_code == 200 and "alice@203.0.113.7" in page.text


def test_refuses_to_listen_beyond_loopback_without_auth(db_url: str) -> None:
    web = config.load_web({}, environ={})
    assert refusal(web) is None
    assert refusal(config.load_web({"host": "::1"}, environ={})) is None
    assert "refusing to listen on 0.0.0.0" in str(refusal(config.load_web({"host": "0.0.0.0"}, environ={})))
    assert refusal(config.load_web({"host": "0.0.0.0"}, environ={"PENDING_JOBS_WEB_TOKEN": "t"})) is None
    result = cli("web", "--host", "0.0.0.0", "--port", "1", env={"PENDING_JOBS_DATABASE_URL": db_url})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "refusing to listen on 0.0.0.0" in result.stderr


def test_csrf_is_required_for_form_and_api_actions(console: Any, store: Store, engine: sa.Engine) -> None:
    job = _failed_job(engine)
    client = console()
    token = csrf_of(client.get(f"/jobs/{job}").text)
    assert client.post("/actions/retry", data={"job_id": str(job)}).status_code == 403
    assert client.post("/actions/retry", data={"job_id": str(job), "csrf": "0" * 64}).status_code == 403
    other = console()  # another browser: its cookie does not match this token
    other.get("/")
    assert other.post("/actions/retry", data={"job_id": str(job), "csrf": token}).status_code == 403
    assert scalar(engine, "SELECT status FROM pending_jobs WHERE id = :id", id=job) == "failed"
    assert client.post("/api/actions/retry", json={"job_id": job}).status_code == 403
    done = client.post("/actions/retry", data={"job_id": str(job), "csrf": token, "back": f"/jobs/{job}"})
    assert done.status_code == 303 and done.headers["location"].startswith(f"/jobs/{job}?msg=")
    assert scalar(engine, "SELECT status FROM pending_jobs WHERE id = :id", id=job) == "pending"
    # a bearer-token client (a script) needs no CSRF token: a browser never sends that header by itself
    scripted = console(REMOTE, token="t0ken")
    answer = scripted.post("/api/actions/cancel", json={"job_id": job}, headers={"Authorization": "Bearer t0ken"})
    assert answer.status_code == 200 and answer.json()["changed"] is True


def test_only_a_message_the_console_wrote_is_shown(console: Any, engine: sa.Engine) -> None:
    job = _failed_job(engine)
    client = console()
    token = csrf_of(client.get("/").text)
    done = client.post("/actions/retry", data={"job_id": str(job), "csrf": token, "back": f"/jobs/{job}"})
    shown = client.get(done.headers["location"])
    assert f'<p class="message" id="message">job {job} is pending again</p>' in shown.text
    for forged in ("/?msg=Session+expired.+Log+in+at+https://evil.example", f"/?msg=x&sig={'0' * 64}",
                   "/?msg=Session+expired&sig=" + done.headers["location"].split("sig=")[1]):
        assert 'id="message"' not in client.get(forged).text, forged


def test_redirect_after_an_action_stays_on_the_console(console: Any, engine: sa.Engine) -> None:
    job = _failed_job(engine)
    client = console()
    token = csrf_of(client.get("/").text)
    done = client.post("/actions/retry", data={"job_id": str(job), "csrf": token, "back": "//evil.example/x"})
    assert done.status_code == 303 and done.headers["location"].startswith("/?msg=")


def test_read_only_hides_buttons_and_refuses_posts(console: Any, engine: sa.Engine) -> None:
    job = _failed_job(engine)
    client = console(read_only=True)
    page = client.get(f"/jobs/{job}")
    assert page.status_code == 200 and 'method="post"' not in page.text and "read-only" in page.text
    assert 'method="post"' not in client.get("/").text
    assert client.post("/actions/retry", data={"job_id": str(job)}).status_code == 403
    assert client.post("/api/actions/retry", json={"job_id": job}).status_code == 403
    assert "/api/actions/{action}" not in client.get("/api/openapi.json").json()["paths"]
    assert scalar(engine, "SELECT status FROM pending_jobs WHERE id = :id", id=job) == "failed"


def test_what_producers_wrote_renders_inert(console: Any, engine: sa.Engine) -> None:
    evil = "<script>alert(1)</script>"
    with engine.begin() as conn:
        job = pending_jobs.enqueue(conn, "task" + evil, {"html": evil}, queue="q" + evil[:20])
        conn.execute(sa.text("UPDATE pending_jobs SET status = 'failed', last_error = :e WHERE id = :id"),
                     {"e": "boom " + evil, "id": job})
        conn.execute(sa.text("INSERT INTO pending_job_errors (job_id, attempt, error) VALUES (:id, 1, :e)"),
                     {"e": "first " + evil, "id": job})
    client = console()
    for path in ["/", "/jobs", f"/jobs/{job}", "/jobs?q=%3Cscript%3E", "/events?once=1&view=job&id=" + str(job)]:
        text = client.get(path).text
        assert "<script>alert" not in text, path
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in client.get(f"/jobs/{job}").text


def test_control_and_direction_characters_are_shown_as_escapes(console: Any, engine: sa.Engine) -> None:
    # A right-to-left override (U+202E) reversed what followed it: invoice<RLO>fdp.exe showed as invoiceexe.pdf.
    with engine.begin() as conn:
        job = pending_jobs.enqueue(conn, "ctrl\x1b[31m\u202e", {"file": "invoice\u202efdp.exe"})
        conn.execute(sa.text("UPDATE pending_jobs SET status = 'failed', last_error = :e WHERE id = :id"),
                     {"e": "boom\nsaved as invoice\u202efdp.exe\x07", "id": job})
    client = console()
    for path in ("/jobs", f"/jobs/{job}", f"/events?once=1&view=job&id={job}"):
        text = client.get(path).text
        assert "\u202e" not in text and "\x1b" not in text and "\x07" not in text, path
    page = client.get(f"/jobs/{job}").text
    assert "ctrl\\x1b[31m\\u202e" in page and "saved as invoice\\u202efdp.exe\\x07" in page
    assert "boom\nsaved" in page  # an error's lines are kept
    assert client.get(f"/api/jobs/{job}").json()["task"] == "ctrl\x1b[31m\u202e"  # the API gives the data as stored


def test_security_headers_on_every_answer(console: Any) -> None:
    client = console()
    for response in (client.get("/"), client.get("/api/jobs"), console(REMOTE).get("/"),
                     client.get("/static/console.js")):
        assert response.headers["content-security-policy"].startswith("default-src 'self'")
        assert "unsafe-inline" not in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    cookie = client.get("/").headers.get("set-cookie") or console().get("/").headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "<script>" not in client.get("/").text.replace('<script src="/static/console.js" defer></script>', "")


def test_secrets_are_never_shown(console: Any, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        job = pending_jobs.enqueue(conn, "echo", {}, callback_url="https://user:hunter2@hooks.example/cb?sig=abc123")
        conn.execute(sa.text("UPDATE pending_jobs SET status = 'running', lease_token = :lease, callback_token = :cb "
                             "WHERE id = :id"), {"id": job, "lease": "leasetoken" * 3, "cb": "cbtoken" * 4})
        conn.execute(sa.text(
            "INSERT INTO pending_job_callback_attempts (job_id, attempt, webhook_id, url, duration_ms) "
            "VALUES (:id, 1, 'msg_1', 'https://user:hunter2@hooks.example/cb?sig=abc123', 5)"), {"id": job})
    client = console()
    for path in [f"/jobs/{job}", f"/api/jobs/{job}", "/api/jobs", "/jobs", f"/events?once=1&view=job&id={job}"]:
        text = client.get(path).text
        for secret in ("hunter2", "abc123", "leasetoken", "cbtoken", "user:"):
            assert secret not in text, (path, secret)
    assert client.get(f"/api/jobs/{job}").json()["callback_url"] == "https://hooks.example/cb"


def _failed_job(engine: sa.Engine, **fields: Any) -> int:
    with engine.begin() as conn:
        job = pending_jobs.enqueue(conn, "boom", {}, **fields)
        conn.execute(sa.text("UPDATE pending_jobs SET status = 'failed', attempts = 5, last_error = 'boom', "
                             "finished_at = created_at WHERE id = :id"), {"id": job})
    return job


def test_without_the_web_extra_the_command_says_what_to_install(db_url: str) -> None:
    hidden = ("import sys; sys.modules['starlette'] = None; from pending_jobs.cli import main; "
              "sys.exit(main(['web']))")
    result = subprocess.run([sys.executable, "-c", hidden], capture_output=True, text=True, timeout=60,
                            env={"PATH": os.environ.get("PATH", ""), "PENDING_JOBS_DATABASE_URL": db_url})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "pending-jobs: the console needs the web extra (starlette is missing): pip install './pending-jobs[web]'"]
