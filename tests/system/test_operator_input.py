"""What an operator types is checked before it reaches the database: a refusal is a usage error (exit 2)
naming what is wrong, never a driver's traceback; a queue name is printed with its control characters
escaped, as the tables print every name."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from pending_jobs.store import OpsStore, Store
from tests.conftest import cli


def test_pause_refuses_a_queue_name_no_queue_column_holds(db_url: str, store: Store) -> None:
    env = {"PENDING_JOBS_DATABASE_URL": db_url}
    for command in ("pause", "resume"):
        done = cli(command, "q" * 65, env=env)
        assert done.returncode == 2, done.stderr
        assert "a queue name of 1 to 64 characters" in done.stderr
        assert "Traceback" not in done.stderr and "unexpected error" not in done.stderr
    assert OpsStore(store).paused() == []
    assert cli("pause", "q" * 64, env=env).returncode == 0


@pytest.mark.parametrize(("args", "why"), [
    (["list", "--task", "t\udcff"], "argument --task: must be valid UTF-8"),  # the byte 0xff in argv
    (["list", "--queue", "q\udcff"], "argument --queue: a queue name must be valid UTF-8"),
    (["retry", "--failed", "--task", "\udcff"], "argument --task: must be valid UTF-8"),
    (["run", "--queue", "q\udcff"], "argument --queue: a queue name must be valid UTF-8"),
])
def test_a_filter_that_is_not_utf8_is_a_usage_error(db_url: str, args: list[str], why: str) -> None:
    done = cli(*args, env={"PENDING_JOBS_DATABASE_URL": db_url})  # it was UnicodeEncodeError, exit 1
    assert done.returncode == 2 and why in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("value", ["0", "99999999999999999999999"])
@pytest.mark.parametrize("command", ["show", "retry", "cancel"])
def test_a_job_id_no_bigint_holds_is_a_usage_error(db_url: str, engine: sa.Engine, command: str, value: str) -> None:
    done = cli(command, value, env={"PENDING_JOBS_DATABASE_URL": db_url})
    assert done.returncode == 2, done.stderr
    assert f"a job id is a whole number from 1 to {2**63 - 1}, not {value}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("command", "flag"), [(["purge", "--older-than"], "--older-than"),
                                               (["list", "--since"], "--since"),
                                               (["retry", "--failed", "--since"], "--since")])
def test_an_age_beyond_the_documented_range_is_a_usage_error_naming_the_flag(db_url: str, engine: sa.Engine,
                                                                            command: list[str], flag: str) -> None:
    env = {"PENDING_JOBS_DATABASE_URL": db_url}
    done = cli(*command, "1e308d", env=env)
    assert done.returncode == 2, done.stderr
    assert f"argument {flag}: 1e308d is outside 0 s to 3650 d" in done.stderr
    assert cli(*command, "3650d", env=env).returncode == 0


@pytest.mark.parametrize(("name", "shown"), [("x\ny", "x\\x0ay"), ("x\x1b[31m", "x\\x1b[31m")])
def test_a_paused_queue_name_is_printed_escaped(db_url: str, engine: sa.Engine, name: str, shown: str) -> None:
    env = {"PENDING_JOBS_DATABASE_URL": db_url}  # shown: as the counts table of `status` shows the name
    paused = cli("pause", name, env=env)
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout == (f"queue {shown} paused: no runner claims its jobs until `pending-jobs resume {shown}`\n")
    status = cli("status", env=env)
    assert status.returncode == 0, status.stderr
    assert f"queue {shown} is PAUSED since " in status.stdout
    assert name not in status.stdout
    resumed = cli("resume", name, env=env)
    assert resumed.stdout == f"queue {shown} resumed\n"


@pytest.mark.parametrize("value", ["0", "-5", "1000001", "99999999999999999999"])
def test_a_list_limit_outside_its_range_is_a_usage_error(db_url: str, engine: sa.Engine, value: str) -> None:
    # 0 and -5 printed one row; 10**20 was a driver's error (an overflow, MariaDB's syntax error with the SQL).
    done = cli("list", "--limit", value, env={"PENDING_JOBS_DATABASE_URL": db_url})
    assert done.returncode == 2, done.stderr
    assert f"argument --limit: {value} is outside 1 to 1,000,000" in done.stderr
    assert cli("list", "--limit", "1000000", env={"PENDING_JOBS_DATABASE_URL": db_url}).returncode == 0


@pytest.mark.parametrize("value", ["0", "-5", "1000001", "99999999999999999999"])
def test_a_callbacks_list_limit_outside_its_range_is_a_usage_error(db_url: str, engine: sa.Engine, value: str) -> None:
    # As `list --limit` was: 0 and -5 printed one row; 10**20 was a driver's error (an overflow on SQLite,
    # bigint out of range on PostgreSQL, MariaDB's syntax error with the SQL), exit 1 with a traceback.
    done = cli("callbacks", "list", "--limit", value, env={"PENDING_JOBS_DATABASE_URL": db_url})
    assert done.returncode == 2, done.stderr
    assert f"argument --limit: {value} is outside 1 to 1,000,000" in done.stderr
    assert "Traceback" not in done.stderr and "unexpected error" not in done.stderr
    assert cli("callbacks", "list", "--limit", "1000000", env={"PENDING_JOBS_DATABASE_URL": db_url}).returncode == 0


@pytest.mark.parametrize("command", [["check"], ["run"], ["list"]])
def test_a_config_file_that_is_not_utf8_is_a_configuration_error(db_url: str, tmp_path: Path,
                                                                 command: list[str]) -> None:
    # A Latin-1 comment: a traceback and exit 1 (cron mails it as a crash), not the configuration's exit 2.
    config = tmp_path / "jobs.toml"
    config.write_bytes(f'database_url = "{db_url}"\n# caf\xe9\n'.encode("latin-1"))
    done = cli(*command, "--config", str(config))
    assert done.returncode == 2, done.stderr
    said = done.stdout + done.stderr
    assert f"config file {config} is not valid TOML: byte 0xe9 at offset " in said and "is not UTF-8" in said
    assert "Traceback" not in done.stderr
