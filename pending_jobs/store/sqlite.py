"""SQLite: single host only. Every transaction is BEGIN IMMEDIATE (see db.py), so claims serialise on
the database file's write lock and SKIP LOCKED is not needed; the shared UPDATE … RETURNING claim
(SQLite 3.35+) serves."""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import sqlite

from ..schema import pending_jobs as J
from .dialect import Dialect

# SQLite's primary result codes (the low byte of an extended code).
BUSY, LOCKED = 5, 6  # another connection holds the write lock: retry
UNAVAILABLE = (8, 10, 13, 14)  # READONLY, IOERR, FULL, CANTOPEN: the file cannot be written now


class SQLite(Dialect):
    """SQLite 3.35+."""

    name: ClassVar[str] = "sqlite"
    concurrent_writers: ClassVar[bool] = False  # one writer: completions are not overlapped with claims

    def engine(self, url: sa.URL, pool_size: int, **options: Any) -> sa.Engine:
        options = {"pool_size": pool_size, "max_overflow": pool_size, "hide_parameters": True, **options}
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **options)

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not pysqlite, issue BEGIN, so every transaction can be IMMEDIATE.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            # IMMEDIATE takes the write lock up front: a deferred transaction that later writes can fail
            # with SQLITE_BUSY without waiting, which busy_timeout does not cover.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    def retryable(self, error: BaseException) -> bool:
        return _primary_code(error) in (BUSY, LOCKED)

    def unavailable(self, error: BaseException) -> bool:
        return super().unavailable(error) or _primary_code(error) in UNAVAILABLE

    def upsert(self) -> Any:
        return sqlite.insert(J)

    def after(self, seconds: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        modifier = sa.func.printf("%+.6f seconds", seconds)
        return sa.func.strftime("%Y-%m-%d %H:%M:%f", "now", modifier)

    def clock_value(self, value: Any) -> dt.datetime | None:
        # SQLite returns an expression of the clock as the text strftime made, not a datetime.
        return super().clock_value(dt.datetime.fromisoformat(value) if isinstance(value, str) else value)


def _primary_code(error: BaseException) -> int | None:
    code = getattr(getattr(error, "orig", None), "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None
