"""One store transaction with its retries: deadlocks and lock waits a few times, a lost connection once,
and once an error of a pooled connection whose session was changed.

A Python handler's `ctx.connection` goes back to the pool when its job ends. A handler that changed that
connection's session (MariaDB's `LOCK TABLES`, PostgreSQL's `SET SESSION CHARACTERISTICS AS TRANSACTION
READ ONLY`, SQLite's `PRAGMA query_only`) left it failing every statement of the run's next claim or
completion on it, and the run stopped with innocent jobs behind. So such an error (the dialect's
`session_changed`) discards the connection, and the transaction runs once more on a fresh one: a session
that was the cause is gone, a real cause (a read-only server) fails again and is reported as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy import exc

from .. import db
from ..errors import ConfigError, DatabaseUnavailable
from .dialect import Dialect
from .hang import HangWatch

log = logging.getLogger(__name__)
T = TypeVar("T")


def run(engine: sa.Engine, sql: Dialect, work: Callable[[sa.Connection], T], tries: int,
        settle: Callable[[sa.Connection], T] | None, watch: HangWatch | None = None) -> T:
    """Store.transaction's loop (see its docstring). With `watch` (a run on PostgreSQL: hang.py), the transaction
    is timed, and once the watch found the server hung, it ends as DatabaseUnavailable saying so."""
    if watch is None:
        return _run(engine, sql, work, tries, settle, watch)
    outer = watch.enter()
    try:
        return _run(engine, sql, work, tries, settle, watch)
    except Exception as error:
        if watch.hung is not None:  # its connection was shut down: say why, not "server closed the connection"
            raise DatabaseUnavailable(watch.hung) from error
        raise
    finally:
        watch.leave(outer)


def _run(engine: sa.Engine, sql: Dialect, work: Callable[[sa.Connection], T], tries: int,
         settle: Callable[[sa.Connection], T] | None, watch: HangWatch | None) -> T:
    reconnected = False
    for attempt in range(1, tries + 1):
        discarded = False
        try:
            with engine.connect() as conn:
                try:
                    with conn.begin():  # BEGIN IMMEDIATE on SQLite: inside, so its error discards too
                        if reconnected and settle is not None:
                            settled = settle(conn)
                            if settled:
                                return settled
                        return work(conn)
                except exc.DBAPIError as error:
                    if not reconnected and sql.session_changed(error):
                        conn.invalidate()
                        discarded = True
                    raise
        except exc.DBAPIError as error:
            hung = watch is not None and watch.hung is not None  # a fresh connection would wait for the hung server
            if not reconnected and attempt < tries and not hung and (discarded or sql.connection_lost(error)):
                # A killed or timed-out connection, or one whose session may be to blame; if the server is
                # really gone, the reconnect fails with "cannot connect" and the run stops (DatabaseUnavailable).
                reconnected = True
                log.warning("%s (%s); retrying once on a fresh connection", "a pooled connection's session was changed"
                            if discarded else "connection lost", db.describe(error))
                continue
            if (problem := sql.config_problem(error)) is not None:
                raise ConfigError(problem) from error
            if sql.unavailable(error):
                raise DatabaseUnavailable(db.describe(error)) from error
            if not sql.retryable(error) or attempt == tries:
                raise
            log.warning("retrying after %s (attempt %d of %d)", db.describe(error), attempt, tries)
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")
