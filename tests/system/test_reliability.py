"""What an adversarial user found (issue 11), each as the command a person or cron runs: a run ends when
its work is done, a timed-out handler cannot freeze SQLite, bad flags and settings exit 2 naming them,
nothing a producer wrote can drive the terminal, and refused credentials are a configuration error."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue
from tests.conftest import cli, rows, scalar


def env_for(url: str, **extra: str) -> dict[str, str]:
    return {"PENDING_JOBS_DATABASE_URL": url, **extra}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_a_run_ends_when_its_work_is_done_whatever_handlers_leave_behind(db_url: str, engine: sa.Engine) -> None:
    left = enqueue(engine, "leaves_a_thread", {})
    isolated = enqueue(engine, "isolated_ignores_sigterm", {})
    executor = enqueue(engine, "leaves_an_executor_job", {})
    started = time.monotonic()
    done = cli("run", "-v", "--drain", env=env_for(db_url), timeout=60)
    assert time.monotonic() - started < 30
    assert done.returncode == 0, done.stderr
    assert rows(engine, f"SELECT status FROM pending_jobs WHERE id IN ({left}, {isolated}, {executor}) "
                        "ORDER BY id") == [("succeeded",)] * 3
    assert "left-behind" in done.stderr and "left-executor" in done.stderr  # named on the way out
    # The isolated child's print went to the job's log, not to the runner's stdout (which cron mails).
    assert "a line on stdout" not in done.stdout.replace(done.stdout.splitlines()[-1], "")
    assert "output: a line on stdout, for the job's log" in done.stderr


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_run_ends_though_a_handler_left_a_thread_pool_job_running(db_url: str, engine: sa.Engine) -> None:
    # Alone: with no other thread left, nothing else made the run leave without exit hooks, and
    # ThreadPoolExecutor's hook joined its worker for an hour.
    job = enqueue(engine, "leaves_an_executor_job", {})
    started = time.monotonic()
    done = cli("run", "--drain", env=env_for(db_url), timeout=60)
    assert time.monotonic() - started < 30 and done.returncode == 0, done.stderr
    assert scalar(engine, f"SELECT status FROM pending_jobs WHERE id = {job}") == "succeeded"


@pytest.mark.parametrize("backend", ["sqlite", "mysql"], indirect=True)
def test_a_timed_out_handler_holding_its_connection_does_not_freeze_the_run(db_url: str, engine: sa.Engine) -> None:
    hung = enqueue(engine, "holds_connection_then_hangs", {"seconds": 30}, max_attempts=1)
    others = [enqueue(engine, "echo", {"n": n}) for n in range(5)]
    done = cli("run", "--concurrency", "2", env=env_for(db_url), timeout=60)
    assert done.returncode == 0, done.stderr
    assert [scalar(engine, f"SELECT status FROM pending_jobs WHERE id = {i}") for i in others] == ["succeeded"] * 5
    assert scalar(engine, f"SELECT status FROM pending_jobs WHERE id = {hung}") == "failed"
    assert "TimeoutError: handler ran longer than 1.0s" in scalar(
        engine, f"SELECT last_error FROM pending_jobs WHERE id = {hung}")
    assert scalar(engine, f"SELECT COUNT(*) FROM ledger WHERE job_id = {hung}") == 0  # its write rolled back


def run_past_timeouts(db_url: str, engine: sa.Engine, task: str, count: int) -> None:
    """`count` jobs of `task` (each writes a ledger row, then outlives its 1 s timeout inside a statement) among five
    others, drained at concurrency 2: the run ends 0, every timed-out job failed with its timeout and wrote nothing,
    every other job succeeded."""
    timed_out = [enqueue(engine, task, {"seconds": 20}, max_attempts=1) for _ in range(count)]
    for n in range(5):
        enqueue(engine, "echo", {"n": n})
    done = cli("run", "--concurrency", "2", "--drain", env=env_for(db_url), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert rows(engine, "SELECT status, COUNT(*) FROM pending_jobs GROUP BY status ORDER BY status") == [
        ("failed", count), ("succeeded", 5)]
    for job in timed_out:
        assert "TimeoutError: handler ran longer than 1.0s" in scalar(
            engine, f"SELECT last_error FROM pending_jobs WHERE id = {job}")
    assert scalar(engine, "SELECT COUNT(*) FROM ledger") == 0  # every write rolled back


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_handlers_timed_out_inside_sqlite_do_not_crash_the_run(db_url: str, engine: sa.Engine) -> None:
    # The runner closed a timed-out handler's connection from its own thread while the handler's thread was
    # still inside SQLite: the process died (SIGSEGV), its jobs left running until their leases expired.
    run_past_timeouts(db_url, engine, "spins_in_sql", 6)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_a_handler_past_its_timeout_cannot_open_its_connection(db_url: str, engine: sa.Engine, tmp_path: Path) -> None:
    # Timed out before it had opened ctx.connection, nothing was closed for it: opened afterwards, its transaction
    # was watched by nothing (SQLite: it held the one write lock while its statement ran on).
    report = tmp_path / "report"
    late = enqueue(engine, "opens_connection_after_timeout", {"report": str(report)}, max_attempts=1)
    enqueue(engine, "sleep", {"seconds": 4})  # the run outlives the abandoned handler's sleep
    for n in range(2):
        enqueue(engine, "echo", {"n": n})
    done = cli("run", "--drain", "--concurrency", "2", env=env_for(db_url), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert report.read_text() == "TimeoutError: the job ran past its task's timeout: its ctx.connection is closed"
    assert rows(engine, "SELECT status, COUNT(*) FROM pending_jobs GROUP BY status ORDER BY status") == [
        ("failed", 1), ("succeeded", 3)]
    assert "TimeoutError: handler ran longer than 1.0s" in scalar(
        engine, f"SELECT last_error FROM pending_jobs WHERE id = {late}")
    assert scalar(engine, "SELECT COUNT(*) FROM ledger") == 0


@pytest.mark.parametrize("backend", ["mysql", "postgresql"], indirect=True)
def test_handlers_timed_out_waiting_in_the_server_neither_crash_nor_freeze_the_run(db_url: str,
                                                                                   engine: sa.Engine) -> None:
    # Closing a handler's connection from the runner's thread while the handler's thread waited in the driver killed
    # the run on PostgreSQL (SIGSEGV) and froze it on MariaDB (PyMySQL's close waited for the reader); and the
    # server ran the statement on, its locks held.
    run_past_timeouts(db_url, engine, "waits_in_the_server", 4)
    sleeping = ("SELECT COUNT(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(600)' AND state = 'active' "
                "AND datname = current_database()" if engine.dialect.name == "postgresql" else
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(600)' "
                "AND DB = DATABASE()")
    assert scalar(engine, sleeping) == 0  # the server stopped them


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("args", [
    ["purge", "--older-than=-7d"], ["list", "--since", "nan"], ["list", "--since", "inf"],
    ["enqueue", "echo", "--delay", "inf"], ["show", str(2**64)], ["retry", "99999999999999999999999"],
    ["run", "--lease", "inf"], ["run", "--grace", "nan"], ["run", "--batch-size", "2.9"],
    ["list", "--log-file", "/nonexistent/x"],
])
def test_a_bad_flag_exits_2_with_one_line(db_url: str, args: list[str]) -> None:
    done = cli(*args, env=env_for(db_url))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(("pending-jobs: ", f"pending-jobs {args[0]}: error: "))


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_log_file_that_cannot_be_opened_exits_2_from_the_environment_too(db_url: str) -> None:
    for done in (cli("status", "--log-file", "/nonexistent/x", env=env_for(db_url)),
                 cli("status", env=env_for(db_url, PENDING_JOBS_LOG_FILE="/nonexistent/x"))):
        assert done.returncode == 2
        assert done.stderr.strip().startswith("pending-jobs: cannot open log file /nonexistent/x")


@pytest.mark.parametrize("backend", ["sqlite", "mysql"], indirect=True)
def test_nothing_a_producer_wrote_reaches_the_terminal_raw(db_url: str, engine: sa.Engine) -> None:
    evil = "report\x1b]0;owned\x07\x1b[2J\x9b31m"
    job_id = enqueue(engine, evil, {"note": "\x1b[2Jclear"}, queue="q\x1b[1m")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET last_error = :e WHERE id = :i"),
                     {"e": "boom\x1b[31m red\nline two", "i": job_id})
    for args in (["list"], ["show", str(job_id)], ["status"], ["list", "--queue", "q\x1b[1m"]):
        done = cli(*args, env=env_for(db_url))
        assert done.returncode == 0, done.stderr
        for raw in ("\x1b", "\x07", "\x9b"):
            assert raw not in done.stdout and raw not in done.stderr
    shown = cli("show", str(job_id), env=env_for(db_url)).stdout
    assert "report\\x1b]0;owned\\x07\\x1b[2J\\x9b31m" in shown and "line two" in shown


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_payload_that_is_not_json_is_shown_as_text(db_url: str, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO pending_jobs (task, payload) VALUES ('echo', 'not json at all')"))
    assert cli("list", env=env_for(db_url)).returncode == 0
    for args in (["list", "--json"], ["show", "1"], ["show", "1", "--json"]):
        done = cli(*args, env=env_for(db_url))
        assert done.returncode == 0, done.stderr
        assert "not json at all" in done.stdout


@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
def test_refused_credentials_are_a_configuration_error(db_url: str) -> None:
    wrong = sa.make_url(db_url).set(password="not-the-password").render_as_string(hide_password=False)
    check = cli("check", "--no-callbacks", env=env_for(wrong))
    assert check.returncode == 3, check.stderr
    assert "database" in check.stdout and "FAIL" in check.stdout and "Access denied" in check.stdout
    assert "Traceback" not in check.stderr
    status = cli("status", env=env_for(wrong))
    assert status.returncode == 2 and len(status.stderr.strip().splitlines()) == 1
    assert "cannot use the database" in status.stderr and "Traceback" not in status.stderr
