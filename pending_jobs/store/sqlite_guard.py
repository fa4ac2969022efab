"""SQLite connections another thread can close safely: a timed-out handler's, its thread maybe still inside SQLite.

The runner gives up on a handler past its task's timeout and must end that handler's transaction, or its write lock
stops every other writer. The network drivers let another thread close a connection; pysqlite does not: closed while
the handler's thread is inside `sqlite3_step`, the process dies (SIGSEGV). So every call into SQLite through these
connections holds the connection's `entry` lock, and `close_under` (the runner's thread) marks the connection
closing, interrupts the statement running (`sqlite3_interrupt` is the one call SQLite allows from another thread),
and closes only while holding `entry`: the handler's thread is then outside SQLite, and its next call fails with
a readable error instead of entering a closed database.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

STOP_WAIT = 0.5  # seconds `close_under` interrupts (the runner waits) before leaving the close to the handler's thread
INTERRUPT_EVERY = 0.02  # an interrupt lands only on a statement already running: repeat it until one has


class GuardedConnection(sqlite3.Connection):
    """A pysqlite connection whose calls into SQLite (its cursors', commit, rollback) hold `entry`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.entry = threading.RLock()  # reentrant: pysqlite may call back into Python inside a call
        self.closing = False
        self.cursors: weakref.WeakSet[sqlite3.Cursor] = weakref.WeakSet()  # open ones: `_end` resets them

    def enter(self) -> None:
        """Take `entry` for one call into SQLite; refused once `close_under` has begun."""
        self.entry.acquire()
        if self.closing:
            self.entry.release()
            raise sqlite3.ProgrammingError("the connection was closed: its job ran past its task's timeout")

    def guarded(self, call: Callable[..., Any], *args: Any) -> Any:
        self.enter()
        try:
            return call(*args)
        finally:
            if self.closing:  # `close_under` gave up waiting for this call: end the connection on its own thread
                self._end(super().close)
            self.entry.release()

    def cursor(self, factory: Any = None) -> Any:
        return self.guarded(self._new_cursor, factory or GuardedCursor)  # `_end` reads `cursors` holding `entry`

    def _new_cursor(self, factory: Any) -> Any:
        cursor = super().cursor(factory)
        self.cursors.add(cursor)
        return cursor

    def execute(self, *args: Any) -> Any:  # pysqlite's own would bypass `cursor`
        return self.cursor().execute(*args)

    def executemany(self, *args: Any) -> Any:
        return self.cursor().executemany(*args)

    def executescript(self, *args: Any) -> Any:
        return self.cursor().executescript(*args)

    def commit(self) -> None:
        self.guarded(super().commit)

    def rollback(self) -> None:
        self.guarded(super().rollback)

    def close_under(self, close: Callable[[], None]) -> bool:
        """Call `close` (which closes this connection) once no other thread is inside SQLite through it, interrupting
        the statement it runs. False when that call did not return within STOP_WAIT: it may be waiting for
        another connection's lock, which no interrupt ends; the connection is closed on that thread when it does."""
        self.closing = True
        ends = time.monotonic() + STOP_WAIT
        while True:
            self.interrupt()
            if self.entry.acquire(timeout=INTERRUPT_EVERY):
                break
            if time.monotonic() > ends:
                return False
        try:
            self._end(close)
        finally:
            self.entry.release()
        return True

    def _end(self, close: Callable[[], None]) -> None:
        # Closed with a statement unfinished (a handler's cursor), SQLite keeps the connection as a zombie holding its
        # transaction, and the write lock, until the statement is finalised; and while one is, the interrupt stays
        # pending and fails the ROLLBACK. So: reset every statement, roll back, close.
        for cursor in list(self.cursors):
            with contextlib.suppress(sqlite3.Error):
                sqlite3.Cursor.close(cursor)
        with contextlib.suppress(sqlite3.Error):
            super().rollback()
        close()


class GuardedCursor(sqlite3.Cursor):
    """A cursor whose calls into SQLite hold its connection's `entry` (fetches step the statement too)."""

    connection: GuardedConnection

    def execute(self, *args: Any) -> Any:
        return self.connection.guarded(super().execute, *args)

    def executemany(self, *args: Any) -> Any:
        return self.connection.guarded(super().executemany, *args)

    def executescript(self, *args: Any) -> Any:
        return self.connection.guarded(super().executescript, *args)

    def fetchone(self) -> Any:
        return self.connection.guarded(super().fetchone)

    def fetchmany(self, *args: Any) -> Any:
        return self.connection.guarded(super().fetchmany, *args)

    def fetchall(self) -> Any:
        return self.connection.guarded(super().fetchall)

    def __next__(self) -> Any:
        return self.connection.guarded(super().__next__)

    def close(self) -> None:
        try:
            self.connection.guarded(super().close)
        except sqlite3.ProgrammingError:
            if not self.connection.closing:  # else its statement goes with the connection: nothing to tell anyone
                raise
