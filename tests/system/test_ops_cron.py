"""`check` exit codes, and `run` under a cron-like environment: silent on success, one line on a bad setting."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import pending_jobs
from tests.conftest import ROOT, cli, rows, scalar

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def check(*args: str, env: dict[str, str]) -> tuple[int, dict[str, bool | None]]:
    result = cli("check", "--json", *args, env=env)
    document = json.loads(result.stdout)
    assert document["exit_code"] == result.returncode
    return result.returncode, {c["name"]: c["ok"] for c in document["checks"]}


@pytest.mark.parametrize("backend", ["sqlite", "mysql", "postgresql"], indirect=True)
def test_check_exit_code_names_the_failed_check(empty_url: str, engine_free_port: int, tmp_path: Path) -> None:
    env = {"PENDING_JOBS_DATABASE_URL": empty_url, "PENDING_JOBS_CALLBACK_SECRET": SECRET}
    if empty_url.startswith("sqlite"):  # an empty file: a missing one is a configuration error (test_cli_core)
        Path(str(sa.make_url(empty_url).database)).touch()
    assert check(env=env) == (4, {"configuration": True, "database": True, "schema": False, "handlers": None,
                                  "callbacks": None, "rows": None})
    assert cli("migrate", env=env).returncode == 0
    assert check(env=env) == (0, dict.fromkeys(["configuration", "database", "schema", "handlers", "callbacks",
                                                "rows"], True))
    table = cli("check", env=env)
    assert table.returncode == 0 and "schema" in table.stdout and "ok" in table.stdout

    assert check(env={**env, "PENDING_JOBS_BATCH_SIZE": "0"})[0] == 2
    unreachable = f"mysql://root@127.0.0.1:{engine_free_port}/test"
    assert check(env={**env, "PENDING_JOBS_DATABASE_URL": unreachable})[0] == 3
    assert check(env={**env, "PENDING_JOBS_TASKS": "no_such_module"})[0] == 5
    code, results = check(env={k: v for k, v in env.items() if k != "PENDING_JOBS_CALLBACK_SECRET"})
    assert (code, results["callbacks"], results["handlers"]) == (6, False, True)
    assert check("--no-callbacks", env={k: v for k, v in env.items() if k != "PENDING_JOBS_CALLBACK_SECRET"}) \
        == (0, {"configuration": True, "database": True, "schema": True, "handlers": True, "callbacks": None,
                "rows": True})

    engine = sa.create_engine(empty_url)
    with engine.begin() as conn:
        pending_jobs.enqueue(conn, "nobody_handles_this", {})
    engine.dispose()
    code, results = check(env=env)
    assert (code, results["handlers"]) == (5, False)


@pytest.fixture
def engine_free_port() -> int:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cron(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`pending-jobs run --drain` as cron starts it: an empty environment but PATH and the config file, no
    terminal (drained, so the test need not wait for the next tick's run to take over)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PENDING_JOBS_CONFIG": str(config)}
    return subprocess.run([sys.executable, "-m", "pending_jobs", "run", "--drain", *args], env=env, cwd=ROOT,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("backend", ["sqlite", "mysql"], indirect=True)
def test_run_under_cron_is_silent_on_success_and_says_one_line_on_bad_config(
    db_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    config = tmp_path / "pending-jobs.toml"
    metrics = tmp_path / "pending_jobs.prom"
    config.write_text(f'database_url = "{db_url}"\ntasks = ["tests.jobs"]\nmetrics_file = "{metrics}"\n')
    with engine.begin() as conn:
        pending_jobs.enqueue(conn, "echo", {"n": 1})

    ok = cron(config)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")
    assert metrics.exists()

    with engine.begin() as conn:  # a failed job is data, not a failed run: exit 0, and one line saying why
        failing = pending_jobs.enqueue(conn, "fail_now", {})
    failed_job = cron(config)
    assert (failed_job.returncode, failed_job.stdout) == (0, "")
    assert len(failed_job.stderr.splitlines()) == 1
    assert failed_job.stderr.rstrip().endswith(
        f"WARNING pending_jobs.runner.executor: job {failing} (fail_now) failed on attempt 1 of 5: "
        "Fail: the input can never work")
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status IN ('succeeded', 'failed')") == 2

    for bad in ['batch_size = 0\n', 'tasks = ["no_such_module"]\n', 'no_such_setting = 1\n']:
        lines = config.read_text().splitlines()
        config.write_text("\n".join(line for line in lines if not line.startswith("tasks")) + "\n" + bad)
        if "tasks" not in bad:
            config.write_text(config.read_text() + 'tasks = ["tests.jobs"]\n')
        failed = cron(config)
        assert failed.returncode == 2 and failed.stdout == ""
        assert len(failed.stderr.splitlines()) == 1, failed.stderr
        assert failed.stderr.startswith("pending-jobs: ")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_progress_bar_only_when_stderr_is_a_terminal(db_url: str, engine: sa.Engine) -> None:
    import fcntl
    import pty
    import struct
    import termios

    with engine.begin() as conn:
        for n in range(5):
            pending_jobs.enqueue(conn, "echo", {"n": n})
    controller, terminal = pty.openpty()
    # A new pty is 0 columns wide, and tqdm fits its bar into 0 columns: give it a real width.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PENDING_JOBS_TASKS": "tests.jobs",
           "PENDING_JOBS_DATABASE_URL": db_url, "PENDING_JOBS_POLL": "0"}
    try:
        ran = subprocess.run([sys.executable, "-m", "pending_jobs", "run"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=terminal, timeout=120)
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal side is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
    assert ran.returncode == 0 and ran.stdout == b""
    assert b"pending-jobs" in shown and b"job" in shown
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status = 'succeeded'") == 5


def _failed_database_check(url: sa.URL, user: str) -> tuple[dict[str, str], dict[str, Any]]:
    """`check --json` as the test's database user, which must fail its database check (exit 3): the environment
    it ran with, and that check."""
    env = {"PENDING_JOBS_DATABASE_URL": url.set(username=user, password="pw").render_as_string(False),
           "PENDING_JOBS_CALLBACK_SECRET": SECRET}
    result = cli("check", "--json", env=env)
    database = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "database")
    assert (result.returncode, database["ok"]) == (3, False), result.stdout
    return env, database


def _user_granted(admin: sa.Engine, url: sa.URL, user: str, verbs: str) -> None:
    """A database user of the test's own, with password 'pw', granted `verbs` (e.g. "SELECT, INSERT") on every
    table of the test's database (and the sequences' use on PostgreSQL, where INSERT needs them)."""
    with admin.connect() as conn:
        if url.get_backend_name() == "mysql":
            conn.exec_driver_sql(f"CREATE USER '{user}'@'%%' IDENTIFIED BY 'pw'")
            conn.exec_driver_sql(f"GRANT {verbs} ON `{url.database}`.* TO '{user}'@'%%'")
        else:
            conn.exec_driver_sql(f"CREATE ROLE {user} LOGIN PASSWORD 'pw'")
            conn.exec_driver_sql(f"GRANT {verbs} ON ALL TABLES IN SCHEMA public TO {user}")
            if "INSERT" in verbs:
                conn.exec_driver_sql(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {user}")


def _drop_user(admin: sa.Engine, user: str, mysql: bool) -> None:
    """The test's own database user, and what it was granted, gone; then the admin engine."""
    with admin.connect() as conn:
        if mysql:
            conn.exec_driver_sql(f"DROP USER '{user}'@'%%'")
        else:
            conn.exec_driver_sql(f"DROP OWNED BY {user}")
            conn.exec_driver_sql(f"DROP ROLE {user}")
    admin.dispose()


