"""`@task(timeout=…, memory_limit=…)` is checked where it is written: at import, with the value named."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from pending_jobs import registry
from pending_jobs.errors import ConfigError
from pending_jobs.validation import LONGEST_TIMEOUT


@pytest.mark.parametrize("timeout", ["5", True, 0, -5, float("nan"), float("inf"), 1e12, LONGEST_TIMEOUT + 1])
def test_a_timeout_that_is_not_seconds_up_to_a_week_is_refused(timeout: Any) -> None:
    # "5" killed the worker and timeout threads at the first job and the run never ended; 1e12 overflowed.
    with pytest.raises(ValueError, match=r"^timeout must be seconds, more than 0 and at most 604800 \(7 days\), not "):
        registry.task("report", timeout=timeout)


@pytest.mark.parametrize("timeout", [0.001, 30, LONGEST_TIMEOUT])
def test_a_timeout_within_the_range_is_kept(timeout: float) -> None:
    assert callable(registry.task("report", timeout=timeout))


@pytest.mark.parametrize("limit", ["1G", 0, -1, 1.5, True])
def test_a_memory_limit_that_is_not_a_positive_number_of_bytes_is_refused(limit: Any) -> None:
    with pytest.raises(ValueError, match=r"^memory_limit must be a whole number of bytes, more than 0, not "):
        registry.task("report", isolation="process", memory_limit=limit)


def test_a_module_with_a_bad_timeout_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "badtimeout_jobs.py").write_text(
        "from pending_jobs import task\n\n@task('slow', timeout='5')\ndef slow(payload, ctx):\n    return None\n")
    try:
        with pytest.raises(ConfigError, match=r"cannot import task module 'badtimeout_jobs': ValueError: timeout "
                                              r"must be seconds, more than 0 and at most 604800 \(7 days\), not '5'"):
            registry.load(["badtimeout_jobs"], python_path=[str(tmp_path)])
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("badtimeout_jobs", None)
    assert "slow" not in registry.load([])


@pytest.mark.parametrize("backoff", [30, "30s"])
def test_a_backoff_that_is_not_a_function_is_refused(backoff: Any) -> None:
    # It was used as a function at the first failure: a warning, then the default backoff, every time.
    with pytest.raises(ValueError, match=r"^backoff must be a function of the attempt number, returning seconds, not "):
        registry.task("report", backoff=backoff)
    assert callable(registry.task("report", backoff=lambda attempt: 30.0 * attempt))


@pytest.mark.parametrize(("code", "shown"), [("'APP_ENV is not set'", "APP_ENV is not set"), ("3", "3")])
def test_a_module_that_exits_at_import_is_a_configuration_error(tmp_path: Path, code: str, shown: str) -> None:
    # SystemExit is no Exception: it left the command with the module's code (exit 3 from `check`, which means
    # "database"), and `check --json` printed no report at all.
    (tmp_path / "exiting_jobs.py").write_text(f"import sys\nsys.exit({code})\n")
    try:
        with pytest.raises(ConfigError, match=f"^cannot import task module 'exiting_jobs': SystemExit: {shown}$"):
            registry.load(["exiting_jobs"], python_path=[str(tmp_path)])
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("exiting_jobs", None)
