"""A run stopped by SIGTERM while declared sql jobs run in shared-transaction groups (runner/shared.py):
each group stops between its jobs, commits those it ran with their `succeeded`, and gives the others back,
pending, their attempt uncounted. A group ran to its COMMIT before: one of 50 jobs of 0.15 s outlasted a
3 s grace period, the run left, and its jobs waited `running` for their lease, their work rolled back; so
did one of a whole claim of them after fast jobs had made groups large."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue_many
from tests.conftest import ROOT

JOBS = 200
FAST = 1000
GRACE = 3.0
SLEEP = {"mysql": "SELECT SLEEP(:pause)", "postgresql": "SELECT pg_sleep(:pause)"}
SLEEPING = {"mysql": "SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE 'SELECT SLEEP(%'"
                     " AND db = DATABASE()",  # a read runs on a server-side cursor on PostgreSQL: FETCH, not SELECT
            "postgresql": "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                          " AND datname = current_database()"}


def _statuses(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT status, COUNT(*) FROM pending_jobs GROUP BY status")).all())


def _rows(engine: sa.Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        effects: dict[int, int] = dict(conn.execute(sa.text("SELECT n, COUNT(*) FROM effects GROUP BY n")).all())
        rows = conn.execute(sa.text("SELECT id, status, attempts, lease_expires_at, cancel_requested, payload"
                                    " FROM pending_jobs ORDER BY id")).mappings().all()
    return [{**row, "effects": effects.get(_n(row["payload"]), 0)} for row in rows]


def _groups_run_slow_jobs(engine: sa.Engine, backend: str) -> bool:
    """Whether slow jobs run in groups: 100 claimed `running`, or (a backlog of the fast jobs made the queue's
    claims orders: runner/ordering.py) a slow job sleeping in an order's transaction, its rows `pending`."""
    with engine.connect() as conn:
        return (_statuses(engine).get("running", 0) >= 100
                or bool(conn.execute(sa.text(SLEEPING[backend])).scalar()))


def _n(payload: object) -> int:
    return int((json.loads(payload) if isinstance(payload, str) else payload)["n"])  # type: ignore[index]


@pytest.mark.slow
@pytest.mark.parametrize("fast_first", [False, True], ids=["slow", "fast-then-slow"])
@pytest.mark.parametrize("backend", ["mysql", "postgresql"], indirect=True)
def test_sigterm_stops_running_groups_between_jobs_within_the_grace_period(
        backend: str, db_url: str, engine: sa.Engine, tmp_path: Path, fast_first: bool) -> None:
    """`fast_first`: the slow jobs come after fast ones of the same task, whose time made groups (and their
    steps) large."""
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE effects (n INT NOT NULL)")  # no key: a second write would show
    config = tmp_path / "jobs.toml"
    config.write_text(f'database_url = "{db_url}"\n[task.slow]\n'
                      f'sql = ["INSERT INTO effects (n) VALUES (:n)", "{SLEEP[backend]}"]\n')
    fast = FAST if fast_first else 0
    enqueue_many(engine, [{"task": "slow", "payload": {"n": n, "pause": 0}, "priority": 1} for n in range(fast)]
                 + [{"task": "slow", "payload": {"n": n, "pause": 0.15}} for n in range(fast, fast + JOBS)])
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PENDING_JOBS_POLL": "0",
           "PENDING_JOBS_LOCK_FILE": "none"}
    # 2 workers, claims of 100: groups of 50 jobs, 7.5 s each, far past the grace period.
    args = ["--config", str(config), "--concurrency", "2", "--batch-size", "100", "--grace", f"{GRACE:g}",
            "--lease", "300"]
    run = subprocess.Popen([sys.executable, "-m", "pending_jobs", "run", *args], env=env, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 60
        while not _groups_run_slow_jobs(engine, backend) or _statuses(engine).get("succeeded", 0) < fast:
            assert time.monotonic() < end and run.poll() is None, "the run never claimed"
            time.sleep(0.05)
        time.sleep(1.5)  # the groups are well into their jobs
        with engine.begin() as conn:  # an operator cancels some: those not run yet end cancelled, not pending
            conn.execute(sa.text("UPDATE pending_jobs SET cancel_requested = TRUE"
                                 " WHERE MOD(id, 7) = 0 AND status = 'running'"))
        signalled = time.monotonic()
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=60)
        took = time.monotonic() - signalled
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, (out, err)
    assert took < GRACE, (took, err)
    assert "still running after the grace period" not in err, err
    rows = _rows(engine)
    by_status = {status: [row for row in rows if row["status"] == status] for status in {r["status"] for r in rows}}
    assert set(by_status) <= {"succeeded", "pending", "cancelled"}, _statuses(engine)
    assert len(by_status.get("succeeded", [])) > fast and by_status.get("pending"), _statuses(engine)
    assert all(row["effects"] == 1 and row["attempts"] == 1 for row in by_status["succeeded"])
    assert all(row["effects"] == 0 and row["attempts"] == 0 and row["lease_expires_at"] is None
               and not row["cancel_requested"] for row in by_status["pending"])
    assert all(row["effects"] == 0 for row in by_status.get("cancelled", []))

    drained = subprocess.run([sys.executable, "-m", "pending_jobs", "run", "--config", str(config),
                              "--concurrency", "4"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert drained.returncode == 0, drained.stderr
    rows = _rows(engine)
    assert {row["status"] for row in rows} <= {"succeeded", "cancelled"}
    assert all(row["effects"] == 1 and row["attempts"] == 1 for row in rows if row["status"] == "succeeded")