@pytest.mark.parametrize("backend", ["mysql", "postgresql"], indirect=True)
def test_check_fails_its_database_check_for_a_user_who_may_only_read(db_url: str) -> None:
    """A runner's database user granted SELECT alone: `check` said "reachable and writable" and exit 0, and
    every `run` then ended with "unexpected error" and a traceback (INSERT command denied)."""
    url = sa.make_url(db_url)
    user = "pj_reader_" + str(url.database)[-8:]
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    mysql = url.get_backend_name() == "mysql"
    _user_granted(admin, url, user, "SELECT")
    try:
        env, database = _failed_database_check(url, user)
        assert "the database user may not: INSERT on pending_jobs, UPDATE on pending_jobs, DELETE on pending_jobs" \
            in database["detail"]
        assert check(env={**env, "PENDING_JOBS_DATABASE_URL": db_url})[0] == 0  # the owner passes
        # `run` says so too, in one line and as a setting to fix (exit 2, as refused credentials): it ended with
        # "unexpected error", a traceback and exit 1 on every cron tick
        ran = cli("run", env=env)
        assert ran.returncode == 2, ran.stderr
        assert ran.stderr.startswith("pending-jobs: cannot use the database: ") and "pending_job" in ran.stderr
        assert len(ran.stderr.strip().splitlines()) == 1, ran.stderr
    finally:
        _drop_user(admin, user, mysql)


