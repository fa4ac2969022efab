"""Declared tasks in the config file: `[task.NAME]` tables parsed, and every mistake named (no database)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from pending_jobs import config, declared, validation
from pending_jobs.declared import base
from pending_jobs.declared.spec import (
    DEFAULT_TIMEOUT,
    KILL_AFTER,
    MAX_ROWS,
    RESULT_LIMIT,
    CommandSpec,
    HttpSpec,
    SqlSpec,
    parse_one,
)
from pending_jobs.errors import ConfigError
from pending_jobs.registry import Task, default_backoff


def _load(tmp_path: Path, text: str) -> config.Settings:
    path = tmp_path / "pending-jobs.toml"
    path.write_text(text)
    return config.load({}, environ={}, config_file=str(path))


def test_task_tables_reach_the_settings_beside_the_tasks_key(tmp_path: Path) -> None:
    settings = _load(tmp_path, 'tasks = ["tests.jobs"]\n[task.save_user]\nsql = "SELECT 1"\n'
                               '[task.report]\ncommand = ["true"]\n')

    assert settings.tasks == ["tests.jobs"]
    assert settings.declared_tasks == {"save_user": {"sql": "SELECT 1"}, "report": {"command": ["true"]}}


def test_task_tables_beside_or_inside_a_pending_jobs_table(tmp_path: Path) -> None:
    settings = _load(tmp_path, '[pending_jobs]\nbatch_size = 7\n[pending_jobs.task.a]\nsql = "SELECT 1"\n'
                               '[task.b]\nurl = "http://app.internal/b"\n')

    assert settings.batch_size == 7
    assert set(settings.declared_tasks) == {"a", "b"}


def test_old_configs_without_task_tables_keep_working(tmp_path: Path) -> None:
    settings = _load(tmp_path, 'tasks = ["tests.jobs"]\nbatch_size = 3\n')

    assert settings.declared_tasks == {}
    assert declared.load(settings) == {}


@pytest.mark.parametrize(("text", "message"), [
    ('task = ["myapp.jobs"]\n', "task must hold one table per declared task"),
    ("[task]\nsave_user = 1\n", "task must hold one table per declared task"),
    ('[pending_jobs.task.a]\nsql = "SELECT 1"\n[task.a]\nsql = "SELECT 2"\n', "task 'a' is declared twice"),
])
def test_a_task_key_that_is_not_tables_is_a_config_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, text)


def test_defaults_of_each_kind() -> None:
    sql = parse_one("s", {"sql": "INSERT INTO t (a) VALUES (:a)"})
    http = parse_one("h", {"url": "https://app.internal/jobs/h"})
    command = parse_one("c", {"command": ["php", "artisan", "report:build"]})

    assert isinstance(sql, SqlSpec) and sql.statements == ("INSERT INTO t (a) VALUES (:a)",)
    assert sql.database_url is None and sql.max_rows == MAX_ROWS and sql.policy.timeout is None
    assert isinstance(http, HttpSpec) and http.secret is None and http.policy.timeout == DEFAULT_TIMEOUT["http"]
    assert isinstance(command, CommandSpec) and command.argv == ("php", "artisan", "report:build")
    assert command.kill_after == KILL_AFTER and command.env == {} and command.cwd is None
    assert command.policy.timeout == DEFAULT_TIMEOUT["command"]
    for spec in (sql, http, command):
        assert spec.policy.max_attempts is None and spec.policy.backoff is None
        assert spec.policy.result_limit == RESULT_LIMIT


def test_every_option_is_read() -> None:
    spec = parse_one("c", {"command": ["bin/report"], "cwd": "/srv/app", "env": {"APP_ENV": "prod", "PORT": 8080},
                           "kill_after": "2s", "timeout": "5m", "max_attempts": 3, "backoff": ["10s", "1m"],
                           "result_limit": 4096})

    assert isinstance(spec, CommandSpec)
    assert spec.cwd == "/srv/app" and spec.env == {"APP_ENV": "prod", "PORT": "8080"} and spec.kill_after == 2.0
    assert spec.policy.timeout == 300.0 and spec.policy.max_attempts == 3 and spec.policy.backoff == (10.0, 60.0)
    assert spec.policy.result_limit == 4096
    sql = parse_one("s", {"sql": ["DELETE FROM a", "DELETE FROM b"], "database_url": "sqlite:///other.db",
                          "max_rows": 5, "backoff": 30})
    assert isinstance(sql, SqlSpec) and sql.statements == ("DELETE FROM a", "DELETE FROM b")
    assert sql.database_url == "sqlite:///other.db" and sql.max_rows == 5 and sql.policy.backoff == (30.0,)
    http = parse_one("h", {"url": "http://10.0.0.5:8080/jobs", "secret": ["whsec_a", "whsec_b"],
                           "connect_timeout": 1.5})
    assert isinstance(http, HttpSpec) and http.secret == ("whsec_a", "whsec_b") and http.connect_timeout == 1.5


@pytest.mark.parametrize(("table", "message"), [
    ({}, r"\[task.t\]: needs one of sql, url or command"),
    ({"sql": "SELECT 1", "command": ["true"]}, "has both 'sql' and 'command'; a task is one kind"),
    ({"sql": "SELECT 1", "url": "http://a/"}, "has both 'sql' and 'url'"),
    ({"sql": "SELECT 1", "sqll": 1}, r"\[task.t\]: unknown key 'sqll' \(allowed with 'sql': sql, database_url"),
    ({"command": ["true"], "database_url": "sqlite://"}, "unknown key 'database_url' \\(allowed with 'command'"),
    ({"url": "http://a/", "env": {}}, "unknown key 'env' \\(allowed with 'url': url, secret, connect_timeout"),
    ({"sql": 5}, r"\[task.t\] sql: must be an SQL statement or a non-empty list"),
    ({"sql": ["SELECT 1", ""]}, r"\[task.t\] sql: must be an SQL statement"),
    ({"sql": "SELECT 1", "database_url": "not a url"}, r"\[task.t\] database_url: is not a valid SQLAlchemy URL"),
    ({"sql": "SELECT 1", "max_rows": 0}, r"\[task.t\] max_rows: must be 1..10000, not 0"),
    ({"sql": "SELECT 1", "timeout": "5x"}, r"\[task.t\] timeout: not a duration: '5x'"),
    ({"sql": "SELECT 1", "timeout": 0}, r"\[task.t\] timeout: must be more than 0 seconds"),
    # past about 9.2e9 s every attempt of a url task failed with an OverflowError (a socket's timeout)
    ({"url": "http://127.0.0.1:9/ok", "timeout": "1e10"},
     r"\[task.t\] timeout: must be at most 7 days \(604800 seconds\), not '1e10'"),
    ({"command": ["true"], "kill_after": "8d"}, r"\[task.t\] kill_after: must be at most 7 days"),
    ({"sql": "SELECT 1", "timeout": True}, r"\[task.t\] timeout: must be seconds or a duration"),
    ({"sql": "SELECT 1", "max_attempts": 0}, r"\[task.t\] max_attempts: must be 1..1000, not 0"),
    ({"sql": "SELECT 1", "max_attempts": "3"}, r"\[task.t\] max_attempts: must be a whole number, not a string"),
    ({"sql": "SELECT 1", "backoff": []}, r"\[task.t\] backoff: must be a duration or a non-empty list"),
    ({"sql": "SELECT 1", "backoff": ["10s", "soon"]}, r"\[task.t\] backoff: not a duration: 'soon'"),
    ({"sql": "SELECT 1", "backoff": "-5"}, r"\[task.t\] backoff: a duration cannot be negative"),
    ({"sql": "SELECT 1", "result_limit": 10}, r"\[task.t\] result_limit: must be 256\.\."),
    ({"url": "ftp://a/x"}, r"\[task.t\] url: scheme 'ftp' is not http or https"),
    ({"url": "http:///x"}, r"\[task.t\] url: the URL has no host"),
    ({"url": "http://a:99999/"}, r"\[task.t\] url: the URL is malformed"),
    ({"url": "http://a/", "secret": 3}, r"\[task.t\] secret: must be a whsec_ secret"),
    ({"command": "php artisan report:build"}, r"\[task.t\] command: must be a list of arguments.*no shell"),
    ({"command": []}, r"\[task.t\] command: must be a non-empty list of strings"),
    ({"command": ["php", 5]}, r"\[task.t\] command: must be a non-empty list of strings"),
    ({"command": ["true"], "cwd": ""}, r"\[task.t\] cwd: must be a non-empty string"),
    # A relative cwd was taken from the runner's own directory: `check` run by hand in the app's folder said ok,
    # and every job of the run cron started (in the user's home) failed for good with "No such file".
    ({"command": ["true"], "cwd": "app"}, r"\[task.t\] cwd: must be an absolute path, not 'app' \(a run"),
    ({"command": ["true"], "env": ["A=1"]}, r"\[task.t\] env: must be a table"),
    ({"command": ["true"], "env": {"PENDING_JOBS_DATABASE_URL": "x"}}, r"env: PENDING_JOBS_DATABASE_URL is reserved"),
    ({"command": ["true"], "env": {"A": True}}, r"\[task.t\] env: A must be a string or a number"),
    ({"command": ["true"], "kill_after": "-1"}, r"\[task.t\] kill_after: a duration cannot be negative"),
])
def test_each_mistake_names_the_task_and_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_one("t", table)


def test_a_bad_secret_names_the_task_and_never_echoes_the_secret(tmp_path: Path) -> None:
    settings = _load(tmp_path, '[task.hook]\nurl = "http://app.internal/x"\nsecret = "whsec_!!not-base64"\n')

    held = declared.load(settings)["hook"].held  # the task is held (its jobs wait), not the whole run refused
    assert re.search(r"\[task.hook\] secret: a secret is not valid base64", held), held
    assert "not-base64" not in held


def test_a_database_url_with_a_password_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_one("t", {"sql": "SELECT 1", "database_url": "mysql://app:s3cret@db:notaport/app"})
    assert "s3cret" not in str(raised.value)


def test_a_name_declared_and_registered_in_python_is_held() -> None:
    python = {"echo": Task("echo", lambda payload, ctx: None), "mail": Task("mail", lambda payload, ctx: 2)}
    both = {"echo": Task("echo", lambda payload, ctx: 1)}

    merged = declared.merge(python, both)
    assert re.match(r"task 'echo' is both declared in the config \(\[task.echo\]\)", merged["echo"].held)
    assert merged["mail"] is python["mail"]  # the other tasks run as ever
    assert set(declared.merge(python, {"other": both["echo"]})) == {"echo", "mail", "other"}


def test_backoff_list_gives_each_retry_its_delay_and_repeats_the_last() -> None:
    policy = parse_one("t", {"sql": "SELECT 1", "backoff": ["10s", "1m", "1h"]}).policy
    fixed = parse_one("t", {"sql": "SELECT 1", "backoff": 30}).policy

    delays = base.backoff_of(policy)
    assert [delays(n) for n in (1, 2, 3, 4, 9)] == [10.0, 60.0, 3600.0, 3600.0, 3600.0]
    assert base.backoff_of(fixed)(5) == 30.0
    assert base.backoff_of(parse_one("t", {"sql": "SELECT 1"}).policy) is default_backoff


def test_the_tasks_max_attempts_is_its_registry_entrys() -> None:
    """The executor gives up at it (tests/unit/test_executor.py); the row's still applies too."""
    def handler(payload: Any, ctx: Any) -> None:
        return None

    limited = base.task_of("t", handler, parse_one("t", {"sql": "SELECT 1", "max_attempts": 2}).policy, 60.0)
    assert (limited.fn, limited.max_attempts, limited.timeout) == (handler, 2, 60.0)
    assert base.task_of("t", handler, parse_one("t", {"sql": "SELECT 1"}).policy, None).max_attempts is None


