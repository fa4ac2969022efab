"""A process-isolated handler's child is killed with its process group: what the handler started (a
subprocess such as a converter) must not run on after its job timed out, or after the run left with the
job still running, beside the job's next attempt (docs/tasks.md says the same of a command's group)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue_many
from tests.conftest import ROOT
from tests.processes import alive, gone_soon

HANDLERS = '''
import subprocess, sys, time
from pending_jobs import task

@task("{name}", isolation="process", timeout={timeout})
def convert(payload, ctx):
    started = subprocess.Popen(["sleep", "120"])
    with open({pid_file!r} + ".tmp", "w") as handle:
        handle.write(str(started.pid))
    import os
    os.rename({pid_file!r} + ".tmp", {pid_file!r})
    time.sleep(120)
'''


def _wait_for_pid(pid_file: Path, run: subprocess.Popen[str], within: float) -> int:
    end = time.monotonic() + within
    while time.monotonic() < end and run.poll() is None:
        if pid_file.exists():
            return int(pid_file.read_text())
        time.sleep(0.05)
    raise AssertionError(f"the handler never started its subprocess: {run.poll()=}")


def _start(tmp_path: Path, db_url: str, engine: sa.Engine, timeout: float, *flags: str) -> subprocess.Popen[str]:
    module = f"isolated_{os.getpid()}_{int(time.monotonic() * 1000)}"
    (tmp_path / f"{module}.py").write_text(HANDLERS.format(name="convert", timeout=timeout,
                                                           pid_file=str(tmp_path / "sub.pid")))
    config = tmp_path / "jobs.toml"
    config.write_text(f'database_url = "{db_url}"\ntasks = ["{module}"]\npython_path = ["{tmp_path}"]\n')
    enqueue_many(engine, [{"task": "convert", "payload": {}, "max_attempts": 1}])
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PENDING_JOBS_POLL": "0",
           "PENDING_JOBS_GRACE": "1", "PENDING_JOBS_LOCK_FILE": "none"}
    return subprocess.Popen([sys.executable, "-m", "pending_jobs", "run", "--config", str(config), *flags],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def _running(tmp_path: Path, db_url: str, engine: sa.Engine,
             timeout: int) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """The run and its handler's subprocess (by pid, once it has started); both gone afterwards, even when the
    test fails."""
    run = _start(tmp_path, db_url, engine, timeout)
    pid = 0
    try:
        pid = _wait_for_pid(tmp_path / "sub.pid", run, 60)
        yield run, pid
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
        if pid and alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_an_isolated_handler_that_times_out_takes_its_subprocesses_along(db_url: str, engine: sa.Engine,
                                                                         tmp_path: Path) -> None:
    with _running(tmp_path, db_url, engine, 8) as (run, pid):
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, (out, err)
        assert "ran longer than 8" in err
        assert gone_soon(pid), f"the handler's subprocess {pid} outlived its timed-out job"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_an_isolated_handlers_subprocesses_die_with_a_run_that_leaves_while_it_runs(db_url: str, engine: sa.Engine,
                                                                                    tmp_path: Path) -> None:
    with _running(tmp_path, db_url, engine, 300) as (run, pid):
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, (out, err)
        assert gone_soon(pid), f"the handler's subprocess {pid} outlived the run: {err}"
