"""Handlers found without PYTHONPATH: the `python_path` setting, as cron and systemd start the runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue
from tests.conftest import ROOT, scalar


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_task_module_in_the_apps_folder_is_found_through_python_path(db_url: str, engine: sa.Engine,
                                                                        tmp_path: Path) -> None:
    app = tmp_path / "srv" / "app"
    (app / "myapp").mkdir(parents=True)
    (app / "myapp" / "__init__.py").write_text("")
    (app / "myapp" / "jobs.py").write_text(
        "from pending_jobs import task\n\n@task('save_user', timeout=30)\ndef save_user(payload, ctx):\n"
        "    return {'saved': payload['name']}\n\n@task('slow_report')\ndef slow_report(payload, ctx):\n"
        "    return None\n")
    config = tmp_path / "pending-jobs.toml"
    config.write_text(f'database_url = "{db_url}"\ntasks = ["myapp.jobs"]\npython_path = ["{app}"]\n')
    # As cron starts it: no PYTHONPATH, another working directory.
    env = {"PATH": os.environ.get("PATH", ""), "PENDING_JOBS_CONFIG": str(config)}
    job_id = enqueue(engine, "save_user", {"name": "Ada"})
    ran = subprocess.run([sys.executable, "-m", "pending_jobs", "run", "--drain"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert scalar(engine, f"SELECT status FROM pending_jobs WHERE id = {job_id}") == "succeeded"

    check = subprocess.run([sys.executable, "-m", "pending_jobs", "check", "--no-callbacks"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"save_user → {app / 'myapp' / 'jobs.py'}" in check.stdout  # which file each task resolves to
    assert "no timeout: slow_report" in check.stdout
    assert "longer than the lease" not in check.stdout  # 30 s against the default 300 s

    config.write_text(config.read_text() + 'lease = "20s"\n')  # now save_user's timeout outlives its lease
    short = subprocess.run([sys.executable, "-m", "pending_jobs", "check", "--no-callbacks"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert short.returncode == 0, short.stdout + short.stderr
    assert "timeout longer than the lease (20 s): save_user (30 s)" in short.stdout

    config.write_text(f'database_url = "{db_url}"\ntasks = ["myapp.jobs"]\n')
    missing = subprocess.run([sys.executable, "-m", "pending_jobs", "run", "--drain"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "is its folder in python_path?" in missing.stderr
