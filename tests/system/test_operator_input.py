"""What an operator types is checked before it reaches the database: a refusal is a usage error (exit 2)
naming what is wrong, never a driver's traceback; a queue name is printed with its control characters
escaped, as the tables print every name."""

from __future__ import annotations

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
