"""The reads behind the push endpoints (pending_jobs.web.push): where some jobs stand, which of them ended,
and on PostgreSQL a listener for the `pending_jobs_finished` notification.

Every read takes many ids at once (chunks of CHUNK, served by the primary key): the push hub asks once per
interval for all its subscribers, never once per subscriber. Only what a browser may see is read: status,
result, error and finish time; never the callback URL, tokens or leases.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from ..schema import pending_jobs as J
from ..states import TERMINAL_VALUES
from ..validation import lenient_json, short_reason
from .base import Store
from .columns import lenient_time

log = logging.getLogger(__name__)

CHUNK = 1000
"""Ids per statement: a bounded IN list (or array) whatever the number of subscribers."""
FINISHED_CHANNEL = "pending_jobs_finished"
"""NOTIFY channel of the statement-level trigger `pending_jobs_notify_finished` (migration 0006)."""
FINISHED_TRIGGER = "pending_jobs_notify_finished"

_COLUMNS = (J.c.id, J.c.status, sa.cast(J.c.result, sa.Text).label("result"), J.c.last_error,
            lenient_time(J.c.finished_at))


@dataclasses.dataclass(frozen=True)
class JobEnd:
    """Where a job stands, as a browser may see it (its end when `status` is terminal)."""

    id: int
    status: str
    result: Any
    error: str | None
    """The first line of `last_error` (type and message): a browser is the end user's, and the traceback
    under it may hold SQL and the values bound to it (the whole text stays on the row)."""
    finished_at: dt.datetime | None

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_VALUES

    def message(self) -> dict[str, Any]:
        """The JSON object the push endpoints send."""
        return {"id": self.id, "status": self.status, "result": self.result, "error": self.error,
                "finished_at": self.finished_at.isoformat() if self.finished_at else None}


class PushStore:
    """The push hub's reads, on top of a job store (its engine, dialect and transaction retries)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.sql = store.sql

    def _read(self, ids: Sequence[int], finished_only: bool) -> list[JobEnd]:
        def build() -> sa.Select[Any]:
            where = [self.sql.id_in()]
            if finished_only:
                where.append(J.c.status.in_(TERMINAL_VALUES))
            return sa.select(*_COLUMNS).where(*where)

        stmt = self.sql.cached(("push_read", finished_only), build)
        unique = sorted(set(ids))
        found: list[JobEnd] = []
        for start in range(0, len(unique), CHUNK):
            chunk = unique[start: start + CHUNK]
            rows = self.store.read(functools.partial(_rows, stmt, chunk))
            found.extend(JobEnd(int(row.id), str(row.status), lenient_json(row.result), short_reason(row.last_error),
                                self.sql.clock_value(row.finished_at)) for row in rows)
        return found

    def finished_among(self, ids: Sequence[int]) -> list[JobEnd]:
        """The jobs among `ids` that have ended (succeeded, failed or cancelled): one statement per CHUNK ids."""
        return self._read(ids, finished_only=True)

    def states_of(self, ids: Sequence[int]) -> list[JobEnd]:
        """Where each existing job among `ids` stands, whatever its status (what a new subscriber is sent)."""
        return self._read(ids, finished_only=False)

    @property
    def can_push(self) -> bool:
        """Whether the database can push notifications at all (the dialect has a listener: PostgreSQL)."""
        return self.sql.listener(self.store.engine) is not None

    def can_notify(self) -> bool:
        """Whether the database notifies FINISHED_CHANNEL when a job ends: it can push, and the trigger of
        migration 0006 is there. (The catalog query is PostgreSQL's, the only database that can push; it
        belongs in postgres.py as a dialect verb once the push lands there.)"""
        if not self.can_push:
            return False
        sql = sa.text("SELECT 1 FROM pg_trigger WHERE tgname = :name AND tgrelid = 'pending_jobs'::regclass")
        return self.store.transaction(lambda conn: conn.execute(sql, {"name": FINISHED_TRIGGER}).first()) is not None

    def listen_finished(self, wake: Callable[[], None]) -> FinishedListener:
        """A started thread that calls `wake()` on every FINISHED_CHANNEL notification (PostgreSQL)."""
        listener = FinishedListener(self.store.engine, wake)
        listener.start()
        return listener


def _rows(stmt: sa.Select[Any], ids: list[int], conn: sa.Connection) -> Sequence[sa.Row[Any]]:
    return conn.execute(stmt, {"ids": ids}).all()


class FinishedListener:
    """LISTEN on a connection of its own (taken out of the pool, autocommit), as the runner's wake-up in
    postgres.py does, in a thread: psycopg's `notifies()` blocks. A lost connection is opened again after a
    second; meanwhile the hub's slow poll serves."""

    WAIT = 1.0  # seconds between looks at the stop flag

    def __init__(self, engine: sa.Engine, wake: Callable[[], None]) -> None:
        self.engine = engine
        self.wake = wake
        self.listening = threading.Event()
        """Set while LISTEN is in place (tests wait for it before finishing a job)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="push-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.WAIT + 5)

    def _serve(self) -> None:
        while not self._stop.is_set():
            conn: Any = None
            try:
                fairy = self.engine.raw_connection()
                conn = fairy.driver_connection
                fairy.detach()  # never back to the pool with LISTEN state on it
                conn.autocommit = True
                conn.execute(f"LISTEN {FINISHED_CHANNEL}")
                self.listening.set()
                self.wake()  # anything that ended while we were not listening
                while not self._stop.is_set():
                    if any(True for _ in conn.notifies(timeout=self.WAIT, stop_after=1)):
                        self.wake()
            except Exception as error:
                log.warning("LISTEN %s lost its connection: %s", FINISHED_CHANNEL, error)
            finally:
                self.listening.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
            self._stop.wait(self.WAIT)  # before connecting again (only ever reached after an error or a stop)
