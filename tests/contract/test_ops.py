"""Operator commands through the real command line: list, show, retry, cancel, purge, status, run's row."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

import pending_jobs
from pending_jobs.context import JobContext
from pending_jobs.store import OpsStore, Store
from tests.conftest import cli, finish, rows, scalar

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "mysql", "postgresql"], indirect=True)


OLD = "2000-01-01 00:00:00"


def env_for(db_url: str, **extra: str) -> dict[str, str]:
    return {"PENDING_JOBS_DATABASE_URL": db_url, **extra}


def pj_json(db_url: str, *args: str) -> Any:
    result = cli(*args, "--json", env=env_for(db_url))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def make_old(engine: sa.Engine, job_id: int) -> None:
    """Pretend a job was created and finished long ago (2000-01-01, UTC)."""
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET finished_at = :t, created_at = :t WHERE id = :id"),
                     {"t": OLD, "id": job_id})


def test_list_filters_and_json(db_url: str, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        a = pending_jobs.enqueue(conn, "echo", {"n": 1}, queue="mail")
        b = pending_jobs.enqueue(conn, "boom", {}, queue="mail", max_attempts=1,
                                 callback_url="https://hooks.example.com/x?token=secret")
        c = pending_jobs.enqueue(conn, "echo", {"n": 3}, delay=3600)
    assert cli("run", env=env_for(db_url, PENDING_JOBS_CALLBACK_SCHEDULE="3600")).returncode == 0

    everything = pj_json(db_url, "list")
    assert [j["id"] for j in everything] == [c, b, a]
    assert {j["id"]: j["status"] for j in everything} == {a: "succeeded", b: "failed", c: "pending"}
    assert everything[1]["callback_url"] == "https://hooks.example.com/x"  # the query (a token) never shown
    assert [j["id"] for j in pj_json(db_url, "list", "--status", "failed,pending")] == [c, b]
    assert [j["id"] for j in pj_json(db_url, "list", "--queue", "mail", "--task", "echo")] == [a]
    callback = scalar(engine, f"SELECT callback_status FROM pending_jobs WHERE id = {b}")
    assert callback in ("pending", "failed")  # failed when hooks.example.com does not resolve here
    assert [j["id"] for j in pj_json(db_url, "list", "--callback-status", callback)] == [b]
    assert [j["id"] for j in pj_json(db_url, "list", "--callback-status", "none", "--limit", "1")] == [c]
    make_old(engine, a)
    assert [j["id"] for j in pj_json(db_url, "list", "--since", "1d")] == [c, b]

    table = cli("list", "--status", "failed", env=env_for(db_url))
    assert table.returncode == 0 and "RuntimeError: boom" in table.stdout and f"\n{b} " in table.stdout
    bad = cli("list", "--status", "lost", env=env_for(db_url))
    assert bad.returncode == 2 and "unknown status lost" in bad.stderr


def test_show_has_payload_result_error_and_callback_attempts(db_url: str, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        job = pending_jobs.enqueue(conn, "echo", {"name": "John"}, callback_url="https://hooks.example.com/j")
        conn.execute(sa.text(
            "INSERT INTO pending_job_callback_attempts (job_id, attempt, webhook_id, url, status_code, error, "
            "duration_ms) VALUES (:id, 1, 'msg_1', 'https://hooks.example.com/j', 503, 'HTTP 503', 12)"), {"id": job})
    assert cli("run", env=env_for(db_url, PENDING_JOBS_CALLBACK_SCHEDULE="3600")).returncode == 0

    shown = pj_json(db_url, "show", str(job))
    assert shown["status"] == "succeeded" and shown["payload"] == {"name": "John"}
    assert shown["result"]["payload"] == {"name": "John"}
    attempts = shown["callback_attempts_log"]
    assert attempts[0]["status_code"] == 503 and attempts[0]["error"] == "HTTP 503"
    assert len(attempts) == 2  # the run tried the callback once more (hooks.example.com does not answer)

    text = cli("show", str(job), env=env_for(db_url))
    assert text.returncode == 0 and '"name": "John"' in text.stdout and "callback attempts:" in text.stdout
    missing = cli("show", "999", env=env_for(db_url))
    assert missing.returncode == 1 and "job 999 does not exist" in missing.stderr


def test_retry_one_job_and_failed_jobs_by_filter(db_url: str, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        ok = pending_jobs.enqueue(conn, "echo", {})
        f1 = pending_jobs.enqueue(conn, "boom", {}, max_attempts=1, queue="q1")
        f2 = pending_jobs.enqueue(conn, "fail_now", {}, queue="q2")
        f3 = pending_jobs.enqueue(conn, "fail_now", {}, queue="q2")
        waiting = pending_jobs.enqueue(conn, "echo", {}, delay=3600)
    assert cli("run", env=env_for(db_url)).returncode == 0

    one = cli("retry", str(ok), env=env_for(db_url))
    assert one.returncode == 0 and f"job {ok} is pending again" in one.stdout
    assert rows(engine, f"SELECT status, attempts, result, finished_at FROM pending_jobs WHERE id = {ok}") == [
        ("pending", 0, None, None)]
    refused = cli("retry", str(waiting), env=env_for(db_url))
    assert refused.returncode == 1 and "is pending" in refused.stderr

    by_filter = cli("retry", "--failed", "--queue", "q2", "--task", "fail_now", env=env_for(db_url))
    assert by_filter.returncode == 0 and "2 failed job(s) pending again" in by_filter.stdout
    statuses = dict(rows(engine, "SELECT id, status FROM pending_jobs"))
    assert (statuses[f1], statuses[f2], statuses[f3]) == ("failed", "pending", "pending")
    assert cli("retry", "--failed", env=env_for(db_url)).stdout.startswith("1 failed")
    assert scalar(engine, "SELECT SUM(attempts) FROM pending_jobs") == 0
    mixed = cli("retry", str(ok), "--queue", "q1", env=env_for(db_url))
    assert mixed.returncode == 2


def test_cancel_pending_and_running_jobs(db_url: str, engine: sa.Engine, store: Store) -> None:
    with engine.begin() as conn:
        pending = pending_jobs.enqueue(conn, "echo", {}, callback_url="https://hooks.example.com/c")
        running = pending_jobs.enqueue(conn, "echo", {}, queue="busy")
    claim = store.claim("busy", 1, "test-runner", 300)
    ctx = JobContext(claim.jobs[0], store.handler_transaction(claim.jobs[0]), None, logging.getLogger("test"))
    assert ctx.cancel_requested() is False

    first = cli("cancel", str(pending), env=env_for(db_url))
    assert first.returncode == 0 and "cancelled" in first.stdout
    assert rows(engine, f"SELECT status, callback_status FROM pending_jobs WHERE id = {pending}") == [
        ("cancelled", "pending")]  # the producer hears about it through its callback
    second = cli("cancel", str(running), env=env_for(db_url))
    assert second.returncode == 0 and "marked to be cancelled" in second.stdout
    assert ctx.cancel_requested() is True
    assert scalar(engine, f"SELECT status FROM pending_jobs WHERE id = {running}") == "running"

    # The handler gives up (an exception: a retry); the next run makes the job cancelled, not pending.
    finish(store, claim.token, retried=[(running, 0.0, "stopped: cancel requested")])
    assert cli("run", env=env_for(db_url)).returncode == 0
    assert scalar(engine, f"SELECT status FROM pending_jobs WHERE id = {running}") == "cancelled"

    again = cli("cancel", str(pending), env=env_for(db_url))
    assert again.returncode == 1 and "already cancelled" in again.stderr
    assert cli("cancel", "999", env=env_for(db_url)).returncode == 1


def test_purge_older_than_by_status(db_url: str, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        done = pending_jobs.enqueue(conn, "echo", {})
        failed = pending_jobs.enqueue(conn, "fail_now", {})
        recent = pending_jobs.enqueue(conn, "echo", {"n": 2})
        waiting = pending_jobs.enqueue(conn, "echo", {}, delay=3600)
    assert cli("run", env=env_for(db_url)).returncode == 0
    for job in (done, failed, waiting):
        make_old(engine, job)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO pending_job_callback_attempts (job_id, attempt, webhook_id, url, "
                             "duration_ms) VALUES (:id, 1, 'm', 'https://x.example', 1)"), {"id": done})

    purged = cli("purge", "--older-than", "7d", env=env_for(db_url))
    assert purged.returncode == 0 and "1 job(s) deleted" in purged.stdout
    assert scalar(engine, "SELECT COUNT(*) FROM pending_job_callback_attempts") == 0
    with_failed = cli("purge", "--older-than", "7d", "--status", "failed,succeeded", env=env_for(db_url))
    assert "1 job(s) deleted" in with_failed.stdout
    assert sorted(r[0] for r in rows(engine, "SELECT id FROM pending_jobs")) == [recent, waiting]
    refused = cli("purge", "--older-than", "1d", "--status", "pending", env=env_for(db_url))
    assert refused.returncode == 2 and "finished statuses only (cancelled, failed, succeeded)" in refused.stderr


def test_run_records_its_row_and_applies_retention(db_url: str, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        old = pending_jobs.enqueue(conn, "echo", {})
        old_failed = pending_jobs.enqueue(conn, "fail_now", {})
    assert cli("run", env=env_for(db_url)).returncode == 0
    make_old(engine, old)
    make_old(engine, old_failed)
    with engine.begin() as conn:
        pending_jobs.enqueue(conn, "echo", {})
        pending_jobs.enqueue(conn, "flaky", {"succeed_on": 5})
    assert cli("run", env=env_for(db_url, PENDING_JOBS_RETENTION_FAILED="0")).returncode == 0  # 0: keep forever

    assert [r[0] for r in rows(engine, "SELECT id FROM pending_jobs WHERE id IN (:a, :b)", a=old, b=old_failed)] \
        == [old_failed]
    runs = rows(engine, "SELECT claimed, succeeded, failed, retried, exit_code, finished_at IS NOT NULL, pid "
                        "FROM pending_job_runs ORDER BY id")
    assert [tuple(r[:6]) for r in runs] == [(2, 1, 1, 0, 0, True), (2, 1, 0, 1, 0, True)]
    assert runs[0][6] > 0

    assert cli("run", env=env_for(db_url)).returncode == 0  # failed jobs are kept 30 days by default
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE id = :id", id=old_failed) == 0

    bad = cli("run", "--job", "999", env=env_for(db_url))
    assert bad.returncode == 1
    assert scalar(engine, "SELECT exit_code FROM pending_job_runs ORDER BY id DESC LIMIT 1") == 1


def test_run_job_says_how_its_job_ended_unless_it_succeeded(db_url: str, engine: sa.Engine) -> None:
    """`run --job ID` of a job whose task is unknown ended silently with exit 0, the job pending again."""
    with engine.begin() as conn:
        unknown = pending_jobs.enqueue(conn, "nosuch", {})
        failing = pending_jobs.enqueue(conn, "fail_now", {}, max_attempts=1)
        fine = pending_jobs.enqueue(conn, "echo", {})
    ran = cli("run", "--job", str(unknown), env=env_for(db_url))
    assert ran.returncode == 0
    assert re.search(rf"job {unknown} is pending \(attempt 1 of 5, to be retried\): .*unknown task 'nosuch'",
                     ran.stderr), ran.stderr
    ran = cli("run", "--job", str(failing), env=env_for(db_url))
    assert ran.returncode == 0 and f"job {failing} is failed (attempt 1 of 1): " in ran.stderr, ran.stderr
    ran = cli("run", "--job", str(fine), env=env_for(db_url))
    assert (ran.returncode, ran.stderr) == (0, ""), ran.stderr  # silent on success, as a run is


def test_status_json_counts_match_the_view_and_show_last_run(db_url: str, engine: sa.Engine) -> None:
    never = pj_json(db_url, "status")
    assert never["last_run"] is None and "no run has finished yet" in never["warnings"][0]
    with engine.begin() as conn:
        pending_jobs.enqueue(conn, "echo", {}, queue="a")
        pending_jobs.enqueue(conn, "fail_now", {}, queue="a", callback_url="https://hooks.example.com/s")
        pending_jobs.enqueue(conn, "echo", {}, queue="b", delay=3600)
        pending_jobs.enqueue(conn, "echo", {}, queue="b", delay=3600)
    assert cli("run", env=env_for(db_url, PENDING_JOBS_CALLBACK_SCHEDULE="3600")).returncode == 0

    status = pj_json(db_url, "status")
    view = rows(engine, "SELECT queue, status, jobs FROM pending_jobs_summary ORDER BY queue, status")
    assert [(c["queue"], c["status"], c["jobs"]) for c in status["counts"]] == [tuple(r) for r in view]
    assert [tuple(r) for r in view] == [("a", "failed", 1), ("a", "succeeded", 1), ("b", "pending", 2)]
    by_sql = dict(rows(engine, "SELECT callback_status, COUNT(*) FROM pending_jobs "
                               "WHERE callback_status IS NOT NULL GROUP BY callback_status"))
    assert {k: v for k, v in status["callbacks"].items() if v and k != "due"} == by_sql
    assert sum(by_sql.values()) == 1
    run = status["last_run"]
    assert (run["claimed"], run["succeeded"], run["failed"], run["exit_code"]) == (2, 1, 1, 0)
    assert status["warnings"] == [] and status["last_success_at"] is not None

    with engine.begin() as conn:  # the last run finished an hour ago: cron has stopped
        conn.execute(sa.text("UPDATE pending_job_runs SET started_at = :t, finished_at = :t"),
                     {"t": OLD})
    text = cli("status", env=env_for(db_url))
    assert text.returncode == 0 and "last run: #" in text.stdout and "callbacks: " in text.stdout
    assert "has cron stopped?" in text.stderr


def test_a_stale_warning_under_two_minutes_counts_seconds_not_zero_minutes(db_url: str) -> None:
    # `status --stale-after 30s` a few seconds after the last run said "in the last 0 minutes".
    assert cli("run", env=env_for(db_url)).returncode == 0
    time.sleep(1.5)
    text = cli("status", "--stale-after", "1s", env=env_for(db_url))
    assert text.returncode == 0 and re.search(r"no run finished in the last [1-9]\d* seconds: has cron stopped\?",
                                              text.stderr), text.stderr


def test_a_paused_queue_is_not_claimed_until_resumed(db_url: str, engine: sa.Engine, store: Store) -> None:
    with engine.begin() as conn:
        held = [pending_jobs.enqueue(conn, "echo", {"n": n}, queue="mail") for n in range(3)]
        other = pending_jobs.enqueue(conn, "echo", {}, queue="default")
    paused = cli("pause", "mail", "--reason", "SMTP down", env=env_for(db_url))
    assert paused.returncode == 0 and "paused" in paused.stdout
    assert store.claim("mail", 10, "runner", 60).jobs == []  # the claim itself skips it, whoever runs it

    assert cli("run", env=env_for(db_url)).returncode == 0
    assert [scalar(engine, f"SELECT status FROM pending_jobs WHERE id = {i}") for i in held] == ["pending"] * 3
    assert scalar(engine, f"SELECT status FROM pending_jobs WHERE id = {other}") == "succeeded"
    status = cli("status", env=env_for(db_url))
    assert "queue mail is PAUSED" in status.stdout and "SMTP down" in status.stdout
    assert cli("pause", "mail", env=env_for(db_url)).stdout.strip() == "queue mail was already paused"

    assert cli("resume", "mail", env=env_for(db_url)).returncode == 0
    assert cli("resume", "mail", env=env_for(db_url)).returncode == 1  # not paused any more
    assert cli("run", env=env_for(db_url)).returncode == 0
    assert [scalar(engine, f"SELECT status FROM pending_jobs WHERE id = {i}") for i in held] == ["succeeded"] * 3


def test_a_queue_name_with_edge_whitespace_is_refused(db_url: str, engine: sa.Engine, store: Store) -> None:
    # `pause 'mail '` said "paused" everywhere; it paused mail on MariaDB (PAD SPACE) and nothing elsewhere.
    for command in ("pause", "resume"):
        for name in ("mail ", " mail"):
            refused = cli(command, name, env=env_for(db_url))
            assert refused.returncode == 2, (command, name, refused.stdout)
            assert "a queue name must not start or end with whitespace" in refused.stderr
    assert scalar(engine, "SELECT COUNT(*) FROM pending_job_paused_queues") == 0


def test_two_pauses_at_once_both_end_with_the_queue_paused(backend: str, engine: sa.Engine, store: Store) -> None:
    # Both saw no row and both inserted: the second raised a duplicate key (a traceback, exit 1).
    if backend == "sqlite":
        pytest.skip("SQLite has one writer at a time: the second pause sees the first one's row")
    ops = OpsStore(store)
    answers: list[bool] = []
    with engine.connect() as first:
        first.begin()
        first.execute(sa.text("INSERT INTO pending_job_paused_queues (queue, paused_by) VALUES ('mail', 'first')"))
        second = threading.Thread(target=lambda: answers.append(ops.pause("mail", "second")))
        second.start()  # its check sees no row yet; its INSERT waits on the first one's key
        wait_for_lock_wait(engine, backend)
        first.commit()
    second.join(10)
    assert answers == [True]
    assert [tuple(r) for r in rows(engine, "SELECT queue, paused_by FROM pending_job_paused_queues")] == [
        ("mail", "first")]


def wait_for_lock_wait(engine: sa.Engine, backend: str) -> None:
    """Until a transaction of the test's database waits for a lock (InnoDB refreshes INNODB_TRX at most
    every 0.1 s: polled at 0.25 s)."""
    waiting = ("SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
               if backend == "postgresql" else
               "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'")
    deadline = time.monotonic() + 15
    while not scalar(engine, waiting):
        assert time.monotonic() < deadline, "the second pause never waited for the first one's row"
        time.sleep(0.25)


def test_the_schema_refuses_a_status_no_run_would_pick_up(engine: sa.Engine) -> None:
    for bad in ("RUNNING", "", "done"):
        with pytest.raises(sa.exc.DBAPIError, match=r"ck_pending_jobs_status|CHECK"), engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO pending_jobs (task, payload, status) VALUES ('echo', '{}', :s)"),
                         {"s": bad})


def test_a_purge_never_gives_a_job_id_to_a_later_job(store: Store, engine: sa.Engine) -> None:
    # SQLite numbers a new row max(id) + 1: a purge of every finished job (a quiet site's retention) gave the next
    # job the id of one deleted, and a push token, a console link or an id the application kept named another job.
    ids = [pending_jobs.enqueue(engine, "noop", {}) for _ in range(3)]
    claim = store.claim("default", 10, "t", 60)
    finish(store, claim.token, succeeded=[(job.id, None) for job in claim.jobs])
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET finished_at = '2000-01-01 00:00:00'"))
    purged = OpsStore(store).purge(3600, ["succeeded"])
    assert purged == (2 if store.dialect == "sqlite" else 3)  # SQLite keeps the newest row until a newer one
    assert pending_jobs.enqueue(engine, "noop", {}) > max(ids)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET finished_at = '2000-01-01 00:00:00' WHERE id = :id"),
                     {"id": ids[-1]})
    assert OpsStore(store).purge(3600, ["succeeded"]) == (1 if store.dialect == "sqlite" else 0)