@pytest.mark.parametrize("backend", ["mysql", "postgresql"], indirect=True)
def test_run_by_a_user_who_may_not_update_leaves_no_unfinished_runs_row(db_url: str) -> None:
    """Granted SELECT and INSERT alone, a run exited 2 with a clear line but left its `pending_job_runs` row with
    no finish (finishing it needs UPDATE): `status` then showed it "still running (or killed)" on every tick."""
    url = sa.make_url(db_url)
    user = "pj_noupd_" + str(url.database)[-8:]
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    mysql = url.get_backend_name() == "mysql"
    _user_granted(admin, url, user, "SELECT, INSERT")
    with admin.connect() as conn:
        conn.execute(sa.text("INSERT INTO pending_jobs (task, payload) VALUES ('echo', '{}')"))
    env = {"PENDING_JOBS_DATABASE_URL": url.set(username=user, password="pw").render_as_string(False)}
    try:
        ran = cli("run", env=env)
        assert ran.returncode == 2, ran.stderr
        assert scalar(admin, "SELECT COUNT(*) FROM pending_job_runs") == 0
        assert ran.stderr.startswith("pending-jobs: cannot use the database: ") and "pending_job_runs" in ran.stderr
        with admin.connect() as conn:  # UPDATE on the runs table alone: the run is recorded, with its exit code
            conn.exec_driver_sql(f"GRANT UPDATE ON `{url.database}`.pending_job_runs TO '{user}'@'%%'" if mysql else
                                 f"GRANT UPDATE ON pending_job_runs TO {user}")
        assert cli("run", env=env).returncode == 2
        assert rows(admin, "SELECT exit_code FROM pending_job_runs WHERE finished_at IS NOT NULL") == [(2,)]
    finally:
        _drop_user(admin, user, mysql)


