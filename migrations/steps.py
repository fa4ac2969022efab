"""What a migration asks before each step, so that it can be run again over itself.

MariaDB and MySQL commit every DDL statement by itself. A migration that stopped halfway (a lost
connection, a missing privilege, a lock wait, Ctrl-C) kept the steps before the failure while the version
table still named the revision before it; the next `migrate` ran the migration from its start, failed on
its first step ("Duplicate column name") and every later `migrate` the same, so no run would start again.
Each step now asks whether its object is there first. PostgreSQL and SQLite roll a failed migration back
whole, so there everything is missing and every step runs. `migrate --sql` (no database to ask) writes
every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op

from pending_jobs.errors import ConfigError


def _inspector() -> sa.Inspector | None:
    # A new inspector each time: one caches what it read, and the steps between two questions change it.
    return None if context.is_offline_mode() else sa.inspect(op.get_bind())


def missing_table(name: str) -> bool:
    inspector = _inspector()
    return inspector is None or not inspector.has_table(name)


def missing_view(name: str) -> bool:
    inspector = _inspector()
    return inspector is None or name not in inspector.get_view_names()


def missing_column(table: str, column: str) -> bool:
    inspector = _inspector()
    return inspector is None or column not in {c["name"] for c in inspector.get_columns(table)}


def missing_index(table: str, name: str) -> bool:
    inspector = _inspector()
    return inspector is None or name not in {i["name"] for i in inspector.get_indexes(table)}


def missing_check(table: str, name: str) -> bool:
    inspector = _inspector()
    return inspector is None or name not in {c["name"] for c in inspector.get_check_constraints(table)}


def create_table(name: str, *items: Any, **options: Any) -> None:
    """`op.create_table`, unless the table is there: then it must be this table (every column of it), not another
    application's of the same name, which the migration's next steps would alter (MariaDB keeps what they did)."""
    inspector = _inspector()
    if inspector is None or not inspector.has_table(name):
        op.create_table(name, *items, **options)
        return
    have = {c["name"] for c in inspector.get_columns(name)}
    lacking = [item.name for item in items if isinstance(item, sa.Column) and item.name not in have]
    if lacking:
        raise ConfigError(
            f"this database already has a table {name} that pending-jobs did not make (it has no column "
            f"{', '.join(lacking)}), and pending-jobs needs that name: migrate changed nothing; give pending-jobs "
            f"a database of its own (database_url) or rename that table")


def create_index(name: str, table: str, columns: Sequence[Any], **options: Any) -> None:
    """`op.create_index`, unless the table has an index of that name."""
    if missing_index(table, name):
        op.create_index(name, table, columns, **options)


def add_column(table: str, column: sa.Column[Any]) -> None:
    """`op.add_column`, unless the table has a column of that name."""
    if missing_column(table, column.name):
        op.add_column(table, column)
