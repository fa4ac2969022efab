"""Declared `command` tasks through the real runner: every bad command ends its job with a reason, the rest run."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue
from pending_jobs.store import Store
from pending_jobs.store.columns import LEASE_EXPIRED
from pending_jobs.store.ops import OpsStore
from tests.processes import gone_soon, script

from .conftest import outcome


def test_each_bad_command_ends_its_job_with_a_reason_and_the_others_succeed(engine: sa.Engine, store: Store,
                                                                            run_declared: Any,
                                                                            tmp_path: Path) -> None:
    pids = {name: tmp_path / f"{name}.pid" for name in ("hang", "stubborn", "fork")}
    tables = {
        "ok_json": {"command": [script(tmp_path, "ok.sh", 'echo "{\\"got\\": $(cat)}"\n')]},
        "ok_text": {"command": [script(tmp_path, "text.sh", "echo built\n")]},
        "tempfail": {"command": [script(tmp_path, "busy.sh", "echo 'locked, later' >&2; exit 75\n")],
                     "backoff": 3600},
        "broken": {"command": [script(tmp_path, "broken.sh", "echo 'Fatal: bad input' >&2; exit 1\n")]},
        "missing": {"command": [str(tmp_path / "no-such-script")]},
        "not_executable": {"command": [script(tmp_path, "plain.sh", "exit 0\n", executable=False)]},
        "huge": {"command": [script(tmp_path, "huge.sh", "yes xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx | head -c 10485760\n")],
                 "result_limit": 100_000},
        "latin1": {"command": [script(tmp_path, "latin1.sh", "printf 'caf\\351'\n")]},
        "hang": {"command": [script(tmp_path, "hang.sh", f"sleep 300 & echo $! > {pids['hang']}; sleep 300\n")],
                 "timeout": "1s", "backoff": 3600},
        "stubborn": {"command": [script(tmp_path, "stubborn.sh", f"trap '' TERM; sleep 300 & echo $! > "
                                                                 f"{pids['stubborn']}; while :; do sleep 1; done\n")],
                     "timeout": "1s", "kill_after": 0.5, "backoff": 3600},
        "fork": {"command": [script(tmp_path, "fork.sh", f"sleep 300 & echo $! > {pids['fork']}; echo forked\n")]},
    }
    ids = {name: enqueue(engine, name, {"n": 1}) for name in tables}

    report = run_declared(tables, concurrency=len(tables))

    done = {name: outcome(store, job_id) for name, job_id in ids.items()}
    assert (report.succeeded, report.retried, report.failed) == (5, 3, 3)
    assert done["ok_json"].result == {"got": {"n": 1}}
    assert done["ok_text"].result == "built\n"
    assert done["latin1"].result == "caf\ufffd"
    assert done["fork"].result == "forked\n"
    assert done["huge"].status == "succeeded" and "[output cut at" in done["huge"].result
    assert (done["tempfail"].status, done["tempfail"].last_error) == (
        "pending", f"Retry: {tables['tempfail']['command'][0]} exited 75 (EX_TEMPFAIL: try again later); "
                   "stderr ends: locked, later")
    assert done["broken"].status == "failed" and done["broken"].attempts == 1
    assert done["broken"].last_error.endswith("broken.sh exited 1; stderr ends: Fatal: bad input")
    assert done["missing"].last_error == f"Fail: command not found: '{tmp_path / 'no-such-script'}' does not exist"
    assert done["not_executable"].last_error.startswith("Fail: command is not executable: ")
    assert done["hang"].status == "pending" and "hang.sh timed out after 1s: its process group was stopped " \
                                                "(SIGTERM)" in done["hang"].last_error
    assert done["stubborn"].status == "pending" and "(SIGTERM, then SIGKILL after 0.5s)" in done["stubborn"].last_error
    for name, pidfile in pids.items():
        assert gone_soon(int(pidfile.read_text())), f"{name}'s child is still running"


def test_backoff_and_the_tasks_max_attempts(engine: sa.Engine, store: Store, run_declared: Any,
                                            tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    seen = tmp_path / "seen"
    busy = script(tmp_path, "busy.sh", f'echo "$PENDING_JOBS_TASK $PENDING_JOBS_MAX_ATTEMPTS" >> {seen}\nexit 75\n')
    later = enqueue(engine, "later", {})
    once = enqueue(engine, "once", {})

    with caplog.at_level(logging.INFO, "pending_jobs.runner"):
        run_declared({"later": {"command": [busy], "backoff": ["7s", "1h"]},
                      "once": {"command": [busy], "max_attempts": 1}})

    # run_at and updated_at come from the same UPDATE and the database's clock: exactly the backoff apart.
    retried = outcome(store, later)
    assert retried.status == "pending" and retried.run_at is not None and retried.updated_at is not None
    assert abs((retried.run_at - retried.updated_at).total_seconds() - 7.0) < 0.01
    failed = outcome(store, once)
    assert failed.status == "failed" and failed.attempts == 1 and failed.max_attempts == 5
    assert failed.last_error.endswith("(attempt 1 of the task's max_attempts 1: giving up)")
    # The cron log and the command see the limit that holds: the task's 1, not the row's 5.
    assert f"job {once} (once) failed on attempt 1 of 1: Retry: " in caplog.text
    assert f"job {later} (later) will be retried in 7s after attempt 1 of 5: Retry: " in caplog.text
    assert sorted(seen.read_text().splitlines()) == ["later 5", "once 1"]


def test_a_job_whose_runner_died_is_not_run_past_the_tasks_max_attempts(engine: sa.Engine, store: Store,
                                                                        run_declared: Any, tmp_path: Path) -> None:
    """The rescue put it back by the row's max_attempts (5): a `max_attempts = 1` command ran a second time."""
    seen = tmp_path / "seen"
    note = script(tmp_path, "note.sh", f'echo "$PENDING_JOBS_TASK $PENDING_JOBS_ATTEMPT" >> {seen}\n')
    once, twice = enqueue(engine, "once", {}), enqueue(engine, "twice", {})
    with engine.begin() as conn:  # both were claimed, then their runner died during attempt 1
        conn.execute(sa.text("UPDATE pending_jobs SET status = 'running', attempts = 1, lease_token = 'gone', "
                             "lease_expires_at = :past"), {"past": dt.datetime(2000, 1, 1)})

    report = run_declared({"once": {"command": [note], "max_attempts": 1},
                           "twice": {"command": [note], "max_attempts": 2}})

    assert (report.rescued, report.failed, report.succeeded) == (2, 1, 1)
    failed = outcome(store, once)
    assert (failed.status, failed.attempts, failed.max_attempts) == ("failed", 1, 5)
    assert failed.last_error == LEASE_EXPIRED + "; no attempts left"
    assert outcome(store, twice).status == "succeeded" and outcome(store, twice).attempts == 2
    assert seen.read_text().splitlines() == ["twice 2"]  # the `once` command never ran again


def test_an_operator_cancel_stops_a_running_command(engine: sa.Engine, store: Store, run_declared: Any,
                                                    tmp_path: Path) -> None:
    pidfile = tmp_path / "long.pid"
    long = script(tmp_path, "long.sh", f"sleep 300 & echo $! > {pidfile}; wait\n")
    job_id = enqueue(engine, "long", {})
    other = enqueue(engine, "quick", {})

    def cancel_when_running() -> None:
        for _ in range(400):
            if pidfile.exists() and OpsStore(store).cancel(job_id) == "requested":
                return
            time.sleep(0.05)

    canceller = threading.Thread(target=cancel_when_running)
    canceller.start()
    run_declared({"long": {"command": [long], "timeout": "60s"}, "quick": {"command": ["true"]}})
    canceller.join()

    job = outcome(store, job_id)
    assert job.status == "cancelled" and "cancelled by an operator" in job.last_error
    assert gone_soon(int(pidfile.read_text()))
    assert outcome(store, other).status == "succeeded"
