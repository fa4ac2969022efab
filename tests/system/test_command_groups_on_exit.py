"""A runner that leaves while a declared command runs (its grace spent after SIGTERM) kills the command's
process group on its way out: docs/tasks.md promises it, and an orphan would run on beside its rescued job."""

from __future__ import annotations

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


def _alive(pid: int) -> bool:
    """Whether `pid` still runs; a zombie (killed, not yet reaped by its new parent) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # the state follows the command name in parentheses


def _wait_for(check: object, within: float) -> bool:
    assert callable(check)
    end = time.monotonic() + within
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


# MariaDB too, as the defect was found there: a server backend must not change how the run leaves.
@pytest.mark.parametrize("backend", ["sqlite", "mysql"], indirect=True)
def test_a_command_still_running_when_the_grace_is_spent_dies_with_the_run(db_url: str, engine: sa.Engine,
                                                                           tmp_path: Path) -> None:
    pid_file = tmp_path / "command.pid"
    config = tmp_path / "jobs.toml"
    # `exec` makes the PID written the PID of the sleep itself, the leader of the command's group.
    # The timeout is far longer than the test, so only the runner's exit can end the command.
    config.write_text(f'database_url = "{db_url}"\n'
                      f'[task.sleep]\ncommand = ["sh", "-c", "echo $$ > {pid_file}; exec sleep 60"]\n'
                      'timeout = "300s"\n')
    enqueue_many(engine, [{"task": "sleep", "payload": {}}])
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PENDING_JOBS_POLL": "0",
           "PENDING_JOBS_GRACE": "1", "PENDING_JOBS_LOCK_FILE": "none"}
    run = subprocess.Popen([sys.executable, "-m", "pending_jobs", "run", "--config", str(config)], env=env,
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = 0
    try:
        assert _wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 60), "the command never started"
        pid = int(pid_file.read_text())
        assert _alive(pid)
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, (out, err)
        assert _wait_for(lambda: not _alive(pid), 5), f"command {pid} outlived the run: {err}"
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
        if pid and _alive(pid):  # never leave the orphan behind, even when the test fails
            os.kill(pid, signal.SIGKILL)
