"""Cron without cron's penalties, with real processes: each tick's run takes over from the last one
without a gap and without two serving at once; a kill -9 at any moment loses nothing and runs nothing
twice; two hosts side by side share the work."""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue
from tests.conftest import ROOT, rows

pytestmark = pytest.mark.slow


def tick(db_url: str, lock: Path, lease: str = "30", **extra: str) -> subprocess.Popen[bytes]:
    """What cron starts every minute (here every couple of seconds): `pending-jobs run`, serving."""
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PENDING_JOBS_TASKS": "tests.jobs",
           "PENDING_JOBS_DATABASE_URL": db_url, "PENDING_JOBS_LOCK_FILE": str(lock), "PENDING_JOBS_POLL": "0.05",
           "PENDING_JOBS_LEASE": lease, "PENDING_JOBS_MAX_RUNTIME": "60", **extra}
    return subprocess.Popen([sys.executable, "-m", "pending_jobs", "run"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def produce(engine: sa.Engine, count: int, spread: float, ids: list[int]) -> threading.Thread:
    """A producer inserting `ledger` jobs at random moments over `spread` seconds."""

    def work() -> None:
        for _ in range(count):
            ids.append(enqueue(engine, "ledger", {}))
            time.sleep(random.uniform(0, 2 * spread / count))

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def cron(db_url: str, locks: list[Path], seconds: float, every: float,
         kill: float = 0.0) -> list[subprocess.Popen[bytes]]:
    """Tick every `every` seconds for `seconds`, one run per lock (host) per tick; `kill`: chance that a
    tick also kill -9s a random live run (a crash at any moment of a hand-off)."""
    started: list[subprocess.Popen[bytes]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for lock in locks:
            started.append(tick(db_url, lock, lease="3" if kill else "30"))
        if kill and random.random() < kill:
            alive = [proc for proc in started if proc.poll() is None]
            if alive:
                random.choice(alive).send_signal(signal.SIGKILL)
        time.sleep(every)
    return started


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def drain(db_url: str) -> None:
    """A last run with nothing left to take over from: rescues what a kill left and runs it."""
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PENDING_JOBS_TASKS": "tests.jobs",
           "PENDING_JOBS_DATABASE_URL": db_url}
    subprocess.run([sys.executable, "-m", "pending_jobs", "run", "--drain"], env=env, cwd=ROOT, check=True,
                   timeout=120, capture_output=True)


@pytest.mark.parametrize("backend", ["sqlite", "mysql", "postgresql"], indirect=True)
def test_each_tick_takes_over_without_a_gap_and_without_overlap(db_url: str, engine: sa.Engine,
                                                                tmp_path: Path) -> None:
    ids: list[int] = []
    producer = produce(engine, 60, 8.0, ids)
    procs = cron(db_url, [tmp_path / "host.lock"], seconds=9.0, every=1.5)
    producer.join()
    time.sleep(1.0)
    stop_all(procs)
    assert all(proc.returncode in (0, -signal.SIGTERM) for proc in procs)

    done = rows(engine, "SELECT status, attempts FROM pending_jobs")
    assert sorted(done) == [("succeeded", 1)] * len(ids)
    assert sorted(r[0] for r in rows(engine, "SELECT job_id FROM ledger")) == sorted(ids)  # each ran once
    claims = _claims_by_run(engine)
    assert len(claims) >= 2  # ticks took over from one another
    spans = sorted((first, last) for first, last in claims.values())
    for (_, earlier_last), (later_first, _) in itertools.pairwise(spans):
        assert later_first >= earlier_last  # never two runs of one host serving at once
    serving = rows(engine, "SELECT started_at, finished_at FROM pending_job_runs WHERE claimed > 0 ORDER BY id")
    assert serving  # and the runs table tells the story of each tick's run


def test_a_kill_at_any_moment_of_a_hand_off_loses_nothing_and_runs_nothing_twice(
    db_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    random.seed(int(time.time()))
    ids: list[int] = []
    producer = produce(engine, 80, 8.0, ids)
    procs = cron(db_url, [tmp_path / "host.lock"], seconds=9.0, every=1.0, kill=0.5)
    producer.join()
    stop_all(procs)
    time.sleep(3.5)  # the killed runs' leases (3 s) expire
    drain(db_url)
    assert sorted(rows(engine, "SELECT status FROM pending_jobs")) == [("succeeded",)] * len(ids)
    assert sorted(r[0] for r in rows(engine, "SELECT job_id FROM ledger")) == sorted(ids)  # exactly once


@pytest.mark.parametrize("backend", ["mysql", "postgresql"], indirect=True)
def test_two_hosts_under_cron_side_by_side_share_the_work(db_url: str, engine: sa.Engine, tmp_path: Path) -> None:
    ids: list[int] = []
    producer = produce(engine, 80, 6.0, ids)
    procs = cron(db_url, [tmp_path / "a.lock", tmp_path / "b.lock"], seconds=7.0, every=1.5)
    producer.join()
    time.sleep(1.0)
    stop_all(procs)
    assert sorted(rows(engine, "SELECT status, attempts FROM pending_jobs")) == [("succeeded", 1)] * len(ids)
    assert sorted(r[0] for r in rows(engine, "SELECT job_id FROM ledger")) == sorted(ids)
    owners = {r[0] for r in rows(engine, "SELECT DISTINCT lease_owner FROM pending_jobs")}
    assert len(owners) >= 2


def _claims_by_run(engine: sa.Engine) -> dict[str, tuple[Any, Any]]:
    """lease owner (host:pid of a run) -> (its first claim, its last claim), by the database clock."""
    found = rows(engine, "SELECT lease_owner, MIN(started_at), MAX(started_at) FROM pending_jobs GROUP BY lease_owner")
    return {owner: (first, last) for owner, first, last in found}


def _wait_for(check: Any, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("backend", ["sqlite", "mysql"], indirect=True)
def test_the_next_tick_serves_while_the_last_one_s_job_still_runs(db_url: str, engine: sa.Engine,
                                                                  tmp_path: Path) -> None:
    # The serving run's one worker runs a long job when the next tick's run is ready: it serves nobody, so it
    # hands over and lets go of the lock at once (before, it kept the lock until its job ended, and the
    # quick job below waited for it). The next run serves the quick job while the long one still runs: the
    # long one runs until the test creates `go`.
    lock, go = tmp_path / "host.lock", tmp_path / "go"
    first = tick(db_url, lock, PENDING_JOBS_CONCURRENCY="1")
    _wait_for(lock.exists)
    time.sleep(0.5)
    long_one = enqueue(engine, "wait_for_go", {"go": str(go)})
    _wait_for(lambda: rows(engine, f"SELECT status FROM pending_jobs WHERE id = {long_one}") == [("running",)])
    second = tick(db_url, lock)
    quick = enqueue(engine, "noop", {})
    _wait_for(lambda: rows(engine, f"SELECT status FROM pending_jobs WHERE id = {quick}") == [("succeeded",)])
    assert rows(engine, f"SELECT status FROM pending_jobs WHERE id = {long_one}") == [("running",)]
    go.touch()
    assert first.wait(30) == 0  # the long job ended, then the first run
    stop_all([second])
    assert rows(engine, f"SELECT status, attempts FROM pending_jobs WHERE id = {long_one}") == [("succeeded", 1)]


def test_a_run_with_a_bad_setting_leaves_the_serving_run_serving(db_url: str, engine: sa.Engine,
                                                                 tmp_path: Path) -> None:
    lock = tmp_path / "host.lock"
    serving = tick(db_url, lock)
    _wait_for(lock.exists)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PENDING_JOBS_TASKS": "tests.jobs",
           "PENDING_JOBS_DATABASE_URL": db_url, "PENDING_JOBS_LOCK_FILE": str(lock),
           "PENDING_JOBS_CALLBACK_SECRET": "whsec_!!!"}
    bad = subprocess.run([sys.executable, "-m", "pending_jobs", "run"], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "callback_secret" in bad.stderr, bad.stderr
    time.sleep(0.5)
    assert serving.poll() is None  # it was never asked to hand over
    job = enqueue(engine, "noop", {})
    _wait_for(lambda: rows(engine, f"SELECT status FROM pending_jobs WHERE id = {job}") == [("succeeded",)])
    stop_all([serving])
