"""`make console` does what the README says: fills the demo database when there is none, then serves the
console on it (a copy of the Makefile and examples, so the developer's .demo/ is left alone)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, free_port


def _overview(base: str, make: subprocess.Popen[str], within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/overview", timeout=2) as answer:
                return dict(json.load(answer))
        except OSError:
            if make.poll() is not None:
                said = make.stdout.read() if make.stdout else ""
                raise AssertionError(f"make console exited {make.returncode}: {said[-2000:]}") from None
            assert time.monotonic() < deadline, f"the console did not answer within {within:.0f} s"
            time.sleep(0.2)


def test_make_console_fills_the_demo_database_and_serves_it(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copy(ROOT / "Makefile", copy / "Makefile")
    shutil.copytree(ROOT / "examples", copy / "examples")
    shutil.copytree(ROOT / "clients", copy / "clients")
    port = free_port()
    # The test's own virtualenv stands in for the copy's (`-o` keeps make from installing one there).
    command = ["make", "console", f"BIN={Path(sys.executable).parent}", "-o", ".venv/.installed"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PENDING_JOBS_WEB_PORT": str(port)}
    make = subprocess.Popen(command, cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        overview = _overview(f"http://127.0.0.1:{port}", make, within=120)
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        try:
            make.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
    assert (copy / ".demo" / "jobs.sqlite3").exists()
    [queue] = overview["queues"]
    assert queue["queue"] == "default"
    # The demo's jobs: three succeeded (email, the retried resize, the sql task), the unknown task failed,
    # the monthly report is scheduled for later.
    assert queue["counts"] == {"pending": 1, "running": 0, "succeeded": 3, "failed": 1, "cancelled": 0}
    assert queue["paused"] is False and queue["inexact"] == {}
