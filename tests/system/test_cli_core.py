"""The command line as cron and people use it: exit codes, silence, settings precedence."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from pending_jobs import config
from pending_jobs.errors import ConfigError
from pending_jobs.schema import pending_jobs as J
from tests.conftest import ROOT, cli, rows, scalar


def test_enqueue_then_run_via_the_command(db_url: str, engine: sa.Engine) -> None:
    env = {"PENDING_JOBS_DATABASE_URL": db_url}
    added = cli("enqueue", "echo", "--payload", '{"n": 1}', "--queue", "q1", "--priority", "3",
                "--max-attempts", "2", "--idempotency-key", "k-1", env=env)
    assert added.returncode == 0, added.stderr
    job_id = int(added.stdout)
    again = cli("enqueue", "echo", "--payload", '{"n": 2}', "--idempotency-key", "k-1", env=env)
    assert int(again.stdout) == job_id
    later = int(cli("enqueue", "echo", "--delay", "2h", env=env).stdout)

    ran = cli("run", env=env)
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "", "")  # silent on success
    assert rows(engine, "SELECT id, status, queue, priority, max_attempts FROM pending_jobs ORDER BY id") == [
        (job_id, "succeeded", "q1", 3, 2), (later, "pending", "default", 0, 5)]

    verbose = cli("run", "--job", str(later), "-v", env=env)
    assert verbose.returncode == 0 and "claimed 1, succeeded 1" in verbose.stdout
    assert "claimed 1" not in verbose.stderr  # one summary line, also when the crontab sends 2>&1 to one log


def test_enqueue_rejects_bad_input_with_exit_2(db_url: str, engine: sa.Engine) -> None:
    env = {"PENDING_JOBS_DATABASE_URL": db_url}
    for args, message in [
        (["--payload", "{not json"], "--payload is not valid JSON"),
        (["--payload", "[1]"], "JSON object"),
        (["--priority", "5000"], "priority"),
        (["--callback-url", "gopher://x"], "scheme"),
    ]:
        result = cli("enqueue", "echo", *args, env=env)
        assert result.returncode == 2 and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs") == 0


def test_enqueue_reads_a_payload_from_a_file_or_stdin_past_the_argument_limit(db_url: str, engine: sa.Engine,
                                                                              tmp_path: Path) -> None:
    """Linux cuts one argument at 128 KiB, so --payload '<JSON>' could not carry a payload near the 1 MB
    payload_limit; @FILE and - (stdin) can."""
    env = {"PENDING_JOBS_DATABASE_URL": db_url}
    big = {"text": "é" * 300_000}  # 600,013 bytes of JSON
    (tmp_path / "payload.json").write_text(json.dumps(big), encoding="utf-8")
    from_file = cli("enqueue", "echo", "--payload", f"@{tmp_path / 'payload.json'}", env=env)
    from_stdin = cli("enqueue", "echo", "--payload", "-", env=env, stdin='{"from": "stdin"}')
    assert (from_file.returncode, from_stdin.returncode) == (0, 0), from_file.stderr + from_stdin.stderr
    with engine.connect() as conn:
        stored = dict(conn.execute(sa.select(J.c.id, J.c.payload)).all())
    assert stored == {int(from_file.stdout): big, int(from_stdin.stdout): {"from": "stdin"}}

    (tmp_path / "latin1.json").write_bytes(b'{"k": "\xe9"}')
    (tmp_path / "deep.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    for payload, message in [
        (f"@{tmp_path / 'missing.json'}", f"--payload @{tmp_path / 'missing.json'}: cannot read it: No such file"),
        (f"@{tmp_path / 'latin1.json'}", f"--payload @{tmp_path / 'latin1.json'}: not UTF-8 text (invalid "
                                         "continuation byte at offset 7)"),
        (f"@{tmp_path}", f"--payload @{tmp_path}: cannot read it: Is a directory"),
        (f"@{tmp_path / 'deep.json'}", "--payload nests more levels than Python can read; at most 31 can be "
                                       "stored on every database (MariaDB's limit)\n"),  # was a traceback
        ("@/dev/zero", "--payload @/dev/zero: over 6000000 bytes, far past the 1000000-byte payload_limit\n"),
    ]:
        refused = cli("enqueue", "echo", "--payload", payload, env=env)
        assert refused.returncode == 2 and refused.stderr.startswith(f"pending-jobs: {message}"), refused.stderr
    closed = subprocess.run(["sh", "-c", 'exec "$@" <&-', "sh", sys.executable, "-m", "pending_jobs", "enqueue", "echo",
                             "--payload", "-"], capture_output=True, text=True, cwd=ROOT,
                            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **env})
    assert (closed.returncode, closed.stderr) == (2, "pending-jobs: --payload -: there is no stdin to read\n")
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs") == 2


def test_only_migrate_creates_a_missing_sqlite_file(tmp_path: Path) -> None:
    """Connecting creates an SQLite file: a typo in the path left an empty file behind on every cron tick,
    and the error said the schema was not migrated. A server database is never created by connecting."""
    path = tmp_path / "typo.sqlite3"
    env = {"PENDING_JOBS_DATABASE_URL": f"sqlite:///{path}"}
    why = f"database_url: there is no SQLite file {path} (a typo? `pending-jobs migrate` creates the jobs database)"
    for command in (["run"], ["status"], ["list"], ["enqueue", "echo"], ["show", "1"], ["check"]):
        refused = cli(*command, env=env)
        assert refused.returncode == 2, (command, refused.stderr)
        if command == ["check"]:  # its table of checks, on stdout
            assert f"configuration  FAIL     {why}\n" in refused.stdout
        else:
            assert refused.stderr == f"pending-jobs: {why}\n", command
        assert not path.exists(), command
    migrated = cli("migrate", env=env)
    assert migrated.returncode == 0 and path.exists(), migrated.stderr
    assert cli("enqueue", "echo", env=env).stdout == "1\n"


def test_an_sqlite_url_no_run_can_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """An in-memory database crashed with SQLAlchemy's TypeError (max_overflow) and a traceback, a folder
    read as an outage (exit 75: cron tried again for ever), a missing file: URI was created empty."""
    memory = ("database_url: an in-memory SQLite database lives in one connection, and a run uses several: give "
              "a file (sqlite:///path/jobs.sqlite3)")
    for url, why in [
        ("sqlite://", memory),
        ("sqlite:///:memory:", memory),
        ("sqlite:///file:jobs?mode=memory&uri=true", memory),
        # two slashes: the file name is read as a host and the database was "in memory", which nobody asked for
        ("sqlite://jobs.sqlite3", "database_url: sqlite://jobs.sqlite3 reads jobs.sqlite3 as a host, not a file: give "
                                  "the file after three slashes (sqlite:///jobs.sqlite3, sqlite:////abs/path/jobs.sqlite3)"),
        (f"sqlite:///{tmp_path}", f"database_url: {tmp_path} is a folder, not an SQLite file"),
        (f"sqlite:///file:{tmp_path / 'typo.db'}?uri=true", f"database_url: there is no SQLite file "
                                                             f"{tmp_path / 'typo.db'} (a typo? `pending-jobs migrate` "
                                                             "creates the jobs database)"),
    ]:
        refused = cli("status", env={"PENDING_JOBS_DATABASE_URL": url})
        assert (refused.returncode, refused.stderr) == (2, f"pending-jobs: {why}\n"), url
    assert list(tmp_path.iterdir()) == []
    uri = f"sqlite:///file:{tmp_path / 'jobs.db'}?uri=true"
    assert cli("migrate", env={"PENDING_JOBS_DATABASE_URL": uri}).returncode == 0
    assert cli("enqueue", "echo", env={"PENDING_JOBS_DATABASE_URL": uri}).stdout == "1\n"


def test_run_job_that_is_not_pending_exits_1(db_url: str) -> None:
    result = cli("run", "--job", "999", env={"PENDING_JOBS_DATABASE_URL": db_url})
    assert result.returncode == 1 and "job 999 is missing, not pending" in result.stderr


def test_a_run_on_a_database_missing_a_table_exits_2_before_it_claims(db_url: str, engine: sa.Engine) -> None:
    """A table of the schema gone (a dump restored without it) while the version table says head: the run claimed
    the job, could not record its failure, printed a traceback ("unexpected error", exit 1) and left it `running`
    until its lease expired; every cron tick did the same."""
    env = {"PENDING_JOBS_DATABASE_URL": db_url}
    assert cli("enqueue", "fail_now", env=env).stdout == "1\n"
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE pending_job_errors"))
    result = cli("run", env=env)
    assert result.returncode == 2, result.stderr
    assert "no table pending_job_errors" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert [tuple(row) for row in rows(engine, "SELECT status, attempts FROM pending_jobs WHERE id = 1")] == [
        ("pending", 0)]


def test_unreachable_database_exits_75(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for url in (f"mysql://root@127.0.0.1:{port}/test", f"postgresql://postgres@127.0.0.1:{port}/test"):
        result = cli("run", env={"PENDING_JOBS_DATABASE_URL": url})
        assert result.returncode == 75, result.stderr
        assert result.stderr.startswith("pending-jobs: database unavailable")
        assert len(result.stderr.strip().splitlines()) == 1


def test_configuration_errors_exit_2_with_one_line(db_url: str, tmp_path: Path) -> None:
    cases = [
        ({"PENDING_JOBS_DATABASE_URL": db_url, "PENDING_JOBS_TASKS": "no.such.module"}, "cannot import task module"),
        ({"PENDING_JOBS_DATABASE_URL": db_url, "PENDING_JOBS_BATCH_SIZE": "many"}, "PENDING_JOBS_BATCH_SIZE"),
        ({"PENDING_JOBS_DATABASE_URL": "oracle://x/y"}, "unsupported database"),
        # a misspelt driver was SQLAlchemy's NoSuchModuleError: a traceback and exit 1
        ({"PENDING_JOBS_DATABASE_URL": "mysql+pymsql://root@127.0.0.1/x"}, "driver SQLAlchemy does not know"),
        # parameters the driver refuses before it connects: TypeError, AttributeError, FileNotFoundError and
        # psycopg's ProgrammingError were each an "unexpected error", a traceback and exit 1
        ({"PENDING_JOBS_DATABASE_URL": "mysql://root@127.0.0.1/x?sslmode=require"}, "takes no parameter sslmode"),
        ({"PENDING_JOBS_DATABASE_URL": "mysql://root@127.0.0.1/x?ssl=true"}, "ssl='true' is not a PyMySQL setting"),
        ({"PENDING_JOBS_DATABASE_URL": f"mysql://root@127.0.0.1/x?ssl_ca={tmp_path}/no.pem"}, "no.pem is not a file"),
        ({"PENDING_JOBS_DATABASE_URL": "postgresql://postgres@127.0.0.1/x?bogus=1"}, 'invalid connection option "bo'),
        ({"PENDING_JOBS_DATABASE_URL": "postgresql://postgres@127.0.0.1:abc/x"}, "not a valid SQLAlchemy URL"),
        ({"PENDING_JOBS_CONFIG": str(tmp_path / "missing.toml")}, "cannot read config file"),
        # no handler and no [task.NAME]: a cron line without the PENDING_JOBS_TASKS a shell had claimed every job
        # and failed it, callbacks and all (exit 0)
        ({"PENDING_JOBS_DATABASE_URL": db_url, "PENDING_JOBS_TASKS": ""}, "no tasks to run: set tasks"),
    ]
    for env, message in cases:
        result = cli("run", env=env)
        assert result.returncode == 2, (env, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_database_url_option_the_driver_refuses_exits_2_with_one_line() -> None:
    """A misspelt value libpq refuses before it connects was "database unavailable", exit 75: cron tried it again
    every minute for ever. A value SQLAlchemy or PyMySQL cannot convert was a traceback and exit 1."""
    cases = [
        ("postgresql://postgres@127.0.0.1/x?sslmode=requried", 'invalid sslmode value: "requried"'),
        ("postgresql://postgres@127.0.0.1/x?target_session_attrs=primry", "invalid target_session_attrs value"),
        ("postgresql://postgres@127.0.0.1/x?keepalives=yes", 'for connection option "keepalives"'),
        ("mysql://root@127.0.0.1/x?connect_timeout=ten", "invalid literal for int()"),
        ("mysql://root@127.0.0.1/x?ssl_check_hostname=maybe", "String is not true/false: 'maybe'"),
        ("mysql://root@127.0.0.1/x?port=3307", "port='3307' is not a PyMySQL setting"),
    ]
    for url, message in cases:
        result = cli("run", env={"PENDING_JOBS_DATABASE_URL": url})
        assert result.returncode == 2, (url, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, (url, result.stderr)


def test_a_mysql_url_without_a_database_exits_2_with_one_line() -> None:
    """`mysql://root@127.0.0.1` (the database name left out, or `/` alone): SQLAlchemy's AssertionError when the
    schema was looked up, "unexpected error", a traceback and exit 1 from every command, `check` included."""
    for url in ("mysql://root@127.0.0.1", "mysql://root@127.0.0.1/", "mariadb://root@127.0.0.1:3306/?charset=utf8mb4"):
        for command in (["status"], ["migrate"], ["enqueue", "x"], ["list"]):
            result = cli(*command, env={"PENDING_JOBS_DATABASE_URL": url})
            assert result.returncode == 2, (url, command, result.stderr)
            assert "names no database" in result.stderr, (url, command, result.stderr)
            assert len(result.stderr.strip().splitlines()) == 1, (url, command, result.stderr)
        checked = cli("check", env={"PENDING_JOBS_DATABASE_URL": url})
        assert checked.returncode == 2 and "names no database" in checked.stdout, (url, checked.stdout, checked.stderr)
        assert "Traceback" not in checked.stderr, checked.stderr


def test_a_database_url_that_is_not_utf8_exits_2_with_one_line() -> None:
    """A byte of another encoding in the variable (a Latin-1 password): the driver's UnicodeEncodeError, a traceback
    and exit 1 on every cron tick."""
    for url in ("mysql://root:p\udce4ss@127.0.0.1/x", "postgresql://postgres@127.0.0.1/x?application_name=\udcff"):
        result = cli("run", env={"PENDING_JOBS_DATABASE_URL": url})
        assert result.returncode == 2, (url, result.stderr)
        assert "database_url is not valid UTF-8" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_sqlite_url_option_the_driver_ignores_exits_2_with_one_line(tmp_path: Path) -> None:
    """`?timout=60`: SQLAlchemy ignored it with a two-line warning on stderr (cron mailed it every tick) and the run
    went on, exit 0, where MySQL's and PostgreSQL's misspelt options are refused (exit 2)."""
    path = tmp_path / "jobs.sqlite3"
    assert cli("migrate", env={"PENDING_JOBS_DATABASE_URL": f"sqlite:///{path}"}).returncode == 0
    result = cli("run", env={"PENDING_JOBS_DATABASE_URL": f"sqlite:///{path}?timout=60"})
    assert result.returncode == 2, result.stderr
    assert "'timout' are not accepted" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert cli("run", env={"PENDING_JOBS_DATABASE_URL": f"sqlite:///{path}?timeout=60"}).returncode == 0


def test_every_run_flag_names_its_environment_variable() -> None:
    result = cli("run", "--help", env={"COLUMNS": "200"})
    assert result.returncode == 0
    for name in ("max_runtime", "max_jobs", "batch_size", "concurrency", "lease", "poll", "tasks", "database_url"):
        assert config.BY_NAME[name].env in result.stdout, name
    assert "PENDING_JOBS_QUEUES" in result.stdout


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    path = tmp_path / "pj.toml"
    path.write_text('batch_size = 7\nconcurrency = 3\nlease = "2m"\n')
    env = {"PENDING_JOBS_CONFIG": str(path), "PENDING_JOBS_CONCURRENCY": "9"}
    settings = config.load({"lease": 30.0}, environ=env)
    assert (settings.batch_size, settings.concurrency, settings.lease) == (7, 9, 30.0)
    assert config.load({}, environ={}).batch_size == 100
    nested = tmp_path / "nested.toml"
    nested.write_text('[pending_jobs]\nqueues = ["a", "b"]\nmax_runtime = "1m"\n')
    loaded = config.load({}, environ={}, config_file=str(nested))
    assert (loaded.queues, loaded.max_runtime) == (["a", "b"], 60.0)


def test_bad_settings_are_refused() -> None:
    for env, message in [
        ({"PENDING_JOBS_CONCURRENCY": "0"}, "PENDING_JOBS_CONCURRENCY: 0 is outside 1 to 1000"),
        ({"PENDING_JOBS_LEASE": "soon"}, "not a duration"),
        ({"PENDING_JOBS_LOG_FORMAT": "xml"}, "log_format"),
    ]:
        with pytest.raises(ConfigError, match=message):
            config.load({}, environ=env)


def test_unknown_key_in_config_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "pj.toml"
    path.write_text("bach_size = 5\n")
    with pytest.raises(ConfigError, match=r"unknown setting.*bach_size"):
        config.load({}, environ={"PENDING_JOBS_CONFIG": str(path)})


def test_old_mysql_and_mariadb_are_refused() -> None:
    from pending_jobs.store.mysql import version_problem

    assert version_problem((10, 11, 19), mariadb=True) is None
    assert version_problem((10, 6, 0), mariadb=True) is None
    assert version_problem((8, 0, 1), mariadb=False) is None
    assert "MariaDB 10.5.9 is too old: pending-jobs needs 10.6+" in str(version_problem((10, 5, 9), mariadb=True))
    assert "MySQL 5.7.44 is too old: pending-jobs needs 8.0.1+" in str(version_problem((5, 7, 44), mariadb=False))
    assert version_problem((8, 0, 0), mariadb=False) is not None


def test_enqueue_on_a_database_not_migrated_exits_2_with_the_remedy(empty_url: str) -> None:
    """Every other command says "run `pending-jobs migrate`"; enqueue reached the INSERT and ended with the
    driver's "no such table" as a traceback, exit 1."""
    if empty_url.startswith("sqlite"):  # an SQLite database must exist: make the file, without the tables
        engine = sa.create_engine(empty_url)
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE app_users (id INTEGER)")
        engine.dispose()
    result = cli("enqueue", "echo", env={"PENDING_JOBS_DATABASE_URL": empty_url})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("pending-jobs: database schema is not migrated") and "pending-jobs migrate" in \
        result.stderr and len(result.stderr.strip().splitlines()) == 1
