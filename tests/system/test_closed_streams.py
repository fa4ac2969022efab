"""A command started with stdout or stderr closed (`>&-`, `2>&-`: Python sets the stream to None), or on a
full disk, still does its work and exits 0: under cron nothing would ever say why every run failed."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

# A task module: a run with no task at all refuses to start. The jobs below are of a task nobody handles.
TASKS = {"PENDING_JOBS_TASKS": "benchmarks.noop", "PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize("closed", ["2>&-", ">&-", ">&- 2>&-"])
def test_a_run_with_a_closed_stream_does_its_work(tmp_path: Path, closed: str) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    command = f'"{sys.executable}" -c "from pending_jobs.cli import entry; entry()"'
    subprocess.run(f'{command} migrate --database-url "{url}"', shell=True, check=True, capture_output=True)
    done = subprocess.run(f'{command} run --database-url "{url}" --drain -v {closed}', shell=True,
                          capture_output=True, text=True, env={**os.environ, **TASKS})
    assert done.returncode == 0, done


def _queued(tmp_path: Path) -> tuple[str, str]:
    """The command and a migrated database holding one job of a task nobody handles (a warning to log)."""
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    command = f'"{sys.executable}" -c "from pending_jobs.cli import entry; entry()"'
    subprocess.run(f'{command} migrate --database-url "{url}"', shell=True, check=True, capture_output=True)
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as conn:
        conn.execute("INSERT INTO pending_jobs (task, payload, max_attempts) VALUES ('nobody.handles', '{}', 1)")
    return command, url


def _status(tmp_path: Path) -> str:
    with contextlib.closing(sqlite3.connect(tmp_path / "jobs.sqlite3")) as conn:
        return str(conn.execute("SELECT status FROM pending_jobs").fetchone()[0])


@pytest.mark.parametrize("full", [">/dev/full", "2>/dev/full", ">/dev/full 2>/dev/full"])
def test_a_run_whose_output_cannot_be_written_does_its_work(tmp_path: Path, full: str) -> None:
    """The crontab appends to a log (`>> log 2>&1`) whose disk filled up (/dev/full answers ENOSPC): the
    warning about the unset callback secret stopped every run before its first claim, and -v's summary made
    a run that had recorded its work exit 1 with a traceback."""
    command, url = _queued(tmp_path)
    env = {**{k: v for k, v in os.environ.items() if k != "PENDING_JOBS_CALLBACK_SECRET"}, **TASKS}
    done = subprocess.run(f'{command} run --database-url "{url}" --drain -v {full}', shell=True,
                          capture_output=True, text=True, env=env)
    assert (done.returncode, _status(tmp_path)) == (0, "failed"), done


def test_a_log_file_that_cannot_be_written_is_reported_once(tmp_path: Path) -> None:
    """Logging's default printed a 20-line traceback on stderr for each line it could not write."""
    command, url = _queued(tmp_path)
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as conn:
        conn.execute("INSERT INTO pending_jobs (task, payload, max_attempts) VALUES ('nobody.handles', '{}', 1)")
    done = subprocess.run(f'{command} run --database-url "{url}" --drain -v --log-file /dev/full', shell=True,
                          capture_output=True, text=True, env={**os.environ, **TASKS})
    assert done.returncode == 0, done
    assert "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if "warning: PENDING_JOBS_CALLBACK_SECRET" not in line] == [
        "pending-jobs: cannot write the log to /dev/full: [Errno 28] No space left on device; its lines are "
        "dropped while it cannot (reported once)"]


@pytest.mark.parametrize("command_line", ["list", "show 1", "status", "status --json"])
def test_output_that_cannot_be_written_fails_in_one_line(tmp_path: Path, command_line: str) -> None:
    """Where the output is the work (`list > /dev/full`), the command fails, saying why in one line: it
    printed a traceback as if pending-jobs had a bug."""
    command, url = _queued(tmp_path)
    done = subprocess.run(f'{command} {command_line} --database-url "{url}" >/dev/full', shell=True,
                          capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (1, "pending-jobs: cannot write: [Errno 28] No space left on device\n")
