"""PostgreSQL: a runner's wait for new jobs, woken by the INSERT trigger's NOTIFY instead of the next poll."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import sqlalchemy as sa

log = logging.getLogger(__name__)
CHANNEL = "pending_jobs"  # NOTIFY channel of the INSERT trigger (migration 0003)


class Listener:
    """LISTEN on a connection of its own (taken out of the pool, autocommit): the INSERT trigger of
    migration 0003 notifies CHANNEL once per statement, however many rows it inserts."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.conn: Any = None

    def __call__(self, seconds: float) -> bool:
        try:
            if self.conn is None:
                fairy = self.engine.raw_connection()
                self.conn = fairy.driver_connection
                fairy.detach()  # never back to the pool with LISTEN state on it
                self.conn.autocommit = True
                self.conn.execute(f"LISTEN {CHANNEL}")
                # A job inserted before this LISTEN notified nobody: after the run's first claim (made beside
                # this first wait), or while the connection was lost. Say so once: the run claims again now,
                # instead of at its next poll (a minute where a run relies on the push).
                return True
            return any(True for _ in self.conn.notifies(timeout=seconds, stop_after=1))
        except Exception as error:  # a restart or a cut: listen again next time; meanwhile the poll serves
            log.debug("LISTEN %s lost its connection: %s", CHANNEL, error)
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None
            time.sleep(seconds)
            return False
