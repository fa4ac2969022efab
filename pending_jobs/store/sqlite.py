"""SQLite: single host only. Every transaction is BEGIN IMMEDIATE (see db.py), so claims serialise on
the database file's write lock and SKIP LOCKED is not needed; the shared UPDATE … RETURNING claim
(SQLite 3.35+) serves."""

from __future__ import annotations

import contextlib
import functools
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.dialects import sqlite

from ..errors import ConfigError
from ..models import count
from ..schema import db_now
from ..schema import pending_jobs as J
from .dialect import Dialect
from .history import add as add_errors
from .sqlite_guard import STOP_WAIT, GuardedConnection

# SQLite's primary result codes (the low byte of an extended code).
BUSY, LOCKED = 5, 6  # another connection holds the write lock: retry
INTERRUPT = 9  # sqlite3_interrupt, from a progress handler: a statement past its time
PROGRESS_STEPS = 10_000
READONLY = 8
UNAVAILABLE = (READONLY, 10, 13, 14)  # READONLY, IOERR, FULL, CANTOPEN: the file cannot be written now
NOTADB = 26  # database_url names a file that is no SQLite database: a setting to fix, not a bug (exit 1)


# SQLite's messages for a statement that can never run (it has no error numbers for these).
STATEMENT_WRONG = ("no such table", "no such column", "syntax error", "has no column named", "no such function",
                   "values for", "incomplete input", "unrecognized token", 'near "')


ISO_DATE = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*"  # how every time SQLAlchemy stores begins


def _file_of(url: sa.URL) -> Path | None:
    """The file an SQLite URL names (a path, or a `file:` URI with uri=true), or None for a database in memory."""
    path = url.database or ""
    if path.startswith("file:") and url.query.get("uri") == "true":
        if url.query.get("mode") == "memory":
            return None
        path = unquote(path.removeprefix("file:").partition("?")[0])
        if path.startswith("//"):  # file://host/path: the path after the (empty or localhost) authority
            path = "/" + path[2:].partition("/")[2]
    return None if path in ("", ":memory:") else Path(path)


