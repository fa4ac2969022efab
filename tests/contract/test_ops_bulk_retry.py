"""`retry --failed` reopens in bounded transactions, as purge deletes: one transaction over every failed job
held the SQLite write lock 13 s for 200,000 jobs (every runner's claim and every producer's INSERT waited)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs.store import JobFilter, OpsStore, Store
from pending_jobs.store import ops as ops_module
from tests.conftest import scalar

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "mysql", "postgresql"], indirect=True)


def test_retry_failed_reopens_in_bounded_transactions(store: Store, engine: sa.Engine,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO pending_jobs (task, payload, status, attempts, finished_at) "
                             "VALUES ('echo', '{}', 'failed', 5, '2020-01-01 00:00:00')"), [{}] * 25)
        conn.execute(sa.text("INSERT INTO pending_jobs (task, payload, status) VALUES ('other', '{}', 'failed')"))
    monkeypatch.setattr(ops_module, "PURGE_BATCH", 10)
    ops = OpsStore(store)
    sizes: list[int] = []
    reopen = ops.reopen

    def counted(*args: Any, **kwargs: Any) -> int:
        sizes.append(reopen(*args, **kwargs))
        return sizes[-1]

    monkeypatch.setattr(ops, "reopen", counted)
    assert ops.retry_failed(JobFilter(task="echo")) == 25
    assert max(sizes) <= 10 and sum(sizes) == 25
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status = 'pending' AND attempts = 0") == 25
    assert scalar(engine, "SELECT status FROM pending_jobs WHERE task = 'other'") == "failed"
    assert scalar(engine, "SELECT SUM(total) FROM pending_job_totals WHERE outcome = 'failed'") == 25
