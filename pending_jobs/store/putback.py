"""Claimed jobs put back pending unrun, their attempt uncounted: released (the run stopped before a worker
started them) or held (their task's or queue's config table has an error: held.py). One an operator asked
to cancel meanwhile ends `cancelled` instead (its callback due), as `cancel` said it would: put back pending
with the request set, the next run's claim ran it to the end. No error-history row: no attempt ran.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..schema import db_now
from ..schema import pending_jobs as J
from ..states import JOB_PENDING, JobStatus

if TYPE_CHECKING:
    from .base import Store

log = logging.getLogger(__name__)

RELEASED_CANCELLED = ("cancelled before it started: an operator asked to cancel it while it waited for a worker, "
                      "and the run stopped before starting it")
HELD_CANCELLED = ("cancelled before it started: an operator asked to cancel it while an error in its config table "
                  "held it back")


def release(store: Store, token: str, ids: Sequence[int]) -> tuple[int, int]:
    """Put claimed jobs that never started back to pending, due as they were. (Put back, cancelled)."""
    if not ids:
        return 0, 0
    return store.transaction(lambda conn: _put_back(store, conn, token, list(ids), {}, RELEASED_CANCELLED))


def hold(store: Store, conn: sa.Connection, token: str, jobs: Sequence[tuple[int, float, str]]) -> tuple[int, int]:
    """Put (id, delay, reason) jobs back, due `delay` seconds from now with `reason` as their last_error, in the
    caller's transaction. (Put back, cancelled)."""
    if not jobs:
        return 0, 0
    reasons = {job_id: reason for job_id, _, reason in jobs}
    delays = sa.case({job_id: float(delay) for job_id, delay, _ in jobs}, value=J.c.id)
    values = {"run_at": store.sql.after(sa.cast(delays, sa.Float)), "last_error": sa.case(reasons, value=J.c.id)}
    return _put_back(store, conn, token, list(reasons), values, HELD_CANCELLED)


def _put_back(store: Store, conn: sa.Connection, token: str, ids: list[int], values: dict[str, Any],
              cancelled_reason: str) -> tuple[int, int]:
    uncounted = {"attempts": J.c.attempts - 1, "started_at": None}
    cancel_values = {**store.terminal_values(JobStatus.CANCELLED), **uncounted, "last_error": cancelled_reason}
    asked = (*store.held(token), J.c.cancel_requested == sa.true())
    params = {"ids": ids}
    cancelled = int(conn.execute(sa.update(J).where(*asked).values(cancel_values), params).rowcount)
    if cancelled:
        log.info("%d job(s) an operator cancelled before they started ended cancelled", cancelled)
    back = sa.update(J).where(*store.held(token)).values(
        status=JOB_PENDING, lease_expires_at=None, updated_at=db_now(), **uncounted, **values)
    return int(conn.execute(back, params).rowcount), cancelled
