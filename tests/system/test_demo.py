"""`make demo` runs what the README promises: jobs run, one retried, one scheduled, a signed callback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_demo_script_shows_the_whole_life_of_jobs(tmp_path: Path) -> None:
    copy = tmp_path / "repo"  # run in a copy so the developer's .demo/ is left alone
    shutil.copytree(ROOT / "examples", copy / "examples")
    shutil.copytree(ROOT / "clients", copy / "clients")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(copy / "examples" / "demo.py")], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "claimed 3, succeeded 1, retried 1, failed 1" in out  # email ok, resize retried, unknown task failed
    assert "claimed 1, succeeded 1" in out  # run --job of the retried job
    assert "job.succeeded job 1" in out and "signature verified" in out
    assert "BAD SIGNATURE" not in out
    assert "1 | send_welcome_email | succeeded | 1 |" in out and "| delivered" in out
    assert "2 | resize_image | succeeded | 2 |" in out
    assert "3 | monthly_report | pending | 0 |" in out
    assert "4 | no_such_task | failed | 1 |" in out and "unknown task 'no_such_task'" in out
    assert (copy / ".demo" / "jobs.sqlite3").exists()
    # Part 2: PHP enqueues, the declared sql task inserts the user, the PHP receiver verifies the callback.
    assert "job 5 succeeded {\"rowcount\":1,\"inserted_id\":1}" in out
    assert "SELECT * FROM users: [(1, 'Ada', 'ada@example.com')]" in out


def test_demo_without_php_shows_the_same_flow_with_plain_sql(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "examples", copy / "examples")
    no_php = tmp_path / "bin"
    no_php.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": str(no_php)}
    result = subprocess.run([sys.executable, str(copy / "examples" / "demo.py")], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "php with pdo_sqlite is not installed here" in result.stdout
    assert 'callback: job 5 succeeded {"rowcount": 1, "inserted_id": 1} (signature verified)' in result.stdout
