"""Callback SQL: claim due callbacks under a lease, record attempts, list and reopen them.

A claim pushes `callback_next_at` forward by the lease and sets a fresh `callback_token` in a short
transaction of its own; the HTTP request happens after it commits. Every later write is guarded by
`callback_status = 'pending' AND callback_token = :token`, so a runner whose lease ran out (and whose
callback another runner took over) can never overwrite a newer outcome.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc

from ..models import AttemptRow, CallbackKind, CallbackResult, CallbackRow, DueCallback, count
from ..schema import callback_attempts as A
from ..schema import db_now
from ..schema import pending_jobs as J
from ..states import CALLBACK_PENDING, TERMINAL_VALUES, CallbackStatus
from . import totals
from .base import Store
from .columns import lenient_time, one_more

log = logging.getLogger(__name__)

DELIVERED = CallbackStatus.DELIVERED.value
FAILED = CallbackStatus.FAILED.value
CALLBACK_ERROR_LIMIT = 2000  # characters of a callback error kept in callback_last_error and the attempts

DUE_COLUMNS = (
    J.c.id,
    J.c.callback_url,
    J.c.callback_attempts,
    J.c.task,
    J.c.queue,
    J.c.status,
    J.c.attempts,
    sa.cast(J.c.result, sa.Text).label("result"),  # parsed leniently: a producer's non-JSON result still announces
    J.c.last_error,
    lenient_time(J.c.created_at),  # a producer may have written anything there (SQLite keeps it)
    lenient_time(J.c.finished_at),
)


def _clip(text: str | None, limit: int = CALLBACK_ERROR_LIMIT) -> str | None:
    if text is None:
        return None
    return text.replace("\x00", "\\0")[:limit]


class CallbackStore:
    """Callback verbs on top of a job store (its engine, dialect and transaction retries)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.sql = store.sql

    @property
    def concurrent_writers(self) -> bool:
        """Whether a second transaction may write while another does (not on SQLite)."""
        return self.store.concurrent_writers

    def claim(self, limit: int, lease: float, queues: Sequence[str] = ()) -> list[DueCallback]:
        """Lease up to `limit` due callbacks (of jobs in `queues`; empty: all): count the attempt and push
        `callback_next_at` past the lease."""
        if limit < 1:
            return []
        token = secrets.token_hex(16)
        params: dict[str, Any] = {"cb_token": token, "cb_lease": float(lease)}
        where = [J.c.callback_status == CALLBACK_PENDING, J.c.callback_next_at <= db_now(),
                 # A job reopened by `retry` must not announce a stale outcome.
                 J.c.status.in_(TERMINAL_VALUES)]
        if queues:
            where.append(J.c.queue.in_(sa.bindparam("cb_queues", expanding=True)))
            params["cb_queues"] = list(queues)

        def select(columns: Sequence[sa.ColumnElement[Any]]) -> sa.Select[Any]:
            return sa.select(*columns).where(*where).order_by(J.c.callback_next_at, J.c.id).limit(limit)

        def mark() -> dict[str, Any]:
            return {
                "callback_attempts": one_more(J.c.callback_attempts),
                "callback_token": sa.bindparam("cb_token", type_=sa.String),
                "callback_next_at": self.sql.after(sa.bindparam("cb_lease", type_=sa.Float)),
            }

        def work(conn: sa.Connection) -> list[DueCallback]:
            key = ("callback_claim", limit, bool(queues))
            locked = self.sql.lock_mark_return(conn, key, select, mark, DUE_COLUMNS, params)
            counted = 0 if locked.after_mark else 1  # read before the UPDATE (MySQL), the attempt is not counted yet
            return [DueCallback.from_row(row._mapping, token, count(row._mapping["callback_attempts"]) + counted)
                    for row in locked.rows]

        try:
            claimed = self.store.transaction(work)
        except exc.DBAPIError as error:
            if not self.sql.undecodable(error):
                raise
            self.store.transaction(lambda conn: self.sql.quarantine(conn, select, params))
            claimed = self.store.transaction(work)
        claimed.sort(key=lambda callback: callback.job_id)
        return claimed

    def record(self, results: Sequence[CallbackResult]) -> int:
        """Write a batch of outcomes in one transaction; returns how many guarded updates applied.

        One INSERT for the attempt rows, then one guarded UPDATE per (claim token, outcome kind).
        A repeat after a lost commit changes no callback (the guard no longer matches). When the
        database refuses the batch for what one row holds, each outcome is written alone: the others
        are kept, and the refused one stays leased (sent again when its lease runs out) with a warning.
        """
        if not results:
            return 0
        try:
            return self.store.transaction(lambda conn: self._record(conn, results))
        except exc.DBAPIError as error:
            if self.sql.unavailable(error) or self.sql.connection_lost(error) or len(results) == 1:
                raise
        applied = 0
        for result in results:
            try:
                applied += self.store.transaction(functools.partial(self._record, results=[result]))
            except exc.DBAPIError as error:
                if self.sql.unavailable(error) or self.sql.connection_lost(error):
                    raise
                log.warning("callback of job %d: its outcome could not be recorded: %s", result.callback.job_id,
                            str(error.orig).splitlines()[0][:300])
        return applied

    def _record(self, conn: sa.Connection, results: Sequence[CallbackResult]) -> int:
        rows = [self._attempt_values(result) for result in results if result.kind != "release"]
        groups: dict[tuple[str, CallbackKind], list[CallbackResult]] = defaultdict(list)
        for result in results:
            groups[(result.callback.token, result.kind)].append(result)
        if rows:
            self.sql.insert_attempts(conn, rows)
        return sum(self._apply(conn, token, kind, group) for (token, kind), group in groups.items())

    def _attempt_values(self, result: CallbackResult) -> dict[str, Any]:
        return {
            "job_id": result.callback.job_id,
            "attempt": result.callback.attempt,
            "webhook_id": result.webhook_id[:64],
            "url": result.url[:2048],
            "status_code": result.status_code,
            "error": _clip(result.error),
            "duration_ms": max(0, int(result.duration_ms)),
            "response_excerpt": _clip(result.excerpt, 1024),
        }

    def _held(self) -> tuple[sa.ColumnElement[bool], ...]:
        token = sa.bindparam("held_token", type_=sa.String)
        return (self.sql.id_in(), J.c.callback_status == CALLBACK_PENDING, J.c.callback_token == token)

    def _apply(self, conn: sa.Connection, token: str, kind: CallbackKind, group: Sequence[CallbackResult]) -> int:
        """One guarded UPDATE for every outcome of `kind` held under `token`; returns its row count."""
        params = {"ids": [result.callback.job_id for result in group], "held_token": token}
        if kind == "delivered":  # the common case: one cached statement whatever the batch
            stmt = self.sql.cached(("callback_delivered",), lambda: sa.update(J).where(*self._held()).values(
                callback_token=None, callback_status=DELIVERED, callback_next_at=None, callback_last_error=None))
            return int(conn.execute(stmt, params).rowcount)
        values: dict[str, Any] = {"callback_token": None}
        if kind == "failed":
            values.update(callback_status=FAILED, callback_next_at=None, callback_last_error=self._errors(group))
        elif kind == "retry":
            values.update(callback_next_at=self._after(group), callback_last_error=self._errors(group))
        else:  # release: the attempt was never made, so it does not count
            values.update(callback_attempts=J.c.callback_attempts - 1, callback_next_at=self._after(group))
        return int(conn.execute(sa.update(J).where(*self._held()).values(values), params).rowcount)

    def _errors(self, group: Sequence[CallbackResult]) -> sa.ColumnElement[Any]:
        return sa.case({r.callback.job_id: _clip(r.error) for r in group}, value=J.c.id, else_=sa.null())

    def _after(self, group: Sequence[CallbackResult]) -> sa.ColumnElement[Any]:
        delays = sa.case({r.callback.job_id: max(0.0, float(r.delay)) for r in group}, value=J.c.id)
        return self.sql.after(sa.cast(delays, sa.Float))

    # -- operator verbs ------------------------------------------------------------------------

    def recent(self, failed_only: bool = False, limit: int = 100) -> list[CallbackRow]:
        """Jobs that have a callback, newest first; only `failed` ones when asked."""
        wanted = J.c.callback_status == FAILED if failed_only else J.c.callback_status.is_not(None)
        # Held by a runner: a claim sets the token and pushes callback_next_at to its lease's end; every
        # outcome clears the token. A lease that ran out is due again, not being sent.
        sending = sa.case((sa.and_(J.c.callback_status == CALLBACK_PENDING, J.c.callback_token.is_not(None),
                                   J.c.callback_next_at > db_now()), 1), else_=0).label("sending")
        stmt = (
            sa.select(J.c.id, J.c.task, J.c.status, J.c.callback_url, J.c.callback_status, J.c.callback_attempts,
                      lenient_time(J.c.callback_next_at), J.c.callback_last_error, lenient_time(J.c.finished_at),
                      sending)
            .where(wanted)
            .order_by(J.c.id.desc())
            .limit(limit)
        )
        return self.store.read(lambda conn: [CallbackRow.from_row(r) for r in conn.execute(stmt).mappings()])

    def retry(self, job_id: int) -> bool:
        """Make a finished job's callback due now with a fresh schedule (also when it had failed).

        Attempt numbers start again at 1; `attempted_at` tells the rounds apart in the attempts table. The
        outcome it leaves (delivered or failed) goes to the totals, so /metrics' counter keeps it.
        """
        where = (J.c.id == job_id, J.c.status.in_(TERMINAL_VALUES), J.c.callback_url.is_not(None),
                 J.c.callback_url != "")
        stmt = sa.update(J).where(*where).values(callback_status=CALLBACK_PENDING, callback_next_at=db_now(),
                                                 callback_attempts=0, callback_token=None)

        def work(conn: sa.Connection) -> bool:
            with self.sql.tolerant_reads(conn):  # SQLite: a task or queue that is not UTF-8 (see OpsStore.purge)
                rows = totals.lock(conn, where)
            if not rows or conn.execute(stmt).rowcount != 1:
                return False
            totals.keep(conn, self.sql, rows, jobs=False)
            return True

        return self.store.transaction(work)

    def attempts(self, job_id: int) -> list[AttemptRow]:
        """Every recorded attempt of one job's callback, oldest first."""
        stmt = sa.select(A).where(A.c.job_id == job_id).order_by(A.c.id)
        return self.store.read(lambda conn: [AttemptRow.from_row(r) for r in conn.execute(stmt).mappings()])