def test_output_is_json_when_whole_and_valid_else_text() -> None:
    assert base.json_or_text(b'{"a": [1, 2]}\n', True, 1000) == {"a": [1, 2]}
    assert base.json_or_text(b"", True, 1000) is None
    deep = b"[" * 100_000 + b"]" * 100_000  # past Python's recursion limit: text, not an error (the job ran)
    assert base.json_or_text(deep, True, 1_000_000).startswith("[[[[")
    assert isinstance(base.json_or_text(b"[" * 31 + b"]" * 31, True, 1000), list)
    assert base.json_or_text(b"[" * 32 + b"]" * 32, True, 1000) == "[" * 32 + "]" * 32  # MariaDB refuses it
    assert validation.depth({"a": [1, {"b": []}], "c": 2}) == 4 and validation.depth(5) == 0
    assert base.json_or_text(b"done\n", True, 1000) == "done\n"
    assert base.json_or_text(b'{"a": 1', True, 1000) == '{"a": 1'
    bad_utf8 = base.json_or_text(b"caf\xe9 \xff ok", True, 1000)
    assert bad_utf8 == "caf\ufffd \ufffd ok"
    nul = base.json_or_text(b'{"a": "\\u0000"}', True, 1000)
    assert isinstance(nul, str) and "\x00" not in nul  # PostgreSQL jsonb cannot store NUL: kept as text


