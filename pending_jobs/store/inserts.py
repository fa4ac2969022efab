"""Inserting jobs inside the caller's transaction; idempotency keys return the existing job's id."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from .. import db
from ..schema import pending_jobs as J

BULK_CHUNK = 1000


def insert_jobs(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert rows (column -> value; `run_at_delay` seconds become database-clock times); return ids in order."""
    ids: list[int] = []
    for start in range(0, len(rows), BULK_CHUNK):
        ids.extend(_insert_chunk(conn, rows[start : start + BULK_CHUNK]))
    return ids


def _delayed(conn: sa.Connection, row: dict[str, Any]) -> dict[str, Any]:
    from . import store_for

    values = dict(row)
    delay = values.pop("run_at_delay", None)
    if delay is not None:
        values["run_at"] = store_for(conn).after(sa.literal(float(delay), sa.Float))
    return values


def _insert_chunk(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> list[int]:
    keyed = any(row.get("idempotency_key") for row in rows)
    if len(rows) == 1 or keyed or any("run_at_delay" in row for row in rows):
        return [_insert_one(conn, _delayed(conn, row)) for row in rows]
    if conn.dialect.insert_executemany_returning_sort_by_parameter_order:  # PostgreSQL, SQLite, MariaDB
        result = conn.execute(sa.insert(J).returning(J.c.id, sort_by_parameter_order=True), list(rows))
        return [int(row[0]) for row in result]
    # MySQL has no INSERT ... RETURNING. One multi-row INSERT is an InnoDB "simple insert": its ids
    # are reserved together, spaced by auto_increment_increment (not 1 on Galera-style clusters).
    result = conn.execute(sa.insert(J).values(list(rows)))
    step = int(conn.execute(sa.text("SELECT @@auto_increment_increment")).scalar_one())
    first = int(result.lastrowid)
    return list(range(first, first + step * len(rows), step))


def _insert_one(conn: sa.Connection, values: dict[str, Any]) -> int:
    key = values.get("idempotency_key")
    dialect = db.dialect_name(conn)
    if not key:
        key_row = conn.execute(sa.insert(J).values(values)).inserted_primary_key
        assert key_row is not None
        return int(key_row[0])
    if dialect == "mysql":
        # LAST_INSERT_ID(id) makes lastrowid the existing row's id when the key already exists.
        stmt = mysql.insert(J).values(values)
        stmt = stmt.on_duplicate_key_update(id=sa.func.last_insert_id(J.c.id))
        return int(conn.execute(stmt).lastrowid)
    insert = postgresql.insert(J) if dialect == "postgresql" else sqlite.insert(J)
    upsert = insert.values(values).on_conflict_do_nothing(index_elements=["idempotency_key"]).returning(J.c.id)
    new_id = conn.execute(upsert).scalar_one_or_none()
    if new_id is not None:
        return int(new_id)
    return int(conn.execute(sa.select(J.c.id).where(J.c.idempotency_key == key)).scalar_one())
