"""Engines configured for job work on each dialect, and the classification of database errors."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc

from .errors import ConfigError

# MySQL/MariaDB error numbers that decide what the runner does next.
MYSQL_DEADLOCK = 1213  # whole transaction rolled back: retry it
MYSQL_LOCK_WAIT_TIMEOUT = 1205  # only the statement rolled back: roll back ourselves, then retry
MYSQL_READ_ONLY = (1290, 1792, 1836)  # --read-only / read-only transaction / read-only slave
MYSQL_GONE = (2002, 2003, 2006, 2013, 2055, 1927, 1053, 4031)  # cannot connect / lost / killed / shutdown
MYSQL_LOST = (2006, 2013, 2055, 1927, 4031)  # an open connection dropped; the server may still be up
SERVER_STATUS_IN_TRANS = 1  # MySQL protocol: a transaction is open (pymysql.constants.SERVER_STATUS)
PING_AFTER = 1.0  # seconds idle after which a pooled connection is pinged before use (a restart takes longer)
PG_READ_ONLY = "25006"
PG_SERIALIZATION = ("40001", "40P01")


def dialect_name(bind: sa.Engine | sa.Connection) -> str:
    """'mysql' (also for MariaDB), 'postgresql' or 'sqlite'."""
    name = bind.dialect.name
    return "mysql" if name in ("mysql", "mariadb") else name


def create_engine(url: str, pool_size: int = 5, **kwargs: Any) -> sa.Engine:
    """An engine with UTC sessions, utf8mb4, READ COMMITTED on MySQL, and checked connections.

    A pooled connection is pinged before use only after PING_AFTER idle seconds, and rolled back on
    its return only when a transaction may be open: each would otherwise cost a round trip per use.
    A connection killed while it sat idle less than that fails its statement as "connection lost"
    (and is replaced); Store.transaction retries such a statement once, a producer sees the error.
    """
    try:
        parsed = sa.make_url(url)
    except exc.ArgumentError as error:
        raise ConfigError(f"database_url is not a valid SQLAlchemy URL: {error}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed, pool_size, **kwargs)
    options: dict[str, Any] = {
        "pool_recycle": 1800,  # below MySQL's default wait_timeout of 8 h, and most proxies'
        "pool_size": pool_size,
        "max_overflow": pool_size,
        "pool_reset_on_return": None,  # _skip_needless_rollbacks does it, only when needed
        **kwargs,
    }
    if backend in ("mysql", "mariadb"):
        if not parsed.drivername.endswith("+pymysql") and "+" not in parsed.drivername:
            parsed = parsed.set(drivername=f"{backend}+pymysql")
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
        # Gap locks under REPEATABLE READ make claims block producers' INSERTs: READ COMMITTED avoids them.
        options.setdefault("isolation_level", "READ COMMITTED")
        # read/write timeouts bound a read on a half-open socket (server frozen or network cut), which a
        # restart does not cause but a partition does; above innodb_lock_wait_timeout's default of 50 s.
        options.setdefault("connect_args", {"init_command": "SET time_zone = '+00:00'", "connect_timeout": 10,
                                            "read_timeout": 120, "write_timeout": 120})
    elif backend == "postgresql":
        if "+" not in parsed.drivername:
            parsed = parsed.set(drivername="postgresql+psycopg")
        # TCP keepalives end a read on a dead peer (libpq has no read timeout) in about a minute.
        options.setdefault("connect_args", {"options": "-c timezone=UTC", "connect_timeout": 10, "keepalives": 1,
                                            "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3})
    else:
        raise ConfigError(f"unsupported database {backend!r}: use mysql, mariadb, postgresql or sqlite")
    try:
        engine = sa.create_engine(parsed, **options)
    except ModuleNotFoundError as error:
        raise ConfigError(f"the driver for {backend} is not installed: {error}") from None
    if options["pool_reset_on_return"] is None:
        _skip_needless_rollbacks(engine)
    _ping_when_idle(engine)
    return engine


def _skip_needless_rollbacks(engine: sa.Engine) -> None:
    """Roll a connection back on its return to the pool only when a transaction may still be open.

    The pool's own reset sends ROLLBACK after every use, one more round trip after every committed
    claim, completion and enqueue. Here a connection returns as it is only when its last transaction
    went through SQLAlchemy's COMMIT or ROLLBACK and the driver, where it can tell, agrees that none
    is open; one checked out raw, returned mid-transaction, or whose COMMIT failed is rolled back.
    """
    clean = "pending_jobs_clean"

    @event.listens_for(engine, "checkout")
    def _checkout(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        record.info[clean] = False

    def mark(conn: sa.Connection, ended: bool) -> None:
        if not conn.invalidated:  # an invalidated connection is discarded, never returned to the pool
            conn.connection.info[clean] = ended

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        mark(conn, False)

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _ended(conn: sa.Connection) -> None:
        # Fired before the COMMIT is sent: if it then fails, _driver_in_transaction says so.
        mark(conn, True)

    @event.listens_for(engine, "reset")
    def _reset(dbapi_connection: Any, record: Any, state: Any) -> None:
        if state.terminate_only:
            return
        if not record.info.get(clean, False) or _driver_in_transaction(dbapi_connection):
            dbapi_connection.rollback()


def _driver_in_transaction(dbapi_connection: Any) -> bool:
    """What the driver knows without a round trip: psycopg tracks the session's transaction status;
    PyMySQL the status of the last OK packet (it skips the one ending a result set, so a SELECT-only
    transaction reads as idle: the SQLAlchemy-level flag covers those)."""
    info = getattr(dbapi_connection, "info", None)
    status = getattr(info, "transaction_status", None)
    if status is not None:  # psycopg: IDLE is 0
        return int(status) != 0
    server_status = getattr(dbapi_connection, "server_status", None)
    if isinstance(server_status, int):  # PyMySQL
        return bool(server_status & SERVER_STATUS_IN_TRANS)
    return True


def _ping_when_idle(engine: sa.Engine) -> None:
    """Replace a pooled connection killed while idle, pinging only those idle for PING_AFTER seconds.

    `pool_pre_ping` pings on every checkout: on the runner's hot path one extra round trip per claim
    and per completion. A connection checked in a moment ago is all but surely alive; if it was
    killed in that moment its statement fails as "connection lost" and Store.transaction retries
    once on a fresh connection.
    """

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["pending_jobs_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("pending_jobs_idle_since")
        if since is None or time.monotonic() - since < PING_AFTER:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The pool discards this connection and checks out a fresh one.
            raise exc.DisconnectionError(f"idle connection failed its ping: {type(error).__name__}") from error


def _sqlite_engine(parsed: sa.URL, pool_size: int, **kwargs: Any) -> sa.Engine:
    options: dict[str, Any] = {"pool_size": pool_size, "max_overflow": pool_size, **kwargs}
    engine = sa.create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30}, **options)

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


def _mysql_code(error: BaseException) -> int | None:
    orig = getattr(error, "orig", None)
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _pg_code(error: BaseException) -> str | None:
    orig = getattr(error, "orig", None)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def is_retryable(error: BaseException) -> bool:
    """A deadlock or lock-wait timeout: the transaction may simply be run again."""
    code = _mysql_code(error)
    if code in (MYSQL_DEADLOCK, MYSQL_LOCK_WAIT_TIMEOUT):
        return True
    if _pg_code(error) in PG_SERIALIZATION:
        return True
    return "database is locked" in str(getattr(error, "orig", ""))


def is_connection_lost(error: BaseException) -> bool:
    """An established connection dropped (killed, timed out, server restarting): worth one fresh try."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    if _mysql_code(error) in MYSQL_LOST:
        return True
    code = _pg_code(error) or ""
    return code in ("57P01", "08006", "08003") or "server closed the connection" in str(getattr(error, "orig", ""))


def is_unavailable(error: BaseException) -> bool:
    """The database is unreachable, went away, or refuses writes: stop and exit 75."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    code = _mysql_code(error)
    if code is not None and (code in MYSQL_GONE or code in MYSQL_READ_ONLY):
        return True
    if _pg_code(error) == PG_READ_ONLY or (_pg_code(error) or "").startswith("08"):
        return True
    if isinstance(error, exc.OperationalError):
        text = str(error.orig).lower()
        markers = ("connection", "server closed", "could not connect", "terminating", "readonly", "read-only",
                   "unable to open database", "disk i/o")
        return any(marker in text for marker in markers)
    return isinstance(error, exc.InterfaceError)
