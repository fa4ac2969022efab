"""`pending-jobs check` on declared tasks: SQL prepared (never run) on each database, commands and URLs checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from pending_jobs import declared, enqueue
from pending_jobs.store import dialect_for
from tests.conftest import cli, scalar, settings_for
from tests.processes import script

SETUP = "CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(64), email VARCHAR(191))"


def test_sql_is_prepared_not_run_and_each_refusal_is_named(engine: sa.Engine, db_url: str) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(SETUP)
    cast = "CAST(:n AS INTEGER)" if dialect_for(engine).name != "mysql" else "CAST(:n AS SIGNED)"
    tables = {
        "save_user": {"sql": ["INSERT INTO users (id, name, email) VALUES (:id, :name, :email)",
                              f"UPDATE users SET name = :name WHERE name LIKE 'a%' AND id = {cast}"]},
        "lost": {"sql": "INSERT INTO no_such_table (a) VALUES (:a)"},
        "typo": {"sql": ["SELECT 1", "SELEC name FROM users"]},
        "column": {"sql": "SELECT no_such_column FROM users WHERE id = :id"},
    }

    problems, notes = declared.check(settings_for(db_url, declared_tasks=tables), engine)

    assert scalar(engine, "SELECT COUNT(*) FROM users") == 0  # prepared, never executed
    assert [p.split(":")[0] for p in problems] == ["task lost", "task typo", "task column"]
    assert problems[0].startswith("task lost: its SQL does not prepare: ") and "no_such_table" in problems[0]
    assert problems[1].startswith("task typo: statement 2 does not prepare: ") and "SELEC" in problems[1]
    assert "no_such_column" in problems[2]
    assert notes == []


def test_check_runs_no_statement_it_refuses(engine: sa.Engine, db_url: str) -> None:
    """PostgreSQL's PREPARE ran every statement of "SELECT 1; COMMIT; DELETE FROM victim": `check` deleted
    the rows (found by the declared-task review). Refused statements are named, never sent."""
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE victim (x INTEGER)")
        conn.exec_driver_sql("INSERT INTO victim (x) VALUES (1), (2), (3)")
    tables = {"evil": {"sql": "SELECT 1; COMMIT; DELETE FROM victim"}}

    problems, _ = declared.check(settings_for(db_url, declared_tasks=tables), engine)

    assert problems == ["task evil: its SQL does not prepare: one statement per entry: this one holds several (a "
                        "';' outside quotes); list each in sql = [...]"]
    assert scalar(engine, "SELECT COUNT(*) FROM victim") == 3


def test_ddl_that_runs_in_a_job_does_not_fail_check(engine: sa.Engine, db_url: str, backend: str) -> None:
    """PostgreSQL's PREPARE takes no DDL: check failed CREATE TABLE with a syntax error, though the job runs
    it (MariaDB refuses DDL in an sql task: it commits on its own)."""
    if backend == "mysql":
        pytest.skip("DDL commits on its own on MariaDB: refused, see test_declared_spec")
    tables = {"ddl": {"sql": "CREATE TABLE IF NOT EXISTS made (x INTEGER)"},
              "typo": {"sql": "SELEC 1"}}  # a word PREPARE does not know is still refused by the database

    problems, _ = declared.check(settings_for(db_url, declared_tasks=tables), engine)

    assert [problem.split(":")[0] for problem in problems] == ["task typo"]
    assert not sa.inspect(engine).has_table("made")


def test_commands_urls_and_other_databases_are_checked(engine: sa.Engine, db_url: str, tmp_path: Path) -> None:
    tables = {
        "ok": {"command": [script(tmp_path, "ok.sh", "exit 0\n")], "cwd": str(tmp_path)},
        "on_path": {"command": ["sh", "-c", "true"]},
        "missing": {"command": ["no-such-program-pj"]},
        "plain": {"command": [script(tmp_path, "plain.sh", "exit 0\n", executable=False)]},
        "nowhere": {"command": ["true"], "cwd": str(tmp_path / "gone")},
        "unresolvable": {"url": "http://no-such-host.invalid/jobs"},
        "internal": {"url": "http://127.0.0.1:9/jobs"},
        "elsewhere": {"sql": "SELECT 1", "database_url": f"sqlite:///{tmp_path / 'other.sqlite3'}"},
        "typo": {"sql": "SELECT 1", "database_url": f"sqlite:///{tmp_path / 'othr.sqlite3'}"},
        "no_folder": {"sql": "SELECT 1", "database_url": f"sqlite:///{tmp_path / 'gone' / 'other.sqlite3'}"},
    }
    (tmp_path / "other.sqlite3").touch()

    problems, notes = declared.check(settings_for(db_url, declared_tasks=tables), engine)

    assert problems == [
        "task missing: command not found: 'no-such-program-pj' does not exist on PATH",
        f"task plain: command is not executable: '{tmp_path / 'plain.sh'}'",
        f"task nowhere: working directory '{tmp_path / 'gone'}' does not exist",
        f"task unresolvable: cannot resolve no-such-host.invalid: {problems[3].split(': ', 2)[2]}",
        # A typo in an SQLite path was a new, empty database, and a problem only when the SQL met no table.
        f"task typo: database_url: there is no SQLite file {tmp_path / 'othr.sqlite3'} (a typo? `pending-jobs "
        "migrate` creates the jobs database)",
        f"task no_folder: database_url: the SQLite file's folder {tmp_path / 'gone'} does not exist",
    ]
    assert not (tmp_path / "othr.sqlite3").exists()
    assert notes == [
        "task unresolvable: no secret and no callback_secret, so its requests are unsigned",
        "task internal: no secret and no callback_secret, so its requests are unsigned",
        "task elsewhere runs on its own database_url: at least once, not exactly-once",
        "task typo runs on its own database_url: at least once, not exactly-once",
        "task no_folder runs on its own database_url: at least once, not exactly-once",
    ]


def test_the_check_command_reports_declared_tasks(db_url: str, tmp_path: Path) -> None:
    config = tmp_path / "pending-jobs.toml"
    config.write_text(f'database_url = "{db_url}"\ncallback_secret = ["whsec_dGVzdHNlY3JldA=="]\n'
                      '[task.report]\ncommand = ["true"]\n'
                      '[task.lost]\nsql = "DELETE FROM no_such_table WHERE id = :id"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text(f'database_url = "{db_url}"\n[task.report]\ncommand = "true"\n')

    failing = cli("check", "--config", str(config), "--json", env={"PENDING_JOBS_TASKS": ""})
    misconfigured = cli("check", "--config", str(bad), env={"PENDING_JOBS_TASKS": ""})

    checks = {c["name"]: c for c in json.loads(failing.stdout)["checks"]}
    assert failing.returncode == 5, failing.stderr
    assert checks["handlers"]["ok"] is False and "task lost: its SQL does not prepare" in checks["handlers"]["detail"]
    assert misconfigured.returncode == 2
    assert "[task.report] command: must be a list of arguments" in misconfigured.stdout


def test_a_run_refuses_a_name_declared_both_ways(db_url: str, tmp_path: Path) -> None:
    config = tmp_path / "pending-jobs.toml"
    config.write_text(f'database_url = "{db_url}"\n[task.echo]\ncommand = ["true"]\n')

    both = cli("run", "--config", str(config))

    assert both.returncode == 2
    assert "task 'echo' is both declared in the config ([task.echo]) and registered by a Python" in both.stderr


def test_a_minimal_config_checks_clean_and_names_each_declared_kind(db_url: str, tmp_path: Path) -> None:
    config = tmp_path / "pending-jobs.toml"  # defaults only: the command's timeout is within the lease
    config.write_text(f'database_url = "{db_url}"\ncallback_secret = ["whsec_dGVzdHNlY3JldA=="]\n'
                      '[task.report]\ncommand = ["true"]\n[task.again]\ncommand = ["true"]\nmax_attempts = 2\n')
    checked = cli("check", "--config", str(config), "--json", env={"PENDING_JOBS_TASKS": ""})
    detail = {c["name"]: c for c in json.loads(checked.stdout)["checks"]}["handlers"]["detail"]
    assert checked.returncode == 0, checked.stdout
    assert "report → declared (CommandTask)" in detail and "again → declared (CommandTask)" in detail, detail
    assert "longer than the lease" not in detail, detail


def test_a_run_refuses_a_statement_that_would_commit_apart_from_the_job(engine: sa.Engine, db_url: str,
                                                                         tmp_path: Path) -> None:
    # COMMIT ends the job's transaction on every database; a TRUNCATE also does on MariaDB/MySQL (elsewhere
    # it is transactional): both would let the job's writes commit apart from its outcome.
    config = tmp_path / "pending-jobs.toml"
    config.write_text(f'database_url = "{db_url}"\n[task.wipe]\n'
                      'sql = ["INSERT INTO users (name) VALUES (:name)", "COMMIT"]\n')
    with engine.begin() as conn:
        conn.exec_driver_sql(SETUP)
    job_id = enqueue(engine, "wipe", {"name": "ann"})

    run = cli("run", "--config", str(config), env={"PENDING_JOBS_TASKS": ""})
    check = cli("check", "--config", str(config), env={"PENDING_JOBS_TASKS": ""})

    said = "[task.wipe] sql: statement 2 of 2: COMMIT would end the job's transaction"
    assert run.returncode == 2 and said in run.stderr, run.stderr
    assert check.returncode == 5 and said in check.stdout, check.stdout  # check: a task that cannot run
    assert scalar(engine, f"SELECT status FROM pending_jobs WHERE id = {job_id}") == "pending"  # nothing ran
    assert scalar(engine, "SELECT COUNT(*) FROM users") == 0
