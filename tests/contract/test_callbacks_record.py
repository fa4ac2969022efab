"""Batched recording of callback outcomes, on every database: one transaction per flush, guarded rows."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from pending_jobs import enqueue_many
from pending_jobs.models import CallbackKind, CallbackResult, DueCallback
from pending_jobs.store import Store
from pending_jobs.store.callbacks import CallbackStore
from tests.conftest import rows, scalar

URL = "http://127.0.0.1:9/hook"
KINDS: list[CallbackKind] = ["delivered", "retry", "failed", "release", "delivered", "retry", "failed", "delivered"]


def _due(engine: sa.Engine, count: int) -> None:
    enqueue_many(engine, [{"task": "noop", "callback_url": URL} for _ in range(count)])
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET status = 'succeeded', finished_at = created_at, "
                             "callback_status = 'pending', callback_next_at = created_at"))


def _result(callback: DueCallback, kind: CallbackKind) -> CallbackResult:
    failed = kind in ("retry", "failed")
    return CallbackResult(callback, kind, webhook_id=f"msg_{callback.job_id}", url=URL, delay=30.0,
                          error=f"HTTP 500 for job {callback.job_id}" if failed else None,
                          status_code=500 if failed else 200, duration_ms=3, excerpt="ok")


def test_one_flush_records_every_kind_from_two_claims_in_one_transaction(store: Store, engine: sa.Engine) -> None:
    _due(engine, len(KINDS))
    callbacks = CallbackStore(store)
    claimed = callbacks.claim(4, 60.0) + callbacks.claim(4, 60.0)
    assert len(claimed) == len(KINDS) and len({c.token for c in claimed}) == 2
    results = [_result(c, kind) for c, kind in zip(claimed, KINDS, strict=True)]
    commits: list[Any] = []

    def count(conn: sa.Connection) -> None:
        commits.append(conn)

    sa.event.listen(engine, "commit", count)
    try:
        applied = callbacks.record(results)
    finally:
        sa.event.remove(engine, "commit", count)
    assert applied == len(KINDS) and len(commits) == 1
    got = {r.id: r for r in (store.get(c.job_id) for c in claimed) if r is not None}
    for callback, kind in zip(claimed, KINDS, strict=True):
        row = got[callback.job_id]
        expected = {"delivered": "delivered", "failed": "failed"}.get(kind, "pending")
        assert row.callback_status == expected and row.status == "succeeded"
        assert row.callback_attempts == (0 if kind == "release" else 1)
        if kind in ("retry", "failed"):  # each row gets its own error, not its neighbour's
            assert row.callback_last_error == f"HTTP 500 for job {callback.job_id}"
        assert (row.callback_next_at is None) == (kind in ("delivered", "failed"))
    assert scalar(engine, "SELECT COUNT(*) FROM pending_job_callback_attempts") == len(KINDS) - 1
    assert sorted(r[0] for r in rows(engine, "SELECT job_id FROM pending_job_callback_attempts")) == sorted(
        c.job_id for c, kind in zip(claimed, KINDS, strict=True) if kind != "release")


def test_a_stale_or_repeated_flush_changes_no_callback(store: Store, engine: sa.Engine) -> None:
    _due(engine, 3)
    callbacks = CallbackStore(store)
    claimed = callbacks.claim(3, 60.0)
    assert callbacks.record([_result(c, "retry") for c in claimed]) == 3
    # The guard (pending, same token) no longer matches: neither a repeat nor a stale runner overwrites.
    assert callbacks.record([_result(c, "delivered") for c in claimed]) == 0
    assert {r[0] for r in rows(engine, "SELECT callback_status FROM pending_jobs")} == {"pending"}
