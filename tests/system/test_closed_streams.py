"""A command started with stdout or stderr closed (`>&-`, `2>&-`: Python sets the stream to None) still does
its work and exits 0: under cron nothing would ever say why every run failed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("closed", ["2>&-", ">&-", ">&- 2>&-"])
def test_a_run_with_a_closed_stream_does_its_work(tmp_path: Path, closed: str) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    command = f'"{sys.executable}" -c "from pending_jobs.cli import entry; entry()"'
    subprocess.run(f'{command} migrate --database-url "{url}"', shell=True, check=True, capture_output=True)
    done = subprocess.run(f'{command} run --database-url "{url}" --drain -v {closed}', shell=True,
                          capture_output=True, text=True)
    assert done.returncode == 0, done
