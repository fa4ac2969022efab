"""The handler's own transaction (`ctx.connection`): opened on first use, committed with its job's success.

Like River's `JobCompleteTx`: the handler's writes and the job's `succeeded` status commit in one
transaction, fenced by the lease token, so they happen exactly once. The executor drives it through
`commit_success` / `rollback` and never touches a connection itself.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from sqlalchemy import exc

from .. import db
from ..errors import ConfigError, DatabaseUnavailable
from ..models import ClaimedJob
from ..states import JobStatus
from .dialect import Dialect

if TYPE_CHECKING:
    from .base import Store

log = logging.getLogger(__name__)

Verdict = Literal["recorded", "stale", "error"]
ABANDONED = "the job ran past its task's timeout: its ctx.connection is closed"


class HandlerSession:
    """One job's handler transaction; the connection is taken from the pool only if the handler asks."""

    def __init__(self, store: Store, job: ClaimedJob) -> None:
        self._store = store
        self._job = job
        self._connection: sa.Connection | None = None
        self._abandoned = False  # timed out: the runner closed the connection, and none may be opened after
        self._lock = threading.Lock()  # between the handler's thread opening the connection and `abandon`

    @property
    def opened(self) -> bool:
        """Whether the handler used `ctx.connection` (then its success is committed here)."""
        return self._connection is not None

    @property
    def connection(self) -> sa.Connection:
        """The connection, in a transaction (opened on first use)."""
        if self._connection is None:
            if self._abandoned:
                raise TimeoutError(ABANDONED)
            conn = self._store.engine.connect()  # may wait for the pool, and begin() for SQLite's write lock
            try:
                conn.begin()
            except BaseException:
                conn.close()
                raise
            with self._lock:
                if not self._abandoned:
                    self._connection = conn
            if self._connection is not conn:  # timed out meanwhile: nothing would end this transaction
                _discard(conn, self._job.id)
                raise TimeoutError(ABANDONED)
        return self._connection

    def cancel_requested(self) -> bool:
        """The job's cancel flag; through the open connection when there is one (SQLite: a second
        connection would wait for this one's write lock)."""
        return self._store.cancel_requested(self._connection or self._store.engine, self._job.id)

    def commit_success(self, result: Any) -> tuple[Verdict, str]:
        """Mark the job succeeded in this transaction and commit it with the handler's writes.

        ("recorded", ""), ("stale", "") when the lease was taken over (everything rolled back), or
        ("error", reason). A commit that fails midway may still have happened: the row, read back by
        its token, settles it.
        """
        conn, self._connection = self._connection, None
        if conn is None:
            raise RuntimeError("commit_success without an open handler transaction")
        if self._abandoned:  # its outcome was recorded when it timed out
            _discard(conn, self._job.id)
            return "stale", ""
        try:
            with conn:
                try:
                    recorded = self._store.succeed_in(conn, self._job, result)
                    if recorded:
                        conn.commit()
                    else:
                        conn.rollback()
                except exc.DBAPIError as error:
                    if self._store.sql.session_changed(error):  # the handler's LOCK TABLES, say: not back to the pool
                        conn.invalidate()
                    raise
            return ("recorded" if recorded else "stale"), ""
        except exc.DBAPIError as error:
            try:
                status = self._store.outcome_of(self._job)
            except (DatabaseUnavailable, ConfigError):
                status = None
            if status == JobStatus.SUCCEEDED.value:
                return "recorded", ""
            return "error", db.describe(error)

    def abandon(self) -> None:
        """The handler timed out and is left running: close its connection from this (another) thread, so
        its open transaction is rolled back and its locks go (SQLite: the one write lock every other
        transaction waits for). Never raises; the handler's next use of the connection fails."""
        with self._lock:
            self._abandoned = True
            conn = self._connection
        if conn is None or conn.closed:  # none opened (and none will be), or the handler's thread ended it
            return
        try:
            self._store.sql.abandon(conn)
        except Exception as error:
            if not conn.closed:  # else the handler's thread ended it meanwhile
                log.warning("job %d: could not close its timed-out handler's connection: %s", self._job.id, error)

    def rollback(self, error: BaseException | None = None) -> None:
        """Discard the handler's writes. Never raises: a dead connection has nothing left to roll back,
        and the job must still be recorded. When the handler raised (`error`) a database error of a changed
        session (the dialect's `session_changed`: LOCK TABLES, a read-only session, a PRAGMA, left by this
        handler or an earlier one), the connection is discarded, not pooled: the next job on it would fail."""
        conn, self._connection = self._connection, None
        if conn is None:
            return
        if self._abandoned or _session_changed(self._store.sql, error):
            _discard(conn, self._job.id)
            return
        try:
            conn.rollback()
            conn.close()
        except Exception as error:  # the server rolls back a lost connection's transaction itself
            log.warning("job %d: could not roll back its connection: %s", self._job.id, error)
            try:
                conn.invalidate()
            except Exception:
                log.debug("job %d: invalidating its connection failed too", self._job.id, exc_info=True)


def _session_changed(sql: Dialect, error: BaseException | None) -> bool:
    """Whether `error`, or an exception it was raised from, is a database error of a changed session."""
    for _ in range(5):  # a handler may wrap the driver's error; the chain is short, and may loop
        if error is None or isinstance(error, exc.DBAPIError):
            break
        error = error.__cause__ or error.__context__
    return isinstance(error, exc.DBAPIError) and sql.session_changed(error)


def _discard(conn: sa.Connection, job_id: int) -> None:
    """Close `conn` for good, not back to the pool (on the handler's thread: safe wherever it had got to)."""
    try:
        conn.invalidate()
        conn.close()
    except Exception:
        log.debug("job %d: invalidating its connection failed", job_id, exc_info=True)