def test_output_over_the_limit_is_cut_text_that_fits_the_limit() -> None:
    big = b'{"a": "' + b"x" * 5000 + b'"}'
    cut = base.json_or_text(big[:1001], False, 1000)

    assert isinstance(cut, str) and cut.endswith("characters]") and "[output cut at" in cut
    assert len(cut.encode()) <= 1000
    controls = base.json_or_text(b"\x01" * 5000, False, 1000)  # 6 bytes of JSON each: halved until it fits
    assert isinstance(controls, str) and len(controls.encode()) <= 1000


def _sql_settings(tmp_path: Path, database_url: str, *statements: str) -> config.Settings:
    listed = ", ".join(repr(statement) for statement in statements)
    return _load(tmp_path, f'database_url = "{database_url}"\n[task.job]\nsql = [{listed}]\n')


MARIADB = "mysql+pymysql://app@db/app"
POSTGRESQL = "postgresql+psycopg://app@db/app"


@pytest.mark.parametrize(("url", "statement", "message"), [
    # Each would break the job's transaction (its writes committing apart from its outcome) or leave a
    # pooled connection changed for the jobs after it and the runner.
    (MARIADB, "TRUNCATE TABLE t4", r"TRUNCATE commits the open transaction on MariaDB/MySQL .* use DELETE FROM"),
    (MARIADB, "/* nightly */ CREATE TABLE t (a INT)", r"CREATE commits the open transaction on MariaDB/MySQL"),
    (MARIADB, "LOCK TABLES t4 WRITE", r"LOCK commits the open transaction"),
    (MARIADB, "SET STATEMENT max_statement_time = 5 FOR ALTER TABLE t ADD b INT", r"ALTER commits the open"),
    (POSTGRESQL, "COMMIT", r"COMMIT would end the job's transaction"),
    (MARIADB, "start transaction", r"START would end the job's transaction"),
    (POSTGRESQL, "SAVEPOINT a", r"SAVEPOINT would end the job's transaction"),
    (MARIADB, "USE other", r"USE changes the session of a pooled connection"),
    (POSTGRESQL, "DISCARD ALL", r"DISCARD changes the session"),
    (MARIADB, "SET SESSION TRANSACTION READ ONLY", r"SET changes the session .*\(allowed: SET @variable"),
    (POSTGRESQL, "SET search_path TO other", r"SET changes the session"),
    (MARIADB, "SET autocommit = 1", r"SET changes the session"),
    (MARIADB, "SET @a = 1, sql_mode = ''", r"SET changes the session"),
    (MARIADB, "SET @@session.sql_mode = ''", r"SET changes the session"),
    ("sqlite:///jobs.sqlite3", "PRAGMA foreign_keys = OFF", r"PRAGMA … = or PRAGMA name\(value\) changes the SQLite"),
    # Ways past these checks the declared-task review found: a comment in a SET, a comment MariaDB runs,
    # several statements in one (PostgreSQL ran them all, `check`'s PREPARE too), PRAGMA name(value),
    # set_config() (a search_path that hid pending_jobs from the runner's next statement).
    (MARIADB, "SET @a=1,/**/autocommit=1", r"SET changes the session"),
    (MARIADB, "/*! CREATE TABLE t5 (x INT) */", r"a /\*! … \*/ comment is run by MariaDB/MySQL"),
    (MARIADB, "SELECT 1 /*M!100000 , SLEEP(1) */", r"a /\*! … \*/ comment is run by MariaDB/MySQL"),
    (POSTGRESQL, "SELECT 1; COMMIT; DELETE FROM victim", r"one statement per entry: this one holds several"),
    ("sqlite:///jobs.sqlite3", "PRAGMA query_only(1)", r"PRAGMA … = or PRAGMA name\(value\) changes the SQLite"),
    (POSTGRESQL, "SELECT set_config('search_path', '', false)", r"set_config\(\) can change the session"),
    # Not the transaction's: a :name inside a string is bound too (check's PREPARE would not see it).
    (MARIADB, "SELECT ':a' AS label, :a AS a", r"the string \"':a'\" holds :a, .* write \\:a for a literal colon"),
    # Nor in a comment: PostgreSQL and SQLite refuse a parameter the statement does not read.
    (POSTGRESQL, "SELECT 1 AS one -- :note", r"the comment '-- :note' holds :note, .* write \\:note or leave it out"),
    (POSTGRESQL, "SELECT /* :note */ :a AS a", r"the comment '/\* :note \*/' holds :note"),
    (POSTGRESQL, "DO $$BEGIN PERFORM ':a'; END$$", r"the string \"\$\$BEGIN PERFORM ':a'; END\$\$\" holds :a"),
    (MARIADB, 'SELECT ":a" AS label', r"the string '\":a\"' holds :a"),
    # On MariaDB \' is a quote inside the string, so :a is inside it (on PostgreSQL it is not: below).
    (MARIADB, "UPDATE t SET p = replace(p, '\\', :a) || 'x'", r"the string .* holds :a"),
    # A parameter cast with no space between (:a::int): text() binds no :a there, so the job ran with the
    # text ':a::int' (a syntax error) or failed as if its payload held a key no statement uses.
    (POSTGRESQL, "SELECT :a::int AS a", r":a::int is no parameter: .* write :a ::int or CAST\(:a AS int\)"),
    (POSTGRESQL, "UPDATE t SET n = n + :a::numeric(10, 2)", r":a::numeric is no parameter"),
])
def test_a_statement_that_would_end_the_transaction_or_change_the_session_is_refused(
        tmp_path: Path, url: str, statement: str, message: str) -> None:
    settings = _sql_settings(tmp_path, url, "INSERT INTO t (a) VALUES (:a)", statement)
    held = declared.load(settings)["job"].held
    assert re.search(r"^\[task.job\] sql: statement 2 of 2: " + message, held), held


