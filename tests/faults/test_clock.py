"""A runner whose clock is 10 minutes off behaves the same: every due/lease/rescue comparison uses the
database clock. The runner runs under libfaketime; the database server keeps the true time.

(SQLite has no server: its clock is the host's, the same one its producers use.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue, migrate
from pending_jobs.store import create_engine, open_store
from tests.conftest import ROOT, create_database, rows

FAKETIME = shutil.which("faketime")


def skewed_run(url: str, offset: str) -> subprocess.CompletedProcess[str]:
    assert FAKETIME is not None
    # Only the wall clock is off on such a host: its monotonic clock still counts from boot. libfaketime
    # 0.9.10 fakes CLOCK_MONOTONIC too, and then every timed wait of a thread (Event.wait, Queue.get)
    # never returns, so the run would hang rather than show what a skewed wall clock does.
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PENDING_JOBS_TASKS": "tests.jobs",
           "PENDING_JOBS_DATABASE_URL": url, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    return subprocess.run([FAKETIME, "-f", offset, sys.executable, "-m", "pending_jobs", "run", "--drain", "-v"],
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("backend_name", ["mysql", "postgresql"])
@pytest.mark.parametrize("offset", ["+10m", "-10m"])
def test_runner_clock_ten_minutes_off(backend_name: str, offset: str, tmp_path: Path) -> None:
    if FAKETIME is None:
        if os.environ.get("CI") == "true":
            pytest.fail("faketime is not installed (.ci/run installs it)")
        pytest.skip("faketime is not installed (apt-get install faketime)")
    url, drop = create_database(backend_name, tmp_path)
    engine = create_engine(url)
    try:
        migrate.upgrade(engine)
        due = enqueue(engine, "echo", {"n": 1})
        later = enqueue(engine, "echo", {"n": 2}, delay=300)  # due in 5 minutes by the database clock
        held = enqueue(engine, "echo", {"n": 3})
        open_store(engine).claim_job(held, "live-runner", 300)  # a live lease, 5 minutes left

        result = skewed_run(url, offset)

        assert result.returncode == 0, result.stderr
        assert "claimed 1, succeeded 1" in result.stdout and "rescued 0" in result.stdout
        states = dict(rows(engine, "SELECT id, status FROM pending_jobs"))
        assert states == {due: "succeeded", later: "pending", held: "running"}
        with engine.connect() as conn:  # times written by the run come from the database clock
            skew = conn.execute(sa.text(
                "SELECT finished_at, " + ("UTC_TIMESTAMP(6)" if backend_name == "mysql" else "now()")
                + " FROM pending_jobs WHERE id = :id"), {"id": due}).one()
        finished, now = (value.replace(tzinfo=None) for value in skew)
        assert abs((now - finished).total_seconds()) < 60
    finally:
        engine.dispose()
        drop()
