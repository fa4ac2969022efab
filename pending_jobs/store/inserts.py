"""Inserting jobs inside the caller's transaction; idempotency keys return the existing job's id."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from .. import db
from ..schema import pending_jobs as J

BULK_CHUNK = 1000
# Columns the PostgreSQL bulk path binds as arrays, with the array type each is cast to.
_UNNEST_TYPES = {"task": "varchar[]", "payload": "jsonb[]", "queue": "varchar[]", "priority": "int[]",
                 "max_attempts": "int[]", "callback_url": "varchar[]"}


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
    if db.dialect_name(conn) == "postgresql" and _uniform(rows, _UNNEST_TYPES.keys()):
        return _insert_unnest(conn, rows)
    if conn.dialect.insert_executemany_returning_sort_by_parameter_order:  # PostgreSQL, SQLite, MariaDB
        result = conn.execute(sa.insert(J).returning(J.c.id, sort_by_parameter_order=True), list(rows))
        return [int(row[0]) for row in result]
    # MySQL has no INSERT ... RETURNING. One multi-row INSERT is an InnoDB "simple insert": its ids
    # are reserved together, spaced by auto_increment_increment (not 1 on Galera-style clusters).
    result = conn.execute(sa.insert(J).values(list(rows)))
    step = int(conn.execute(sa.text("SELECT @@auto_increment_increment")).scalar_one())
    first = int(result.lastrowid)
    return list(range(first, first + step * len(rows), step))


def _uniform(rows: Sequence[dict[str, Any]], allowed: Iterable[str]) -> bool:
    """Every row sets the same columns, all of them in `allowed`."""
    keys = rows[0].keys()
    return set(keys) <= set(allowed) and all(row.keys() == keys for row in rows)


def _insert_unnest(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> list[int]:
    """PostgreSQL: one INSERT ... SELECT FROM unnest(one array per column), whatever the row count.

    The SQL text depends only on the columns, so psycopg parses and prepares it once; a multi-row
    VALUES list is a new, long statement for psycopg to scan on every chunk. ORDER BY the ordinality
    makes the sequence hand out ids in row order (what SQLAlchemy's insertmanyvalues relies on too),
    so the sorted RETURNING ids match the rows.
    """
    columns = list(rows[0])
    arrays = ", ".join(f"CAST(:{name} AS {_UNNEST_TYPES[name]})" for name in columns)
    names = ", ".join(columns)
    sql = sa.text(f"INSERT INTO pending_jobs ({names}) SELECT {names} FROM unnest({arrays}) WITH ORDINALITY "
                  f"AS u({names}, n) ORDER BY n RETURNING id")
    params: dict[str, list[Any]] = {name: [row[name] for row in rows] for name in columns}
    if "payload" in params:
        params["payload"] = [json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
                             for payload in params["payload"]]
    return sorted(int(row[0]) for row in conn.execute(sql, params))


INSERT_JOB = sa.insert(J)


def _insert_one(conn: sa.Connection, values: dict[str, Any]) -> int:
    key = values.get("idempotency_key")
    dialect = db.dialect_name(conn)
    if not key:
        # Plain values go as parameters of one prebuilt statement, which SQLAlchemy compiles once;
        # a fresh insert().values(...) per job costs more than the INSERT's round trip.
        plain = not any(isinstance(value, sa.ColumnElement) for value in values.values())
        result = conn.execute(INSERT_JOB, values) if plain else conn.execute(sa.insert(J).values(values))
        key_row = result.inserted_primary_key
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
