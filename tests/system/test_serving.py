"""A run that serves: callbacks go out as jobs end (retries too) while it goes on, queues keep to their
own callbacks, a run can leave callbacks to another or do nothing else, PostgreSQL wakes it at once,
and `serve` writes a runs row per interval."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue, registry
from pending_jobs.run import run_once
from pending_jobs.store import RunStore, Store
from tests.conftest import ROOT, rows, scalar, settings_for
from tests.receivers import answer, receiver, sequence

pytestmark = pytest.mark.slow


def serving(db_url: str, tmp_path: Path, *flags: str, preexec_fn: Callable[[], Any] | None = None,
            **env: str) -> subprocess.Popen[str]:
    full = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PENDING_JOBS_TASKS": "tests.jobs",
            "PENDING_JOBS_DATABASE_URL": db_url, "PENDING_JOBS_LOCK_FILE": str(tmp_path / "serve.lock"),
            "PENDING_JOBS_CALLBACK_ALLOW": "127.0.0.1", "PENDING_JOBS_POLL": "0.05", **env}
    return subprocess.Popen([sys.executable, "-m", "pending_jobs", "run", *flags], env=full, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)


def until(what: Callable[[], Any], seconds: float = 20.0) -> Any:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        found = what()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds}s")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


@pytest.mark.parametrize("backend", ["sqlite", "mysql"], indirect=True)
def test_callbacks_go_out_while_the_run_goes_on_retries_too(db_url: str, engine: sa.Engine, tmp_path: Path) -> None:
    with receiver(sequence(answer(500), answer(200))) as server:
        run = serving(db_url, tmp_path, PENDING_JOBS_CALLBACK_SCHEDULE="0.2")
        try:
            job_id = enqueue(engine, "echo", {}, callback_url=server.url("/hook"))
            until(lambda: scalar(engine, f"SELECT callback_status FROM pending_jobs WHERE id = {job_id}")
                  == "delivered")
            assert run.poll() is None  # announced, then retried and delivered, while the run goes on
            assert len(server.received) == 2
        finally:
            stop(run)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_run_delivers_the_callbacks_of_its_own_queues_only(db_url: str, engine: sa.Engine, tmp_path: Path) -> None:
    with receiver(answer(200)) as server:
        mail = enqueue(engine, "echo", {}, queue="mail", callback_url=server.url("/mail"))
        other = enqueue(engine, "echo", {}, queue="other", callback_url=server.url("/other"))
        with engine.begin() as conn:  # the other queue's job ended elsewhere; its callback is due
            conn.execute(sa.text("UPDATE pending_jobs SET status = 'succeeded', finished_at = now(), "
                                 f"callback_status = 'pending', callback_next_at = now() WHERE id = {other}"))
        run = serving(db_url, tmp_path, "--queue", "mail")
        try:
            until(lambda: scalar(engine, f"SELECT callback_status FROM pending_jobs WHERE id = {mail}") == "delivered")
            time.sleep(1.0)
            assert scalar(engine, f"SELECT callback_status FROM pending_jobs WHERE id = {other}") == "pending"
            assert [r.path for r in server.received] == ["/mail"]
        finally:
            stop(run)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_callbacks_off_and_only(db_url: str, engine: sa.Engine, tmp_path: Path) -> None:
    with receiver(answer(200)) as server:
        job_id = enqueue(engine, "echo", {}, callback_url=server.url("/hook"))
        jobs_only = serving(db_url, tmp_path, "--drain", "--callbacks", "off")
        jobs_only.communicate(timeout=60)
        assert rows(engine, f"SELECT status, callback_status FROM pending_jobs WHERE id = {job_id}") == \
            [("succeeded", "pending")]
        later = enqueue(engine, "echo", {})
        callbacks_only = serving(db_url, tmp_path, "--drain", "--callbacks", "only")
        callbacks_only.communicate(timeout=60)
        assert scalar(engine, f"SELECT callback_status FROM pending_jobs WHERE id = {job_id}") == "delivered"
        assert scalar(engine, f"SELECT status FROM pending_jobs WHERE id = {later}") == "pending"  # no job claimed


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_postgresql_wakes_a_serving_run_at_once(db_url: str, engine: sa.Engine, tmp_path: Path) -> None:
    run = serving(db_url, tmp_path, PENDING_JOBS_POLL="60")  # without the push, a minute's wait
    try:
        # Listening: a fixed 2 s let a loaded machine's INSERT come before the LISTEN, when the run served it
        # without the push (its first claim) or only at its next poll (the INSERT just after that claim).
        until(lambda: scalar(engine, "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND query = 'LISTEN pending_jobs'"), seconds=40.0)
        with engine.begin() as conn:  # a producer's plain INSERT (PHP, psql) wakes it through the trigger
            conn.execute(sa.text("INSERT INTO pending_jobs (task, payload) VALUES ('echo', '{}')"))
        until(lambda: scalar(engine, "SELECT status FROM pending_jobs") == "succeeded", seconds=10.0)
    finally:
        stop(run)


@pytest.mark.parametrize("backend", ["sqlite", "mysql"], indirect=True)
def test_a_service_writes_a_runs_row_per_interval(db_url: str, store: Store, engine: sa.Engine) -> None:
    import threading

    settings = settings_for(db_url, poll=0.05, max_runtime=3.0)
    for n in range(30):
        enqueue(engine, "echo", {"n": n})
    feeder = threading.Thread(target=lambda: [enqueue(engine, "echo", {}) or time.sleep(0.1) for _ in range(10)])
    feeder.start()
    report = run_once(store, registry.load(settings.tasks), settings, segment=0.7)
    feeder.join()
    assert report.succeeded == 40
    found = RunStore(store).runs(20)
    assert len(found) >= 3  # one per interval, and the last one
    assert sum(run.report.succeeded for run in found) == 40  # each interval counts its own jobs
    assert all(run.finished_at is not None for run in found)


@pytest.mark.parametrize("backend", ["sqlite", "mysql"], indirect=True)
def test_a_cron_run_busy_with_a_long_job_reports_that_it_is_alive(db_url: str, engine: sa.Engine,
                                                                 tmp_path: Path) -> None:
    # The cron run's row interval, shortened from 2 minutes for the test: a run living past it writes finished
    # runs rows while its long job runs, so `status` does not ask whether cron stopped.
    code = ("import sys; import pending_jobs.cli.run as r; r.RUN_SEGMENT = 0.5; "
            "from pending_jobs.cli import main; sys.exit(main(['run']))")
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PENDING_JOBS_TASKS": "tests.jobs",
           "PENDING_JOBS_DATABASE_URL": db_url, "PENDING_JOBS_LOCK_FILE": str(tmp_path / "serve.lock"),
           "PENDING_JOBS_POLL": "0.05", "PENDING_JOBS_MAX_RUNTIME": "1"}
    go = tmp_path / "go"
    # Runs until the test creates `go`: a 6 s job gave start-up and two 0.5 s segments 5.5 s, and a loaded
    # machine's start-up took longer (the segments' rows came after the wait had given up).
    long_one = enqueue(engine, "wait_for_go", {"go": str(go)})
    run = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        # Two 0.5 s segments end at start-up + 1 s, while the job still runs.
        until(lambda: scalar(engine, "SELECT COUNT(*) FROM pending_job_runs WHERE finished_at IS NOT NULL") >= 2,
              seconds=40.0)
        assert scalar(engine, f"SELECT status FROM pending_jobs WHERE id = {long_one}") == "running"
    finally:
        go.touch()
        _, err = run.communicate(timeout=30)
    assert run.returncode == 0, err
    assert scalar(engine, f"SELECT status FROM pending_jobs WHERE id = {long_one}") == "succeeded"
    assert scalar(engine, "SELECT SUM(succeeded) FROM pending_job_runs") == 1  # counted once, in its interval


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_hangup_stops_a_run_as_sigterm_does_and_nohup_keeps_it(db_url: str, engine: sa.Engine,
                                                                 tmp_path: Path) -> None:
    """SIGHUP (an ssh session closed under a run) killed the run by default: the jobs it had claimed stayed
    running until their lease expired. Now it stops claiming and finishes what runs, as SIGTERM does; under
    `nohup` (SIGHUP ignored) the run goes on."""
    # SIGHUP's default disposition for this run, whatever this test inherited (under `nohup` it is ignored).
    run = serving(db_url, tmp_path, "--concurrency", "1",
                  preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    try:
        first = enqueue(engine, "sleep", {"seconds": 1.0})
        until(lambda: scalar(engine, f"SELECT status FROM pending_jobs WHERE id = {first}") == "running")
        run.send_signal(signal.SIGHUP)
        _, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err
    assert "received SIGHUP: no more claims" in err
    assert scalar(engine, f"SELECT status FROM pending_jobs WHERE id = {first}") == "succeeded"

    nohup = subprocess.Popen(["nohup", sys.executable, "-m", "pending_jobs", "run"], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT),
                                  "PENDING_JOBS_TASKS": "tests.jobs", "PENDING_JOBS_DATABASE_URL": db_url,
                                  "PENDING_JOBS_LOCK_FILE": str(tmp_path / "serve.lock"), "PENDING_JOBS_POLL": "0.05"})
    try:
        second = enqueue(engine, "echo", {})
        until(lambda: scalar(engine, f"SELECT status FROM pending_jobs WHERE id = {second}") == "succeeded")
        nohup.send_signal(signal.SIGHUP)
        third = enqueue(engine, "echo", {})  # served after the hangup: the run went on
        until(lambda: scalar(engine, f"SELECT status FROM pending_jobs WHERE id = {third}") == "succeeded")
        assert nohup.poll() is None
    finally:
        stop(nohup)
