"""Fixtures of the contract suite: the runner in-process with tasks declared in the config."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import declared, registry
from pending_jobs.models import Job, RunReport
from pending_jobs.run import run_once
from pending_jobs.store import Store, dialect_for
from tests.conftest import settings_for


@pytest.fixture
def run_declared(store: Store, db_url: str) -> Any:
    """`run_declared(tables, **settings)`: one in-process run with these `[task.NAME]` tables and tests.jobs."""

    def _run(tables: dict[str, dict[str, Any]], **overrides: Any) -> RunReport:
        settings = settings_for(db_url, declared_tasks=tables, **overrides)
        tasks = declared.merge(registry.load(settings.tasks), declared.load(settings))
        return run_once(store, tasks, settings)

    return _run


def outcome(store: Store, job_id: int) -> Job:
    """The job's row after a run."""
    job = store.get(job_id)
    assert job is not None
    return job


USERS = {
    "mysql": "CREATE TABLE users (id BIGINT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(64) NOT NULL,"
             " email VARCHAR(191), age INT, balance DECIMAL(10, 2), CONSTRAINT users_email_key UNIQUE (email))",
    "postgresql": "CREATE TABLE users (id BIGSERIAL PRIMARY KEY, name VARCHAR(64) NOT NULL, email VARCHAR(191),"
                  " age INT, balance DECIMAL(10, 2), CONSTRAINT users_email_key UNIQUE (email))",
    "sqlite": "CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(64) NOT NULL, email VARCHAR(191),"
              " age INT, balance DECIMAL(10, 2), CONSTRAINT users_email_key UNIQUE (email))",
}
AUDIT = "CREATE TABLE audit (note VARCHAR(64) NOT NULL)"
SAVE_USER = {"sql": "INSERT INTO users (name, email) VALUES (:name, :email)"}


@pytest.fixture
def users(engine: sa.Engine) -> sa.Engine:
    """The engine, with an application's `users` and `audit` tables (the declared sql task tests)."""
    with engine.begin() as conn:
        conn.exec_driver_sql(USERS[dialect_for(engine).name])
        conn.exec_driver_sql(AUDIT)
    return engine
