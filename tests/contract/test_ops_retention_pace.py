"""A run's retention keeps up with the jobs that end: it stopped after 10 batches (10,000 jobs of each kind
a run, so a minute under cron) however quick they were, and a queue ending more jobs than that grew for ever."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from pending_jobs.store import OpsStore, Store
from pending_jobs.store import ops as ops_module
from tests.conftest import scalar

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "mysql", "postgresql"], indirect=True)


def test_one_retention_deletes_more_than_ten_quick_batches(store: Store, engine: sa.Engine,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops_module, "PURGE_BATCH", 10)  # 10 batches: 100 jobs of a kind
    monkeypatch.setattr(ops_module, "BATCH_GAP", 0.0)  # SQLite's 50 batches would spend 2.5 s of RETENTION_TIME
    with engine.begin() as conn:
        for status in ("succeeded", "failed"):
            conn.execute(sa.text("INSERT INTO pending_jobs (task, payload, status, finished_at) "
                                 "VALUES ('echo', '{}', :s, '2000-01-01 00:00:00')"), [{"s": status}] * 250)
        conn.execute(sa.text("INSERT INTO pending_jobs (task, payload) VALUES ('echo', '{}')"))  # the newest
    assert OpsStore(store).apply_retention(3600, 3600) == 500
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status <> 'pending'") == 0
    assert scalar(engine, "SELECT SUM(total) FROM pending_job_totals") == 500


def test_retention_stops_at_its_time_with_a_backlog_left(store: Store, engine: sa.Engine,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops_module, "PURGE_BATCH", 10)
    monkeypatch.setattr(ops_module, "RETENTION_TIME", 0.0)  # only the batches every run makes
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO pending_jobs (task, payload, status, finished_at) "
                             "VALUES ('echo', '{}', 'succeeded', '2000-01-01 00:00:00')"), [{}] * 250)
    assert OpsStore(store).apply_retention(3600, 3600) == 100
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs") == 150


def test_a_signalled_runs_retention_makes_only_its_fixed_batches(store: Store, engine: sa.Engine,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # After SIGTERM a supervisor waits for the exit: RETENTION_TIME more of batches delayed it (2 s -> 5.3 s).
    monkeypatch.setattr(ops_module, "PURGE_BATCH", 10)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO pending_jobs (task, payload, status, finished_at) "
                             "VALUES ('echo', '{}', 'succeeded', '2000-01-01 00:00:00')"), [{}] * 250)
    assert OpsStore(store).apply_retention(3600, 3600, budget=0.0) == 100
