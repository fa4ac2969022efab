"""How commands end: one mapping to exit codes, a bug is never dressed up as a user message, and a
closed pipe ends the command quietly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import cli, enqueue_many
from pending_jobs.cli import core
from tests.conftest import ROOT
from tests.conftest import cli as command_line


def test_a_lookup_error_from_a_bug_is_reported_as_a_bug(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    def broken(args: Any) -> int:
        return {"a": 1}["missing"]  # a KeyError: a bug, not "job not pending"

    monkeypatch.setattr(core, "cmd_status", broken)
    code = cli.main(["status", "--database-url", "sqlite://"])
    assert code == 1
    err = capsys.readouterr().err
    assert "unexpected error: KeyError: 'missing'" in err
    assert "Traceback (most recent call last)" in err  # with its traceback, for the log


def test_run_job_of_a_job_that_is_not_pending_is_one_line_and_exit_1(db_url: str, engine: sa.Engine) -> None:
    from tests.conftest import cli as run_cli

    done = run_cli("run", "--job", "12345", env={"PENDING_JOBS_DATABASE_URL": db_url})
    assert done.returncode == 1
    assert done.stderr.strip() == "pending-jobs: job 12345 is missing, not pending: nothing to run"


@pytest.mark.parametrize("command", [["list", "--json", "--limit", "2000"], ["list", "--limit", "2000"],
                                     ["show", "1"], ["show", "--json", "1"],
                                     ["callbacks", "list", "--limit", "2000"],
                                     ["callbacks", "list", "--json", "--limit", "2000"]])
def test_a_closed_pipe_ends_the_command_quietly(db_url: str, engine: sa.Engine, command: list[str]) -> None:
    # Job 1's payload and 2,000 rows of a listing are far larger than a pipe's buffer (64 KiB), so each
    # command is still writing when the reader goes away.
    enqueue_many(engine, [{"task": "echo", "payload": {"text": "x" * 200_000}}])
    enqueue_many(engine, [{"task": "echo", "payload": {"text": "x" * 200}} for _ in range(1999)])
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET status = 'failed', callback_url = 'http://example.com/hook', "
                             "callback_status = 'failed', callback_attempts = 1, callback_last_error = :e"),
                     {"e": "refused " * 20})
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PENDING_JOBS_DATABASE_URL": db_url}
    proc = subprocess.Popen([sys.executable, "-m", "pending_jobs", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()  # what `| head -1` reads, then it exits
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141  # 128 + SIGPIPE, as a Unix tool the pipe killed
    assert err == ""


@pytest.mark.parametrize("command", [["run"], ["check"], ["status"]])
def test_a_sqlite_file_in_a_folder_that_does_not_exist_is_a_configuration_error(tmp_path: Path,
                                                                                command: list[str]) -> None:
    # Exit 75 said "unreachable, try again": cron would have tried again every minute, for ever.
    url = f"sqlite:///{tmp_path / 'missing' / 'jobs.sqlite3'}"
    done = command_line(*command, env={"PENDING_JOBS_DATABASE_URL": url})
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"the SQLite file's folder {tmp_path / 'missing'} does not exist" in done.stdout + done.stderr


@pytest.mark.parametrize("command", [["run"], ["status"], ["migrate"], ["check", "--json"]])
def test_a_file_that_is_not_an_sqlite_database_is_a_configuration_error(tmp_path: Path, command: list[str]) -> None:
    # A database_url naming the wrong file (a dump, a config file) was "unexpected error: DatabaseError: file is
    # not a database" with a traceback and exit 1, and `check --json` printed no JSON.
    path = tmp_path / "jobs.sqlite3"
    path.write_text("CREATE TABLE users (id INT);\n" * 200)
    done = command_line(*command, env={"PENDING_JOBS_DATABASE_URL": f"sqlite:///{path}"})
    assert "the file is not an SQLite database" in done.stdout + done.stderr, (done.stdout, done.stderr)
    if command[0] == "check":
        assert done.returncode == 3 and json.loads(done.stdout)["exit_code"] == 3
    else:
        assert (done.returncode, len(done.stderr.strip().splitlines())) == (2, 1), done.stderr


def test_check_json_names_a_missing_sqlite_folder_in_its_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing' / 'jobs.sqlite3'}"
    done = command_line("check", "--json", env={"PENDING_JOBS_DATABASE_URL": url})
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert done.returncode == 2 and checks["configuration"]["ok"] is False
    assert "the SQLite file's folder" in checks["configuration"]["detail"]


@pytest.mark.parametrize(("table", "why"), [("prot = 8081", "unknown setting(s) in [web]: prot"),
                                            ('port = "eighty"', "[web] port: must be a whole number")])
def test_check_fails_its_configuration_on_a_bad_web_table(tmp_path: Path, table: str, why: str) -> None:
    # `check` said "configuration ok" while `web` refused the same file with exit 2.
    path = tmp_path / "pj.toml"
    path.write_text(f"[web]\n{table}\n")
    done = command_line("check", "--json", "--config", str(path),
                        env={"PENDING_JOBS_DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.sqlite3'}"})
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert done.returncode == 2 and checks["configuration"]["ok"] is False, done.stdout
    assert why in checks["configuration"]["detail"]
