"""Counters written by hand that are not whole numbers (SQLite stores text or an infinity in an INTEGER
column): `callbacks list` stopped with a traceback, and `list --json`/`show --json` printed `Infinity`, which
no strict JSON parser (JavaScript's JSON.parse, PHP's json_decode) reads."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import cli

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def strict(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_odd_counters_are_listed_and_json_stays_json(db_url: str, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO pending_jobs (task, payload, status, attempts, max_attempts, callback_url, callback_status, "
            "callback_attempts, finished_at) VALUES ('echo', '{}', 'failed', 9e999, -9e999, "
            "'https://hooks.example.com/x', 'failed', 9e999, '2020-01-01 00:00:00')"))
        conn.execute(sa.text(
            "INSERT INTO pending_jobs (task, payload, status, callback_url, callback_status, callback_attempts, "
            "finished_at) VALUES ('echo', '{}', 'succeeded', 'https://hooks.example.com/y', 'failed', 'many', "
            "'2020-01-01 00:00:00')"))
    env = {"PENDING_JOBS_DATABASE_URL": db_url}
    for args in (("callbacks", "list"), ("callbacks", "list", "--failed")):
        table = cli(*args, env=env)
        assert table.returncode == 0 and "Traceback" not in table.stderr, table.stderr
        assert "many" in table.stdout and "inf" in table.stdout
    listed = cli("callbacks", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert sorted(str(row["attempts"]) for row in strict(listed.stdout)) == ["inf", "many"]
    jobs = cli("list", "--json", env=env)
    assert jobs.returncode == 0, jobs.stderr
    first = strict(jobs.stdout)[1]
    assert (first["attempts"], first["max_attempts"], first["callback_attempts"]) == ("inf", "-inf", "inf")
    shown = cli("show", "1", "--json", env=env)
    assert shown.returncode == 0 and strict(shown.stdout)["attempts"] == "inf"
