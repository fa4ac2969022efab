"""A serving run (`serve`, or `run` with a poll) while a config table has an error: its interval rows and
metrics say exit 2 all along, as its last row does (held.py)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from pending_jobs import declared, enqueue, registry
from pending_jobs.errors import EXIT_CONFIG
from pending_jobs.run import run_once
from pending_jobs.store import RunStore, Store
from tests.conftest import settings_for

BROKEN = {"sql": "INSERT INTO audit (note) VALUES (:note)", "timeout": "soon"}


def test_every_interval_row_of_a_serving_run_says_its_tables_need_a_fix(users: sa.Engine, store: Store,
                                                                         db_url: str) -> None:
    # `serve` never ends: its interval rows (and the metrics written with each) are all a monitor sees. They
    # said exit 0, and the last success moved on, while a table's jobs were held back the whole time.
    enqueue(users, "note", {"note": "x"})
    settings = settings_for(db_url, declared_tasks={"note": BROKEN}, poll=0.05, max_runtime=1.0)
    run_once(store, declared.merge(registry.load(settings.tasks), declared.load(settings)), settings, segment=0.3)

    rows = RunStore(store).runs(20)
    assert len(rows) >= 3, rows
    assert [row.report.exit_code for row in rows] == [EXIT_CONFIG] * len(rows)


def test_the_metrics_of_a_run_in_intervals_count_its_held_jobs(users: sa.Engine, store: Store, db_url: str,
                                                               tmp_path: Path) -> None:
    # `run` and `serve` write their metrics from the interval's counts, which were the runs table's columns
    # alone: `held` said 0 while the run's own summary said 1.
    enqueue(users, "note", {"note": "x"})
    metrics = tmp_path / "jobs.prom"
    settings = settings_for(db_url, declared_tasks={"note": BROKEN}, metrics_file=str(metrics))
    report = run_once(store, declared.merge(registry.load(settings.tasks), declared.load(settings)), settings,
                      segment=60.0)

    assert report.held == 1, report
    assert b'pending_jobs_run_jobs{outcome="held"} 1.0' in metrics.read_bytes()
