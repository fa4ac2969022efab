"""Pool mechanics every engine shares: fewer round trips per checkout, and short error descriptions.

What differs per database (drivers, session settings, error codes) lives in the store's dialect files;
`pending_jobs.store.create_engine` puts the two together.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc

from .errors import ConfigError

PING_AFTER = 1.0  # seconds idle after which a pooled connection is pinged before use (a restart takes longer)
CLEAN = "pending_jobs_clean"
IDLE_SINCE = "pending_jobs_idle_since"
# Seconds a migration's DDL waits for a table lock. Past it, migrate stops (run it again): while an ALTER
# waits behind an open transaction (a producer's, a handler's), every INSERT and claim queues behind the ALTER.
MIGRATE_LOCK_WAIT = 5


def skip_needless_rollbacks(engine: sa.Engine, in_transaction: Callable[[Any], bool]) -> None:
    """Roll a connection back on its return to the pool only when a transaction may still be open.

    The pool's own reset sends ROLLBACK after every use, one more round trip after every committed
    claim, completion and enqueue. Here a connection returns as it is only when its last transaction
    went through SQLAlchemy's COMMIT or ROLLBACK and the driver (`in_transaction`), where it can tell,
    agrees that none is open; one checked out raw, returned mid-transaction, or whose COMMIT failed is
    rolled back. The engine must be created with `pool_reset_on_return=None`.
    """

    @event.listens_for(engine, "checkout")
    def _checkout(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        record.info[CLEAN] = False

    def mark(conn: sa.Connection, ended: bool) -> None:
        if not conn.invalidated:  # an invalidated connection is discarded, never returned to the pool
            conn.connection.info[CLEAN] = ended

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        mark(conn, False)

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _ended(conn: sa.Connection) -> None:
        # Fired before the COMMIT is sent: if it then fails, `in_transaction` says so.
        mark(conn, True)

    @event.listens_for(engine, "reset")
    def _reset(dbapi_connection: Any, record: Any, state: Any) -> None:
        if state.terminate_only:
            return
        if not record.info.get(CLEAN, False) or in_transaction(dbapi_connection):
            dbapi_connection.rollback()


def ping_when_idle(engine: sa.Engine) -> None:
    """Replace a pooled connection killed while idle, pinging only those idle for PING_AFTER seconds.

    `pool_pre_ping` pings on every checkout: on the runner's hot path one extra round trip per claim
    and per completion. A connection checked in a moment ago is all but surely alive; if it was
    killed in that moment its statement fails as "connection lost" and Store.transaction retries
    once on a fresh connection.
    """

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(IDLE_SINCE)
        if since is None or time.monotonic() - since < PING_AFTER:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The pool discards this connection and checks out a fresh one.
            raise exc.DisconnectionError(f"idle connection failed its ping: {type(error).__name__}") from error


def describe(error: BaseException) -> str:
    """A short, single-line description of a database error, without SQL or parameters."""
    orig = getattr(error, "orig", None) or error
    text = " ".join(str(orig).split())
    return f"{type(orig).__name__}: {text[:300]}"


def driver_args(error: BaseException) -> tuple[Any, ...]:
    """The arguments of the driver's exception under SQLAlchemy's wrapper (MySQL's error number is the first)."""
    return tuple(getattr(getattr(error, "orig", None), "args", ()))


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE the driver reported, if any."""
    value = getattr(getattr(error, "orig", None), "sqlstate", None)
    return str(value) if value is not None else None



def refuse_bad_parameters(engine: sa.Engine) -> None:
    """Turn a driver's refusal of database_url's own parameters into a configuration error (exit 2, one line).

    PyMySQL raises TypeError for a parameter it does not take (`?sslmode=require`, copied from a PostgreSQL or
    PHP DSN), AttributeError for `?ssl=true`, FileNotFoundError for an `?ssl_ca=` file that is not there; psycopg
    raises ProgrammingError for an option libpq does not know. None is an error SQLAlchemy maps, so each was an
    "unexpected error" with a traceback and exit 1, on every cron tick. Only errors of making a connection are
    looked at (no statement, no connection yet), and none of a server that cannot be reached.
    """

    @event.listens_for(engine, "handle_error")
    def _refused(context: sa.engine.ExceptionContext) -> BaseException | None:
        error = context.original_exception
        if context.connection is not None or context.statement is not None or context.is_pre_ping:
            return None
        if isinstance(error, TypeError | ValueError | AttributeError | FileNotFoundError | IsADirectoryError) or \
                isinstance(error, context.dialect.loaded_dbapi.ProgrammingError):
            return ConfigError(f"database_url: the driver refuses its parameters: {describe(error)}")
        return None