class SQLite(Dialect):
    """SQLite 3.35+."""

    name: ClassVar[str] = "sqlite"
    concurrent_writers: ClassVar[bool] = False  # one writer: completions are not overlapped with claims
    reuses_ids: ClassVar[bool] = True  # no AUTOINCREMENT: a new row gets max(id) + 1, a deleted newest id again

    def engine(self, url: sa.URL, pool_size: int, create: bool = True, **options: Any) -> sa.Engine:
        if url.host:  # sqlite://jobs.sqlite3: the driver ignores a host, so it was a database in memory (or `/x`)
            raise ConfigError(f"database_url: {url.render_as_string(hide_password=True)} reads {url.host} as a host, "
                              f"not a file: give the file after three slashes (sqlite:///{url.host}, "
                              "sqlite:////abs/path/jobs.sqlite3)")
        path = _file_of(url)
        if path is None:  # SQLAlchemy's pool for it took no max_overflow: a TypeError and a traceback
            raise ConfigError("database_url: an in-memory SQLite database lives in one connection, and a run uses "
                              "several: give a file (sqlite:///path/jobs.sqlite3)")
        # "unable to open database file" read as an outage (exit 75, cron tries again for ever).
        if not path.parent.is_dir():
            raise ConfigError(f"database_url: the SQLite file's folder {path.parent} does not exist")
        if path.is_dir():
            raise ConfigError(f"database_url: {path} is a folder, not an SQLite file")
        if not create and not path.exists():
            # Connecting would create an empty file: a typo in the path left one behind on every cron tick.
            raise ConfigError(f"database_url: there is no SQLite file {path} (a typo? `pending-jobs migrate` creates "
                              "the jobs database)")
        options = {"pool_size": pool_size, "max_overflow": pool_size, "hide_parameters": True, **options}
        with warnings.catch_warnings():  # a misspelt `?timout=60`: SQLAlchemy's warning every tick, and ignored
            warnings.filterwarnings("error", "Query string argument", exc.SAWarning)
            try:
                engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30,
                                                             "factory": GuardedConnection}, **options)
            except exc.SAWarning as warning:
                raise ConfigError(f"database_url: {str(warning).split(' and are being ignored')[0]} (SQLite URI "
                                  "parameters need uri=true)") from None

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not pysqlite, issue BEGIN, so every transaction can be IMMEDIATE.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "checkin")
        def _checkin(dbapi_connection: Any, _record: Any) -> None:
            # `with_timeout` clears its deadline when the job's transaction ends; this, whatever ended it, so no
            # pooled connection interrupts the next statements run on it.
            if dbapi_connection is not None:  # None: an invalidated connection, closed
                dbapi_connection.set_progress_handler(None, 0)

        @event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            # IMMEDIATE takes the write lock up front: a deferred transaction that later writes can fail
            # with SQLITE_BUSY without waiting, which busy_timeout does not cover.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    def abandon(self, conn: sa.Connection) -> None:
        raw: GuardedConnection = conn.connection.dbapi_connection  # type: ignore[assignment]
        if not raw.close_under(conn.invalidate):
            raise RuntimeError(f"its thread stayed inside SQLite for {STOP_WAIT:g}s though interrupted (waiting for "
                               "a lock?); its transaction ends when that call returns")

    def retryable(self, error: BaseException) -> bool:
        return _primary_code(error) in (BUSY, LOCKED)

    def unavailable(self, error: BaseException) -> bool:
        return super().unavailable(error) or _primary_code(error) in UNAVAILABLE

    def config_problem(self, error: BaseException) -> str | None:
        if _primary_code(error) == NOTADB:
            return "database_url: the file is not an SQLite database (SQLite error 26, file is not a database)"
        return None

    def session_changed(self, error: BaseException) -> bool:
        return _primary_code(error) == READONLY  # PRAGMA query_only (or a read-only file: fails again)

    def timed_out(self, error: BaseException) -> bool:
        return _primary_code(error) == INTERRUPT  # the progress handler of `with_timeout` or `time_limit`

    def with_timeout(self, conn: sa.Connection, statements: Sequence[str], timeout: float) -> list[str] | None:
        # SQLite has no statement timeout: a progress handler interrupts a statement past the deadline until
        # this transaction ends, as PostgreSQL's SET LOCAL. Without it the runner's backstop closed the
        # connection under the worker thread still inside SQLite, and the process died (SIGSEGV).
        raw: Any = conn.connection.dbapi_connection
        _interrupt_after(raw, timeout)
        for end in ("commit", "rollback"):
            event.listen(conn, end, lambda *_: raw.set_progress_handler(None, 0), once=True)
        return None

    @contextlib.contextmanager
    def time_limit(self, conn: sa.Connection, seconds: float) -> Iterator[None]:
        raw: Any = conn.connection.dbapi_connection
        _interrupt_after(raw, seconds)
        try:
            yield
        finally:
            raw.set_progress_handler(None, 0)

    def upsert(self) -> Any:
        return sqlite.insert(J)

    def insert_ignore(self, table: sa.Table) -> sa.Insert:
        return sqlite.insert(table).on_conflict_do_nothing()

    def upsert_add(self, table: sa.Table, column: str) -> sa.Insert:
        insert = sqlite.insert(table)
        return insert.on_conflict_do_update(index_elements=list(table.primary_key.columns),
                                           set_={column: table.c[column] + insert.excluded[column]})

    @contextlib.contextmanager
    def tolerant_reads(self, conn: sa.Connection) -> Iterator[None]:
        raw: Any = conn.connection.dbapi_connection
        before = raw.text_factory
        raw.text_factory = _tolerant
        try:
            yield
        finally:
            raw.text_factory = before

    def unreadable_time(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool] | None:
        # SQLite stores what it is given: 'tomorrow' in run_at compares after every real time, for ever.
        # julianday() also reads 'now' and '12' (a day number), which Python does not: a time starts with
        # its date, as models.utc reads it.
        text = sa.type_coerce(column, sa.String)  # as stored, not as a time
        return sa.or_(sa.func.julianday(column).is_(None), text.op("NOT GLOB", is_comparison=True)(ISO_DATE))

    def due_queues(self, conn: sa.Connection) -> list[str]:
        try:
            return super().due_queues(conn)
        except exc.OperationalError as error:
            if not self.undecodable(error):
                raise
        # A queue name that is not UTF-8 can be matched by no claim: its jobs are failed, with the reason.
        names = sa.select(sa.cast(J.c.queue, sa.LargeBinary)).where(J.c.status == "pending").distinct()
        for (name,) in conn.execute(names).all():
            try:
                bytes(name).decode("utf-8")
            except UnicodeDecodeError:
                self.quarantine(conn, functools.partial(_pending_in_queue, name), {})
        return super().due_queues(conn)

    def undecodable(self, error: BaseException) -> bool:
        # Python's sqlite3 decodes TEXT as UTF-8 and raises this (its own message, before any row data).
        return str(getattr(error, "orig", "")).startswith("Could not decode to UTF-8")

    def quarantine(self, conn: sa.Connection, select: Callable[[Sequence[sa.ColumnElement[Any]]], sa.Select[Any]],
                   params: dict[str, Any]) -> int:
        """Read the candidate rows' text as bytes, and fail each whose text is not UTF-8 (its callback too:
        it could not be built). A slow path, taken only after a claim met such a row."""
        columns = QUARANTINE_COLUMNS
        # attempts as INTEGER: SQLite casts whatever a producer stored there without decoding it as text.
        found = conn.execute(select([J.c.id, sa.cast(J.c.attempts, sa.Integer),
                                     *(sa.cast(c, sa.LargeBinary) for c in columns)]), params).all()
        bad: dict[int, str] = {}
        history: list[tuple[int, int, str]] = []  # the reason in the job's error history, as for any failure
        for job_id, attempts, *values in found:
            for column, value in zip(columns, values, strict=True):
                try:
                    (value or b"").decode("utf-8")
                except UnicodeDecodeError as error:
                    bad[int(job_id)] = (f"{column.name} holds bytes that are not valid UTF-8 (at byte {error.start}): "
                                        "the row cannot be read, so it was failed without running")
                    if values[STATUS_AT] in (b"pending", b"running"):
                        history.append((int(job_id), count(attempts), bad[int(job_id)]))
                    break
        add_errors(conn, history)
        for job_id, reason in bad.items():
            has_callback = sa.and_(J.c.callback_url.is_not(None), sa.cast(J.c.callback_url, sa.LargeBinary) != b"")
            conn.execute(sa.update(J).where(J.c.id == job_id).values(
                status=sa.case((J.c.status.in_(("pending", "running")), "failed"), else_=J.c.status),
                last_error=sa.case((J.c.status.in_(("pending", "running")), reason), else_=J.c.last_error),
                finished_at=sa.func.coalesce(J.c.finished_at, db_now()), updated_at=db_now(), lease_expires_at=None,
                callback_status=sa.case((has_callback, "failed"), else_=sa.null()),
                callback_last_error=sa.case((has_callback, reason), else_=sa.null()), callback_next_at=None))
        return len(bad)

    def prepare_problem(self, conn: sa.Connection, statement: str) -> str | None:
        compiled = sa.text(statement).compile(dialect=_QMARK)
        cursor = conn.connection.cursor()
        try:  # SQLite compiles an EXPLAIN'd statement without running it
            cursor.execute(f"EXPLAIN {compiled}", (None,) * len(compiled.positiontup or []))
            cursor.fetchall()
            return None
        except Exception as error:
            return " ".join(str(error).split())
        finally:
            cursor.close()

    def permanent(self, error: BaseException) -> bool:
        text = str(getattr(error, "orig", "")).lower()
        return super().permanent(error) or any(marker in text for marker in STATEMENT_WRONG)

    def constraint_of(self, error: BaseException) -> str | None:
        text = str(getattr(error, "orig", ""))
        found = re.search(r"(UNIQUE|NOT NULL|CHECK|PRIMARY KEY) constraint failed: (.+)", text)
        if found:
            return f"{found.group(1)} constraint on {found.group(2).strip()}"
        return "a FOREIGN KEY constraint" if "FOREIGN KEY constraint failed" in text else None

    def room_limit(self, size: int, room: sa.ColumnElement[int]) -> int | sa.ColumnElement[int]:
        return sa.func.min(size, sa.func.max(room, 0))  # SQLite's scalar min and max: no LEAST, GREATEST

    def after(self, seconds: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        modifier = sa.func.printf("%+.6f seconds", seconds)
        return sa.func.strftime("%Y-%m-%d %H:%M:%f", "now", modifier)


QUARANTINE_COLUMNS = (J.c.task, J.c.queue, J.c.payload, J.c.callback_url, J.c.idempotency_key, J.c.status,
                      J.c.result, J.c.last_error)
"""The text columns a producer writes, read as bytes by the quarantine."""
STATUS_AT = 5  # status's place in QUARANTINE_COLUMNS

_QMARK = sqlite.pysqlite.dialect(paramstyle="qmark")  # how EXPLAIN numbers placeholders


def _pending_in_queue(name: bytes, columns: Sequence[sa.ColumnElement[Any]]) -> sa.Select[Any]:
    return sa.select(*columns).where(J.c.status == "pending", sa.cast(J.c.queue, sa.LargeBinary) == name)


def _tolerant(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _interrupt_after(raw: Any, seconds: float) -> None:
    """Interrupt the statements of driver connection `raw` that run past `seconds` from now (SQLITE_INTERRUPT),
    checked every PROGRESS_STEPS virtual machine steps (about a millisecond)."""
    deadline = time.monotonic() + seconds
    raw.set_progress_handler(lambda: time.monotonic() > deadline, PROGRESS_STEPS)


def _primary_code(error: BaseException) -> int | None:
    code = getattr(getattr(error, "orig", None), "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None
