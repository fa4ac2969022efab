"""PostgreSQL: one UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING per claim."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from ..errors import DatabaseUnavailable
from ..schema import db_now
from .base import J, Store


class PostgresStore(Store):
    """Uses the shared claim; only the clock arithmetic and the read-only check differ."""

    dialect = "postgresql"
    json_accepts_nul = False  # jsonb rejects \u0000

    def after(self, seconds: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        return db_now() + sa.literal_column("interval '1 microsecond'") * sa.func.round(seconds * 1_000_000)

    def _id_in(self) -> sa.ColumnElement[bool]:
        # One array parameter instead of an expanded IN list: the SQL text is the same for every
        # batch size, so psycopg prepares it once and the server plans it once.
        return J.c.id == sa.any_(sa.bindparam("ids", type_=postgresql.ARRAY(sa.BigInteger)))

    def check_writable(self) -> None:
        def work(conn: sa.Connection) -> bool:
            return str(conn.execute(sa.text("SHOW transaction_read_only")).scalar()) == "on"

        if self.transaction(work):
            raise DatabaseUnavailable("the database is read-only (transaction_read_only=on): nothing claimed")