@pytest.mark.parametrize("backend", ["mysql", "postgresql"], indirect=True)
def test_check_fails_its_database_check_for_a_user_granted_two_tables_only(db_url: str) -> None:
    """Granted all four verbs on pending_jobs and pending_job_runs alone (their sequences too), a user passed `check`
    (exit 0, "reachable and writable"), and every run then stopped at its first claim: the claim reads
    pending_job_paused_queues."""
    url = sa.make_url(db_url)
    user = "pj_two_" + str(url.database)[-8:]
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    mysql = url.get_backend_name() == "mysql"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE USER '{user}'@'%%' IDENTIFIED BY 'pw'" if mysql else
                             f"CREATE ROLE {user} LOGIN PASSWORD 'pw'")
        for table in ("pending_jobs", "pending_job_runs", "pending_jobs_alembic_version"):
            verbs = "SELECT" if "alembic" in table else "SELECT, INSERT, UPDATE, DELETE"
            conn.exec_driver_sql(f"GRANT {verbs} ON `{url.database}`.{table} TO '{user}'@'%%'" if mysql else
                                 f"GRANT {verbs} ON {table} TO {user}")
        if not mysql:
            conn.exec_driver_sql(f"GRANT USAGE ON pending_jobs_id_seq, pending_job_runs_id_seq TO {user}")
        conn.execute(sa.text("INSERT INTO pending_jobs (task, payload) VALUES ('echo', '{}')"))
    try:
        _, database = _failed_database_check(url, user)
        assert "SELECT on pending_job_paused_queues" in database["detail"]
        assert "on pending_jobs," not in database["detail"] and "on pending_job_runs," not in database["detail"]
    finally:
        _drop_user(admin, user, mysql)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_check_fails_its_database_check_for_a_user_without_the_id_sequences(db_url: str) -> None:
    """Every verb on every table but no USAGE on their id sequences: `check` passed (exit 0; its INSERT probes add no
    row, so draw no id), and then `enqueue` failed at once and every `run` at its first run record ("permission
    denied for sequence pending_jobs_id_seq"). `check` names the sequences and the GRANT that gives them."""
    url = sa.make_url(db_url)
    user = "pj_noseq_" + str(url.database)[-8:]
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {user} LOGIN PASSWORD 'pw'")
        conn.exec_driver_sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {user}")
    try:
        env, database = _failed_database_check(url, user)
        sequences = ", ".join(f"public.{table}_id_seq" for table in (
            "pending_job_audit", "pending_job_callback_attempts", "pending_job_errors", "pending_job_runs",
            "pending_jobs"))
        grant = f"GRANT USAGE ON SEQUENCE {sequences} TO {user}"
        assert database["detail"] == (f"the database user may not draw ids from the sequences {sequences} (new jobs, "
                                      f"runs, errors and callback attempts take their ids from them): {grant}")
        with admin.connect() as conn:
            conn.exec_driver_sql(grant)  # what `check` said is the whole fix
        assert check(env=env)[1]["database"] is True
        assert cli("enqueue", "echo", env=env).returncode == 0
    finally:
        _drop_user(admin, user, False)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_an_identity_id_needs_no_grant_on_its_sequence(db_url: str) -> None:
    """PostgreSQL checks no privilege on an identity column's sequence (INSERT on the table draws its ids): `check`
    would have asked a grant no run needs of a table whose id is an identity, not a serial."""
    from pending_jobs.store import postgres_grants

    url = sa.make_url(db_url)
    user = "pj_ident_" + str(url.database)[-8:]
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {user} LOGIN PASSWORD 'pw'")
        conn.exec_driver_sql("CREATE TABLE pj_ids (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
                             "serial_id BIGSERIAL)")
        conn.exec_driver_sql(f"GRANT INSERT ON pj_ids TO {user}")
    table = sa.Table("pj_ids", sa.MetaData(), sa.Column("id", sa.BigInteger, primary_key=True),
                     sa.Column("serial_id", sa.BigInteger))
    engine = sa.create_engine(url.set(username=user, password="pw"))
    try:
        with engine.begin() as conn:
            assert postgres_grants.sequence_problem(conn, [table.c.id]) is None
            problem = postgres_grants.sequence_problem(conn, [table.c.id, table.c.serial_id])
            assert problem is not None
            assert problem.endswith(f"GRANT USAGE ON SEQUENCE public.pj_ids_serial_id_seq TO {user}")
            conn.exec_driver_sql("INSERT INTO pj_ids (serial_id) VALUES (1)")  # the identity's id, drawn ungranted
    finally:
        engine.dispose()
        _drop_user(admin, user, False)
