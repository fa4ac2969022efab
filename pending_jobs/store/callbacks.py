"""Callback SQL: claim due callbacks under a lease, record attempts, list and reopen them.

A claim pushes `callback_next_at` forward by the lease and sets a fresh `callback_token` in a short
transaction of its own; the HTTP request happens after it commits. Every later write is guarded by
`callback_status = 'pending' AND callback_token = :token`, so a runner whose lease ran out (and whose
callback another runner took over) can never overwrite a newer outcome.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import secrets
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import sqlalchemy as sa

from ..schema import callback_attempts, db_now
from ..states import TERMINAL, CallbackStatus
from .base import J, Store
from .models import utc

A = callback_attempts
PENDING = CallbackStatus.PENDING.value
DELIVERED = CallbackStatus.DELIVERED.value
FAILED = CallbackStatus.FAILED.value
ERROR_LIMIT = 2000

ResultKind = Literal["delivered", "retry", "failed", "release"]

DUE_COLUMNS = (
    J.c.id,
    J.c.callback_url,
    J.c.callback_attempts,
    J.c.task,
    J.c.queue,
    J.c.status,
    J.c.attempts,
    J.c.result,
    J.c.last_error,
    J.c.created_at,
    J.c.finished_at,
)


@dataclasses.dataclass(frozen=True)
class DueCallback:
    """A callback this runner holds under `token`; `attempt` counts this delivery attempt."""

    job_id: int
    url: str
    token: str
    attempt: int
    task: str
    queue: str
    status: str
    attempts: int
    result: Any
    last_error: str | None
    created_at: dt.datetime | None
    finished_at: dt.datetime | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any], token: str, attempt: int) -> DueCallback:
        return cls(
            job_id=int(row["id"]),
            url=str(row["callback_url"]),
            token=token,
            attempt=attempt,
            task=row["task"],
            queue=row["queue"],
            status=row["status"],
            attempts=int(row["attempts"]),
            result=row["result"],
            last_error=row["last_error"],
            created_at=utc(row["created_at"]),
            finished_at=utc(row["finished_at"]),
        )


@dataclasses.dataclass(frozen=True)
class CallbackResult:
    """What one attempt came to. `release` hands a claimed callback back unsent (circuit breaker)."""

    callback: DueCallback
    kind: ResultKind
    webhook_id: str = ""
    url: str = ""
    delay: float = 0.0
    error: str | None = None
    status_code: int | None = None
    duration_ms: int = 0
    excerpt: str | None = None


@dataclasses.dataclass(frozen=True)
class CallbackRow:
    """A job's callback state, for `callbacks list`."""

    job_id: int
    task: str
    job_status: str
    url: str
    callback_status: str
    callback_attempts: int
    callback_next_at: dt.datetime | None
    callback_last_error: str | None
    finished_at: dt.datetime | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> CallbackRow:
        return cls(
            job_id=int(row["id"]),
            task=row["task"],
            job_status=row["status"],
            url=str(row["callback_url"]),
            callback_status=row["callback_status"],
            callback_attempts=int(row["callback_attempts"]),
            callback_next_at=utc(row["callback_next_at"]),
            callback_last_error=row["callback_last_error"],
            finished_at=utc(row["finished_at"]),
        )


@dataclasses.dataclass(frozen=True)
class AttemptRow:
    """One row of `pending_job_callback_attempts`."""

    job_id: int
    attempt: int
    webhook_id: str
    attempted_at: dt.datetime | None
    url: str
    status_code: int | None
    error: str | None
    duration_ms: int
    response_excerpt: str | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> AttemptRow:
        values = {field.name: row[field.name] for field in dataclasses.fields(cls)}
        values["attempted_at"] = utc(values["attempted_at"])
        return cls(**values)


def _due() -> tuple[sa.ColumnElement[bool], ...]:
    # The job's status is checked too: a job reopened by `retry` must not announce a stale outcome.
    return (
        J.c.callback_status == PENDING,
        J.c.callback_next_at <= db_now(),
        J.c.status.in_([status.value for status in TERMINAL]),
    )


ATTEMPT_TYPES = {"job_id": "BIGINT", "attempt": "INTEGER", "webhook_id": "TEXT", "url": "TEXT",
                 "status_code": "INTEGER", "error": "TEXT", "duration_ms": "INTEGER", "response_excerpt": "TEXT"}


@functools.cache
def _unnest_attempts() -> sa.TextClause:
    """PostgreSQL: every attempt row of a batch in one INSERT, one array parameter per column."""
    arrays = ", ".join(f"CAST(:{column} AS {kind}[])" for column, kind in ATTEMPT_TYPES.items())
    return sa.text(f"INSERT INTO {A.name} ({', '.join(ATTEMPT_TYPES)}, attempted_at) "
                   f"SELECT *, now() FROM unnest({arrays})")


def _clip(text: str | None, limit: int = ERROR_LIMIT) -> str | None:
    if text is None:
        return None
    return text.replace("\x00", "\\0")[:limit]


