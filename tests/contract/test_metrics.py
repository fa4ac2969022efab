"""`run --metrics-file`: a valid node_exporter textfile, replaced atomically by every run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

import pending_jobs
from pending_jobs.metrics import render, write_textfile
from pending_jobs.models import RunReport
from tests.conftest import cli


def parse(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}, through prometheus_client's own parser."""
    samples = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.mark.parametrize("backend", ["sqlite", "mysql", "postgresql"], indirect=True)
def test_metrics_file_is_valid_and_replaced_atomically(db_url: str, engine: sa.Engine, tmp_path: Path) -> None:
    path = tmp_path / "textfile" / "pending_jobs.prom"
    path.parent.mkdir()
    with engine.begin() as conn:
        pending_jobs.enqueue(conn, "echo", {}, queue="mail")
        pending_jobs.enqueue(conn, "fail_now", {}, queue="mail")
        pending_jobs.enqueue(conn, "flaky", {"succeed_on": 9}, queue="mail")
        pending_jobs.enqueue(conn, "echo", {}, queue="later", delay=3600)
    env = {"PENDING_JOBS_DATABASE_URL": db_url}
    assert cli("run", "--metrics-file", str(path), env=env).returncode == 0

    m = parse(path)
    assert m[("pending_jobs_run_jobs", (("outcome", "claimed"),))] == 3
    assert m[("pending_jobs_run_jobs", (("outcome", "succeeded"),))] == 1
    assert m[("pending_jobs_run_jobs", (("outcome", "failed"),))] == 1
    assert m[("pending_jobs_run_jobs", (("outcome", "retried"),))] == 1
    assert m[("pending_jobs_run_exit_code", ())] == 0
    assert m[("pending_jobs_run_duration_seconds", ())] >= 0
    assert m[("pending_jobs_queue_jobs", (("queue", "later"), ("status", "pending")))] == 1
    assert m[("pending_jobs_queue_jobs", (("queue", "mail"), ("status", "pending")))] == 1
    assert m[("pending_jobs_queue_jobs", (("queue", "mail"), ("status", "succeeded")))] == 1
    assert m[("pending_jobs_oldest_due_age_seconds", ())] == 0  # the retry is not due yet
    assert m[("pending_jobs_callbacks", (("status", "failed"),))] == 0
    first_success = m[("pending_jobs_last_success_timestamp_seconds", ())]
    assert first_success > 1.7e9
    assert ("pending_jobs_run_callbacks", (("outcome", "delivered"),)) in m
    inode = path.stat().st_ino

    # A second run (the setting from the environment this time) replaces the file: a new inode,
    # and no temporary file left behind for the collector to pick up.
    assert cli("run", env={**env, "PENDING_JOBS_METRICS_FILE": str(path)}).returncode == 0
    assert path.stat().st_ino != inode
    assert os.listdir(path.parent) == ["pending_jobs.prom"]
    again = parse(path)
    assert again[("pending_jobs_run_jobs", (("outcome", "claimed"),))] == 0
    assert again[("pending_jobs_last_success_timestamp_seconds", ())] >= first_success
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "pending_jobs.prom"
    metrics = render(RunReport(claimed=2, succeeded=2, duration=1.5, exit_code=0), 1.8e9, None)
    write_textfile(str(path), metrics)
    before = path.read_text()
    assert "pending_jobs_run_jobs" in before and "pending_jobs_queue_jobs" not in before  # no health: no depth
    (tmp_path / "blocker").mkdir()
    with pytest.raises(OSError):
        write_textfile(str(tmp_path / "blocker"), metrics)  # os.replace onto a directory fails
    assert path.read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["blocker", "pending_jobs.prom"]
