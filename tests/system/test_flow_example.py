"""The handler-testing example (examples/test_welcome.py) passes under plain pytest, through the plugin's
`job_tester` fixture, as it would in an application's own suite."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_the_testing_example_passes_with_the_plugin_fixture() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENDING_JOBS_")}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
                             str(ROOT / "examples"), str(ROOT / "examples" / "test_welcome.py")],
                            capture_output=True, text=True, env=env, cwd=ROOT / "examples", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