class CallbackStore:
    """Callback verbs on top of a job store (its engine, clock and transaction retries)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def concurrent_writers(self) -> bool:
        """Whether a second transaction may write while another does (not on SQLite)."""
        return self.store.concurrent_writers

    def claim(self, limit: int, lease: float) -> list[DueCallback]:
        """Lease up to `limit` due callbacks: count the attempt, push `callback_next_at` past the lease."""
        if limit < 1:
            return []
        token = secrets.token_hex(16)
        params = {"cb_token": token, "cb_lease": float(lease)}

        def values() -> dict[str, Any]:
            return {
                "callback_attempts": J.c.callback_attempts + 1,
                "callback_token": sa.bindparam("cb_token", type_=sa.String),
                "callback_next_at": self.store.after(sa.bindparam("cb_lease", type_=sa.Float)),
            }

        if self.store.dialect == "mysql":
            # MySQL/MariaDB: no UPDATE ... RETURNING and no LIMIT subquery on the updated table.
            locked = self.store._cached(("callback_lock", limit), lambda: (
                sa.select(*DUE_COLUMNS).where(*_due()).order_by(J.c.callback_next_at, J.c.id).limit(limit)
                .with_for_update(skip_locked=True)))
            mark = self.store._cached(("callback_mark",), lambda: sa.update(J).where(
                J.c.id.in_(sa.bindparam("ids", expanding=True))).values(values()))

            def work(conn: sa.Connection) -> list[DueCallback]:
                rows = conn.execute(locked).mappings().all()
                if rows:
                    conn.execute(mark, {"ids": [row["id"] for row in rows], **params})
                return [DueCallback.from_row(row, token, int(row["callback_attempts"]) + 1) for row in rows]

        else:
            def build() -> sa.Update:
                ids = sa.select(J.c.id).where(*_due()).order_by(J.c.callback_next_at, J.c.id).limit(limit)
                return (
                    sa.update(J)
                    .where(J.c.id.in_(ids.with_for_update(skip_locked=True).scalar_subquery()))
                    .values(values())
                    .returning(*DUE_COLUMNS)
                )

            stmt = self.store._cached(("callback_claim", limit), build)

            def work(conn: sa.Connection) -> list[DueCallback]:
                rows = conn.execute(stmt, params).mappings().all()
                return [DueCallback.from_row(row, token, int(row["callback_attempts"])) for row in rows]

        claimed = self.store.transaction(work)
        claimed.sort(key=lambda callback: callback.job_id)
        return claimed

    def record(self, results: Sequence[CallbackResult]) -> int:
        """Write a batch of outcomes in one transaction; returns how many guarded updates applied.

        One executemany INSERT for the attempt rows, then one guarded UPDATE per (claim token,
        outcome kind). A repeat after a lost commit changes no callback (the guard no longer matches).
        """
        if not results:
            return 0
        rows = [self._attempt_values(result) for result in results if result.kind != "release"]
        groups: dict[tuple[str, ResultKind], list[CallbackResult]] = defaultdict(list)
        for result in results:
            groups[(result.callback.token, result.kind)].append(result)

        def work(conn: sa.Connection) -> int:
            if rows and self.store.dialect == "postgresql":
                # One INSERT of arrays, not a pipelined row per attempt: a third of the CPU per batch.
                conn.execute(_unnest_attempts(), {column: [row[column] for row in rows] for column in ATTEMPT_TYPES})
            elif rows:
                conn.execute(self._insert_attempts(), rows)
            return sum(self._apply(conn, token, kind, group) for (token, kind), group in groups.items())

        return self.store.transaction(work)

    def _insert_attempts(self) -> sa.Insert:
        if self.store.dialect == "mysql":
            # PyMySQL turns an executemany INSERT into one multi-row INSERT only when every value is a
            # placeholder; with UTC_TIMESTAMP(6) among them it sends one INSERT per row. The column's
            # server default is that same clock (schema.now_default), so the INSERT leaves it out.
            return self.store._cached(("callback_attempts",), lambda: sa.insert(A))
        return self.store._cached(("callback_attempts",), lambda: sa.insert(A).values(attempted_at=db_now()))

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
        return (self.store._id_in(), J.c.callback_status == PENDING, J.c.callback_token == token)

    def _apply(self, conn: sa.Connection, token: str, kind: ResultKind, group: Sequence[CallbackResult]) -> int:
        """One guarded UPDATE for every outcome of `kind` held under `token`; returns its row count."""
        params = {"ids": [result.callback.job_id for result in group], "held_token": token}
        if kind == "delivered":  # the common case: one cached statement whatever the batch
            stmt = self.store._cached(("callback_delivered",), lambda: sa.update(J).where(*self._held()).values(
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
        return self.store.after(sa.cast(delays, sa.Float))

    # -- operator verbs ------------------------------------------------------------------------

    def recent(self, failed_only: bool = False, limit: int = 100) -> list[CallbackRow]:
        """Jobs that have a callback, newest first; only `failed` ones when asked."""
        wanted = J.c.callback_status == FAILED if failed_only else J.c.callback_status.is_not(None)
        stmt = (
            sa.select(J.c.id, J.c.task, J.c.status, J.c.callback_url, J.c.callback_status, J.c.callback_attempts,
                      J.c.callback_next_at, J.c.callback_last_error, J.c.finished_at)
            .where(wanted)
            .order_by(J.c.id.desc())
            .limit(limit)
        )
        return self.store.transaction(lambda conn: [CallbackRow.from_row(r) for r in conn.execute(stmt).mappings()])

    def retry(self, job_id: int) -> bool:
        """Make a finished job's callback due now with a fresh schedule (also when it had failed).

        Attempt numbers start again at 1; `attempted_at` tells the rounds apart in the attempts table.
        """
        stmt = (
            sa.update(J)
            .where(J.c.id == job_id, J.c.status.in_([s.value for s in TERMINAL]),
                   J.c.callback_url.is_not(None), J.c.callback_url != "")
            .values(callback_status=PENDING, callback_next_at=db_now(), callback_attempts=0, callback_token=None)
        )
        return self.store.transaction(lambda conn: conn.execute(stmt).rowcount == 1)

    def attempts(self, job_id: int) -> list[AttemptRow]:
        """Every recorded attempt of one job's callback, oldest first."""
        stmt = sa.select(A).where(A.c.job_id == job_id).order_by(A.c.id)
        return self.store.transaction(lambda conn: [AttemptRow.from_row(r) for r in conn.execute(stmt).mappings()])
