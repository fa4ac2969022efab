"""SQLite: single host only. Every transaction is BEGIN IMMEDIATE (see db.py), so claims serialise
on the database file's write lock and SKIP LOCKED is not needed."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .base import Store


class SQLiteStore(Store):
    """Uses the shared UPDATE ... RETURNING claim (SQLite 3.35+)."""

    dialect = "sqlite"
    concurrent_writers = False

    def after(self, seconds: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        modifier = sa.func.printf("%+.6f seconds", seconds)
        return sa.func.strftime("%Y-%m-%d %H:%M:%f", "now", modifier)
