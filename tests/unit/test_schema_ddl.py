"""`import pending_jobs` must not change how a host application's own tables compile."""

from __future__ import annotations

import subprocess
import sys

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.schema import CreateTable

DIALECTS = {"mysql": mysql.dialect(), "postgresql": postgresql.dialect(), "sqlite": sqlite.dialect()}

# The host's table, declared the way applications commonly do: a CURRENT_TIMESTAMP default.
FOREIGN = """
import sqlalchemy as sa
users = sa.Table("users", sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("created", sa.DateTime, server_default=sa.text("CURRENT_TIMESTAMP")),
    sa.Column("seen", sa.DateTime, server_default=sa.func.now()))
"""


def _ddl(dialect: str, import_first: bool) -> str:
    code = ("import pending_jobs, pending_jobs.migrate\n" if import_first else "") + FOREIGN + (
        "from sqlalchemy.dialects import mysql, postgresql, sqlite\n"
        "from sqlalchemy.schema import CreateTable\n"
        f"print(CreateTable(users).compile(dialect={dialect}.dialect()))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_importing_pending_jobs_leaves_a_foreign_tables_ddl_unchanged(dialect: str) -> None:
    before = _ddl(dialect, import_first=False)
    assert "CURRENT_TIMESTAMP" in before
    assert _ddl(dialect, import_first=True) == before


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_our_time_columns_default_to_the_utc_clock(dialect: str) -> None:
    from pending_jobs.schema import pending_jobs

    ddl = str(CreateTable(pending_jobs).compile(dialect=DIALECTS[dialect]))
    expected = {"mysql": "DEFAULT (UTC_TIMESTAMP(6))", "postgresql": "DEFAULT now()",
                "sqlite": "DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))"}[dialect]
    assert f"run_at {'DATETIME(6)' if dialect == 'mysql' else ''}".strip() in ddl
    assert ddl.count(expected) == 3  # run_at, created_at, updated_at
    assert "CURRENT_TIMESTAMP" not in ddl


def test_a_foreign_table_in_the_same_process_keeps_current_timestamp() -> None:
    import pending_jobs.schema  # noqa: F401

    users = sa.Table("users", sa.MetaData(), sa.Column("created", sa.DateTime,
                                                       server_default=sa.text("CURRENT_TIMESTAMP")))
    for dialect in DIALECTS.values():
        assert "DEFAULT CURRENT_TIMESTAMP" in str(CreateTable(users).compile(dialect=dialect))
