"""SQLite connections another thread closes (store/sqlite_guard.py): a timed-out handler's, its thread maybe still
inside SQLite. Real threads on a real SQLite file; without the guard, closing under a running statement killed
the process (SIGSEGV)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pending_jobs.store.sqlite_guard import STOP_WAIT, GuardedConnection

SPIN = "WITH RECURSIVE spin(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM spin) SELECT COUNT(*) FROM spin"


@pytest.fixture
def path(tmp_path: Path) -> Iterator[Path]:
    file = tmp_path / "guard.sqlite3"
    with sqlite3.connect(file) as setup:
        setup.execute("CREATE TABLE t (n INTEGER)")
    yield file


def guarded(path: Path) -> GuardedConnection:
    conn = sqlite3.connect(path, factory=GuardedConnection, check_same_thread=False, isolation_level=None)
    assert isinstance(conn, GuardedConnection)
    return conn


def writes_now(path: Path) -> bool:
    """Whether another connection can take the write lock at once (the closed one's transaction ended)."""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        other.close()


def wait_inside(conn: GuardedConnection) -> None:
    """Until another thread holds `entry` (is in a call into SQLite)."""
    while conn.entry.acquire(blocking=False):
        conn.entry.release()
        time.sleep(0.001)


def in_thread(target: object) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()  # type: ignore[operator]
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def test_a_statement_running_in_another_thread_is_interrupted_and_the_connection_closed(path: Path) -> None:
    conn = guarded(path)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES (1)")  # holds the write lock
    thread, errors = in_thread(lambda: conn.execute(SPIN).fetchone())
    wait_inside(conn)
    closed: list[bool] = []
    assert conn.close_under(lambda: closed.append(True) or conn.close())
    thread.join(5)
    assert not thread.is_alive() and closed == [True]
    assert "interrupted" in str(errors[0])
    with pytest.raises(sqlite3.ProgrammingError):  # its next use fails with a reason, not a crash
        conn.execute("SELECT 1")
    assert writes_now(path)
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)  # its write rolled back


def test_a_connection_between_calls_is_rolled_back_and_closed_at_once(path: Path) -> None:
    conn = guarded(path)
    conn.execute("BEGIN IMMEDIATE")
    cursor = conn.execute("INSERT INTO t VALUES (1)")
    reading = conn.execute("SELECT 1 UNION ALL SELECT 2")
    assert reading.fetchone() == (1,)  # a statement left unfinished: closing alone would keep the lock (a zombie)
    assert conn.close_under(conn.close)
    assert writes_now(path)
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        reading.fetchone()
    cursor.close()  # the handler's clean-up on a closed connection raises nothing
    with pytest.raises(sqlite3.ProgrammingError, match="timeout"):  # made under `entry`, as `_end` reads them
        conn.cursor()


def test_a_call_waiting_for_another_connections_lock_ends_the_connection_itself(path: Path) -> None:
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    conn = guarded(path)
    thread, errors = in_thread(lambda: conn.execute("BEGIN IMMEDIATE"))  # waits (busy timeout), uninterruptible
    wait_inside(conn)
    started = time.monotonic()
    assert not conn.close_under(conn.close)  # gave up waiting: the runner is not held longer than STOP_WAIT
    assert time.monotonic() - started < STOP_WAIT + 1
    holder.execute("ROLLBACK")
    holder.close()
    thread.join(10)
    assert not thread.is_alive() and errors == []
    assert writes_now(path)  # the waiting thread closed it (rolled back) when its call returned
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")