@pytest.mark.parametrize(("url", "statement"), [
    (MARIADB, "SET @uid = LAST_INSERT_ID()"),  # a user variable, read by the next statement
    (MARIADB, "SET STATEMENT max_statement_time = 5 FOR UPDATE t SET a = :a"),
    (POSTGRESQL, "SET LOCAL lock_timeout = '2s'"),
    (POSTGRESQL, "SET CONSTRAINTS ALL DEFERRED"),
    (POSTGRESQL, "TRUNCATE TABLE t4"),  # DDL is transactional on PostgreSQL and SQLite
    (POSTGRESQL, "LOCK TABLE t4 IN EXCLUSIVE MODE"),  # held until the job's transaction ends
    ("sqlite:///jobs.sqlite3", "CREATE TABLE IF NOT EXISTS t (a INT)"),
    (MARIADB, "CALL refresh_totals(:a)"),
    (MARIADB, "SELECT 'COMMIT' AS word"),
    (MARIADB, "SELECT '12:30' AS at, '\\:a' AS label, 'it''s' AS s"),
    # A quote inside a comment starts no string: :a here is the statement's parameter.
    (MARIADB, "UPDATE t SET a = 1 -- don't touch b\nWHERE a = :a AND b <> 'x'"),
    (MARIADB, "SELECT 5--:a"),  # on MySQL -- without a space after it is two minus signs
    (POSTGRESQL, "SELECT :a ::int AS a, CAST(:a AS int) AS b, 'x'::text AS c -- \\:a is cast"),
    (POSTGRESQL, "UPDATE t SET p = replace(p, '\\', :a) || 'x'"),  # '\' is a backslash there
    (POSTGRESQL, "SELECT E'it\\'s' AS s, :a AS a, 'x' AS x"),  # but not in an escape string
    (POSTGRESQL, "SELECT 'a;b' AS s, :a AS a;"),  # a ';' in a string, or at the end
    ("sqlite:///jobs.sqlite3", "PRAGMA main.table_info(t)"),  # a PRAGMA that only reads
    (MARIADB, "INSERT INTO t (a) VALUES ('/*! not a comment */')"),
])
def test_statements_that_keep_the_transaction_are_accepted(tmp_path: Path, url: str, statement: str) -> None:
    settings = _sql_settings(tmp_path, url, "INSERT INTO t (a) VALUES (:a)", statement)
    loaded = declared.load(settings)
    assert set(loaded) == {"job"} and not loaded["job"].held


def test_another_database_is_judged_by_its_own_kind(tmp_path: Path) -> None:
    text = (f'database_url = "{POSTGRESQL}"\n[task.job]\nsql = "TRUNCATE TABLE t4"\n'
            f'database_url = "mariadb+pymysql://app@reports/app"\n')
    held = declared.load(_load(tmp_path, text))["job"].held
    assert "TRUNCATE commits the open transaction on MariaDB/MySQL" in held


def test_a_task_that_calls_a_procedure_runs_each_job_alone(tmp_path: Path) -> None:
    # A procedure may COMMIT where pending-jobs cannot see it: then only its own job is at stake.
    calls = declared.load(_sql_settings(tmp_path, MARIADB, "CALL refresh_totals(:a)"))["job"]
    inserts = declared.load(_sql_settings(tmp_path, MARIADB, "INSERT INTO t (a) VALUES (:a)"))["job"]
    assert calls.shared is None and inserts.shared is not None
