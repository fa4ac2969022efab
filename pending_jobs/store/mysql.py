"""MariaDB 10.6+ and MySQL 8.0.1+: everything they do differently from the shared SQL.

Neither can SELECT … LIMIT inside an UPDATE of the same table, and MariaDB has no UPDATE … RETURNING,
so claims lock with a SELECT … FOR UPDATE SKIP LOCKED, then update by primary key. Claims run under
READ COMMITTED (set on the engine, db.py) so no gap locks block producers' INSERTs.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import mysql

from .. import db
from ..schema import callback_attempts, db_now
from ..schema import limits as L
from ..schema import pending_jobs as J
from . import mysql_connect
from .dialect import Dialect, Locked
from .mysql_hosts import NOT_READY, galera_aware, split_hosts

DEADLOCK = 1213  # the whole transaction was rolled back: run it again
LOCK_WAIT_TIMEOUT = 1205  # only the statement was rolled back: roll back the transaction, then run it again
READ_ONLY = (1290, 1792, 1836)  # --read-only / read-only transaction / read-only replica
GONE = (2002, 2003, 2006, 2013, 2055, 1927, 1053, 4031)  # cannot connect / lost / killed / shutdown
LOST = (2006, 2013, 2055, 1927, 4031)  # an open connection dropped; the server may still be up
# access denied (to the database) / unknown database / TLS the URL asks for and the server does not offer
LOGIN_REFUSED = (1044, 1045, 1049, 1698, 2026)
DENIED = (1142, 1143)  # command / column denied to user: a grant is missing (a setting to fix, not a traceback)
SERVER_STATUS_IN_TRANS = 1
# Errors of a declared SQL task that another attempt cannot fix. PyMySQL raises several as
# OperationalError (any number it does not map, such as 1054 unknown column), so the number decides.
INTEGRITY = (1048, 1062, 1451, 1452, 3819, 4025)  # NOT NULL, duplicate, foreign key x2, MySQL / MariaDB CHECK
PERMANENT = {
    *INTEGRITY,
    1054,  # unknown column
    1064,  # syntax error
    1136,  # column count does not match value count
    *DENIED,
    1146,  # table does not exist
    1242,  # subquery returns more than one row
    1264,  # out of range value
    1292,  # incorrect (truncated) value
    1305,  # function does not exist
    1364,  # field has no default value
    1366,  # incorrect value for the column's type
    1406,  # data too long
}
SESSION_CHANGED = (1099, 1100, 1792)  # a table not locked (for write) under LOCK TABLES / a read-only transaction
STATEMENT_TIMEOUT = (1969, 3024)  # MariaDB max_statement_time / MySQL max_execution_time
CONSTRAINT_PATTERNS = (
    (r"for key '([^']+)'", "constraint {}"),  # 1062: the unique key (MySQL 8: table.key)
    (r"CONSTRAINT `([^`]+)`", "constraint {}"),  # foreign key, MariaDB CHECK
    (r"[Cc]heck constraint '([^']+)'", "constraint {}"),  # MySQL 8 CHECK
    (r"Column '([^']+)' cannot be null", "NOT NULL on column {}"),
)
log = logging.getLogger(__name__)
PREPARED = "pending_jobs_check"  # MySQL protocol: a transaction is open (pymysql.constants.SERVER_STATUS)


def _kill(engine: sa.Engine, raw: Any, sock: socket.socket | None) -> None:
    """KILL the connection `raw` on its server, if the connection asking reaches that same server: a thread id names
    a connection of one server only (one Galera node), so its client port must match too. Never raises."""
    try:
        thread_id = int(raw.thread_id())
        host = "localhost" if sock is None or sock.family == socket.AF_UNIX else f"%:{sock.getsockname()[1]}"
        with engine.connect() as killer:
            same = killer.execute(sa.text("SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = :id AND HOST LIKE "
                                          ":host"), {"id": thread_id, "host": host}).first()
            if same is not None:
                killer.exec_driver_sql(f"KILL CONNECTION {thread_id}")
    except Exception as error:  # gone already, or no such right: the socket's shutdown still frees the runner
        log.info("could not KILL a timed-out handler's connection on its server: %s", db.describe(error))


class MySQL(Dialect):
    """MariaDB and MySQL."""

    name: ClassVar[str] = "mysql"
    backslash_escapes: ClassVar[bool] = True  # unless sql_mode has NO_BACKSLASH_ESCAPES
    # lock_wait_timeout bounds the wait for a table's metadata lock; its default is a day.
    lock_wait: ClassVar[tuple[str, str] | None] = (
        f"SET SESSION lock_wait_timeout = {int(db.MIGRATE_LOCK_WAIT)}", "SET SESSION lock_wait_timeout = DEFAULT")
    # DDL, table maintenance and LOCK TABLES commit the open transaction (PostgreSQL's and SQLite's DDL is
    # transactional): a declared sql task's statements may not (declared/sql.py).
    implicit_commits: ClassVar[frozenset[str]] = frozenset({
        "alter", "create", "drop", "rename", "truncate", "grant", "revoke", "lock", "unlock", "analyze", "optimize",
        "repair", "check", "flush", "cache", "load", "install", "uninstall", "change", "purge", "kill", "shutdown"})

    def driver_url(self, url: sa.URL) -> sa.URL:
        if "+" not in url.drivername:
            url = url.set(drivername=f"{url.get_backend_name()}+pymysql")
        return url.update_query_dict({"charset": "utf8mb4"})

    def engine(self, url: sa.URL, pool_size: int, create: bool = True, **options: Any) -> sa.Engine:
        mysql_connect.refuse_no_database(url)
        url, hosts = split_hosts(url)
        # Gap locks under REPEATABLE READ make claims block producers' INSERTs: READ COMMITTED avoids them.
        options.setdefault("isolation_level", "READ COMMITTED")
        options.setdefault("connect_args", mysql_connect.connect_args(url, hosts))
        engine = super().engine(url, pool_size, create, **options)
        mysql_connect.refuse_bad_parameters(engine)
        mysql_connect.keep_utc(engine)
        galera_aware(engine, hosts)
        return engine

    def in_transaction(self, dbapi_connection: Any) -> bool:
        # PyMySQL keeps the status of the last OK packet (it skips the one ending a result set, so a
        # SELECT-only transaction reads as idle: SQLAlchemy's own COMMIT/ROLLBACK flag covers those).
        server_status = getattr(dbapi_connection, "server_status", None)
        return bool(server_status & SERVER_STATUS_IN_TRANS) if isinstance(server_status, int) else True

    def abandon(self, conn: sa.Connection) -> None:
        # Closed from here, PyMySQL waited for the handler's thread, blocked reading the answer to a statement that
        # may run for hours (the socket reader's lock): the runner froze. And the server ran that statement on, its
        # locks held. So: KILL the connection on its server (the statement ends, the transaction rolls back), shut
        # the socket down (the handler's thread wakes with an error), then close it.
        raw: Any = conn.connection.dbapi_connection
        sock = getattr(raw, "_sock", None)  # PyMySQL's socket; None once closed
        try:
            _kill(conn.engine, raw, sock)
        finally:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            conn.invalidate()

    def retryable(self, error: BaseException) -> bool:
        return _errno(error) in (DEADLOCK, LOCK_WAIT_TIMEOUT)

    def connection_lost(self, error: BaseException) -> bool:
        return super().connection_lost(error) or _errno(error) in LOST or _errno(error) in NOT_READY

    def prepare_problem(self, conn: sa.Connection, statement: str) -> str | None:
        # PREPARE takes a literal or a variable: the variable spares quoting.
        sql = str(sa.text(statement).compile(dialect=_QMARK))
        cursor = conn.connection.cursor()
        try:
            cursor.execute(f"SET @{PREPARED} = %s", (sql,))
            cursor.execute(f"PREPARE {PREPARED} FROM @{PREPARED}")
            cursor.execute(f"DEALLOCATE PREPARE {PREPARED}")
            return None
        except Exception as error:  # the driver's own classes (a raw cursor bypasses SQLAlchemy's)
            return " ".join(str(getattr(error, "args", [error])[-1]).split())
        finally:
            cursor.close()

    def with_timeout(self, conn: sa.Connection, statements: Sequence[str], timeout: float) -> list[str] | None:
        if not getattr(conn.dialect, "is_mariadb", False):
            return None  # MySQL's max_execution_time bounds SELECTs only: the runner's timeout does the rest
        return [f"SET STATEMENT max_statement_time = {timeout:.3f} FOR {statement}" for statement in statements]

    @contextlib.contextmanager
    def time_limit(self, conn: sa.Connection, seconds: float) -> Iterator[None]:
        # A session variable, so it is put back even when the statement was cancelled (an error there
        # ends only that statement, not the transaction); MySQL's counts milliseconds and bounds SELECTs.
        name, value = (("max_statement_time", f"{seconds:.3f}") if getattr(conn.dialect, "is_mariadb", False)
                       else ("max_execution_time", str(max(1, round(seconds * 1000)))))
        conn.exec_driver_sql(f"SET SESSION {name} = {value}")
        try:
            yield
        finally:
            conn.exec_driver_sql(f"SET SESSION {name} = DEFAULT")

    def integrity(self, error: BaseException) -> bool:
        return super().integrity(error) or _errno(error) in INTEGRITY

    def session_changed(self, error: BaseException) -> bool:
        return _errno(error) in SESSION_CHANGED

    def timed_out(self, error: BaseException) -> bool:
        return _errno(error) in STATEMENT_TIMEOUT

    def permanent(self, error: BaseException) -> bool:
        return _errno(error) in PERMANENT or (super().permanent(error) and _errno(error) not in GONE)

    def constraint_of(self, error: BaseException) -> str | None:
        args = db.driver_args(error)
        message = str(args[1]) if len(args) > 1 else ""
        for pattern, label in CONSTRAINT_PATTERNS:
            found = re.search(pattern, message)
            if found:
                return label.format(*found.groups())
        return None

    def config_problem(self, error: BaseException) -> str | None:
        return f"cannot use the database: {db.describe(error)}" if _errno(error) in (*LOGIN_REFUSED, *DENIED) else None

    def unavailable(self, error: BaseException) -> bool:
        code = _errno(error)
        # PyMySQL raises InterfaceError for a connection it already knows is closed.
        return (super().unavailable(error) or code in GONE or code in READ_ONLY or code in NOT_READY
                or isinstance(error, exc.InterfaceError))

    def after(self, seconds: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        micros = sa.func.round(seconds * 1_000_000)
        return sa.func.timestampadd(sa.literal_column("MICROSECOND"), micros, db_now())

    def lock_mark_return(
        self,
        conn: sa.Connection,
        key: tuple[Any, ...],
        select: Callable[[Sequence[sa.ColumnElement[Any]]], sa.Select[Any]],
        mark: Callable[[], dict[str, Any]],
        columns: Sequence[sa.ColumnElement[Any]],
        params: dict[str, Any],
        still: Callable[[], Sequence[sa.ColumnElement[bool]]] = tuple,
        room: Callable[[], sa.ColumnElement[int]] | None = None,
    ) -> Locked:
        # LIMIT takes only a number: a queue cap's room was counted with the cap's lock (lock_cap), and only
        # that many of the locked rows are marked (near the cap the others stay locked, unmarked, until the
        # commit). Read as a column of the locking read instead, it cost a claim of 100 0.5 ms more.
        left = None if room is None else params["cap_left"]
        if left == 0:
            return Locked([], 0, after_mark=False)
        locked = self.cached((*key, "lock"), lambda: select(columns).with_for_update(skip_locked=True))
        update = self.cached((*key, "mark"), lambda: sa.update(J).where(self.id_in(), *still()).values(mark()))
        rows = conn.execute(locked, params).all()[:left]
        if not rows:
            return Locked(rows, 0, after_mark=False)
        marked = conn.execute(update, {**params, "ids": [row[0] for row in rows]}).rowcount
        return Locked(rows, int(marked), after_mark=False)

    def unreadable_time(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool] | None:
        # Without NO_ZERO_DATE / NO_ZERO_IN_DATE in sql_mode (MariaDB's default) a producer may store
        # '0000-00-00 00:00:00' or '2024-00-10 …'; PyMySQL hands them over as text. A zero date compares
        # before every time, so such a run_at is due at once and the job runs.
        return sa.or_(sa.func.year(column) == 0, sa.func.month(column) == 0, sa.func.dayofmonth(column) == 0)

    def never_due(self, run_at: sa.ColumnElement[Any]) -> sa.ColumnElement[bool] | None:
        # A DATETIME holds no time after 9999, and a zero month or day compares by its digits ('2030-05-00'
        # just before May 2030): every run_at comes due, so nothing is read (the unreadable test is not
        # index-served: 1.1 s at 1,000,000 pending jobs).
        return None

    def insert_rows_suffix(self, conn: sa.Connection, table: str) -> str | None:
        # MariaDB 10.5+ returns a multi-row INSERT's rows, in the order of its VALUES, each with its generated
        # id; MySQL has no RETURNING, and the ids after its LAST_INSERT_ID() are consecutive only under some
        # settings (innodb_autoinc_lock_mode ≤ 1, auto_increment_increment 1, which Galera changes).
        mariadb, version = _server(conn)
        if not mariadb or version < (10, 5):
            return None
        # Two lookups, not one join: MariaDB reads the join's COLUMNS side for the whole schema (14-28 ms of
        # the server's time, against 0.3 ms for these two).
        kind = conn.exec_driver_sql("SELECT TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                                    "AND TABLE_NAME = %s", (table,)).scalar()
        if kind != "BASE TABLE":  # not a table (a view shows no generated id, yet an INSERT through it has one)
            return None
        found = conn.exec_driver_sql("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
                                     "DATABASE() AND TABLE_NAME = %s AND EXTRA LIKE %s",
                                     (table, "%auto_increment%")).scalar()
        return "" if found is None else " RETURNING `" + str(found).replace("`", "``") + "`"

    def lock_cap(self, conn: sa.Connection, params: dict[str, Any],
                 room: Callable[[bool], sa.ColumnElement[int]]) -> dict[str, Any] | None:
        # The room in the statement that locks the cap's row, one round trip less than a count of its own
        # (which took ≈ 0.5 ms of the server's time a claim in a drain, the lock 0.1 ms). The count refers to
        # the locked row, so it is read only once that row is had (a lookup by primary key: read, and locked,
        # while the statement is planned; a row another claim holds is skipped, and nothing is counted), and
        # READ COMMITTED takes the statement's snapshot at its first consistent read, this count: it sees
        # every job the lock's last holder started. Not a locking read: running rows stay free to finish.
        stmt = self.cached(("cap_lock",), lambda: sa.select(room(True)).where(
            L.c.name == sa.bindparam("cap_name", type_=sa.String)).with_for_update(skip_locked=True))
        row = conn.execute(stmt, params).first()
        return None if row is None else {"cap_left": max(0, int(row[0]))}

    def room_limit(self, size: int, room: sa.ColumnElement[int]) -> int | sa.ColumnElement[int]:
        return size  # LIMIT takes only a number: lock_cap counts the room first

    def due_queues(self, conn: sa.Connection) -> list[str]:
        # A skip scan driven from here: one index dive per queue, each the first pending queue after the last.
        # MariaDB 10.11 answers DISTINCT, and the recursive CTE's MIN(queue), by reading every pending row of
        # the claim index (no loose scan over it): 150-195 ms at 1,000,000 pending jobs, every poll of an idle
        # run while they wait for their run_at; the dives take ≈ 1 ms.
        first = self.cached(("due_queues",), lambda: sa.select(J.c.queue).where(J.c.status == "pending")
                            .order_by(J.c.queue).limit(1))
        after = self.cached(("due_queues", "after"), lambda: sa.select(J.c.queue).where(
            J.c.status == "pending", J.c.queue > sa.bindparam("after")).order_by(J.c.queue).limit(1))
        queues: list[str] = []
        row = conn.execute(first).first()
        while row is not None:
            queues.append(row[0])
            row = conn.execute(after, {"after": row[0]}).first()
        return queues

    def estimate(self, conn: sa.Connection, stmt: sa.Select[Any], params: dict[str, Any]) -> int | None:
        # InnoDB dives into the index at both ends of the range: live, not from stored statistics, but
        # extrapolated over a long range (1.8 times too high at 180,000 rows in benchmarks.console).
        row = self.explain(conn, "EXPLAIN", stmt, params).mappings().first()
        return int(row["rows"]) if row is not None and row["rows"] is not None else None

    def read_only(self, conn: sa.Connection) -> str | None:
        if conn.execute(sa.text("SELECT @@global.read_only")).scalar():
            return "the database is read-only (read_only=ON): nothing claimed"
        return None

    def version_problem(self, conn: sa.Connection) -> str | None:
        mariadb, version = _server(conn)
        return version_problem(version, mariadb)

    def insert_ignore(self, table: sa.Table) -> sa.Insert:
        # A duplicate key only: ON DUPLICATE KEY UPDATE of the key to itself (IGNORE would also turn
        # bad data into warnings).
        first = next(iter(table.primary_key.columns))
        return mysql.insert(table).on_duplicate_key_update({first.name: first})

    def upsert_add(self, table: sa.Table, column: str) -> sa.Insert:
        insert = mysql.insert(table)
        return insert.on_duplicate_key_update({column: table.c[column] + insert.inserted[column]})

    def _insert_keyed(self, conn: sa.Connection, values: dict[str, Any]) -> int:
        # LAST_INSERT_ID(id) makes lastrowid the existing row's id when the key already exists.
        stmt = mysql.insert(J).values(values).on_duplicate_key_update(id=sa.func.last_insert_id(J.c.id))
        return int(conn.execute(stmt).lastrowid)

    def _insert_many(self, conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> list[int]:
        if conn.dialect.insert_executemany_returning_sort_by_parameter_order:  # MariaDB: INSERT … RETURNING
            return super()._insert_many(conn, rows)
        # MySQL has no INSERT … RETURNING. One multi-row INSERT is an InnoDB "simple insert": its ids
        # are reserved together, spaced by auto_increment_increment (not 1 on Galera-style clusters).
        result = conn.execute(sa.insert(J).values(list(rows)))
        step = int(conn.execute(sa.text("SELECT @@auto_increment_increment")).scalar_one())
        first = int(result.lastrowid)
        return list(range(first, first + step * len(rows), step))

    def insert_attempts(self, conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
        # PyMySQL turns an executemany INSERT into one multi-row INSERT only when every value is a
        # placeholder; with UTC_TIMESTAMP(6) among them it sends one INSERT per row. The column's
        # server default is that same clock (schema.now_default), so the INSERT leaves it out.
        conn.execute(self.cached(("insert_attempts",), lambda: sa.insert(callback_attempts)), list(rows))


_QMARK = mysql.pymysql.dialect(paramstyle="qmark")  # how PREPARE numbers placeholders


def version_problem(version: tuple[int, ...], mariadb: bool) -> str | None:
    """Why this server is too old for FOR UPDATE SKIP LOCKED, or None."""
    minimum = (10, 6) if mariadb else (8, 0, 1)
    if version[: len(minimum)] >= minimum:
        return None
    name = "MariaDB" if mariadb else "MySQL"
    shown = ".".join(str(part) for part in version)
    needed = ".".join(str(part) for part in minimum)
    return f"{name} {shown} is too old: pending-jobs needs {needed}+ for FOR UPDATE SKIP LOCKED"


def _errno(error: BaseException) -> int | None:
    """MySQL's error number (PyMySQL's first argument; its `sqlstate` is often just HY000)."""
    args = db.driver_args(error)
    return args[0] if args and isinstance(args[0], int) else None


def _server(conn: sa.Connection) -> tuple[bool, tuple[int, ...]]:
    """Whether the server is MariaDB, and its version's numbers (as SQLAlchemy read them on connecting)."""
    version = tuple(part for part in conn.dialect.server_version_info or () if isinstance(part, int))
    return bool(getattr(conn.dialect, "is_mariadb", False)), version
