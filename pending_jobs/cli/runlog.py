"""What `run` does around the runner: its `pending_job_runs` row, retention, metrics and progress bar."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import exc

from .. import db
from ..config import Settings
from ..errors import ConfigError, DatabaseUnavailable
from ..metrics import RunMetrics, write_textfile
from ..runner import Runner, RunReport
from ..store import Store
from ..store.ops import Health, OpsStore, RunCounts
from . import common

log = logging.getLogger(__name__)


def exit_code_of(error: BaseException) -> int:
    """The exit code `main` turns this exception into (recorded in the runs table)."""
    if isinstance(error, ConfigError):
        return common.EXIT_CONFIG
    if isinstance(error, DatabaseUnavailable) or (isinstance(error, exc.DBAPIError) and db.is_unavailable(error)):
        return common.EXIT_TEMPFAIL
    if isinstance(error, KeyboardInterrupt):
        return 130
    return common.EXIT_FAILURE


def counts_of(report: RunReport) -> RunCounts:
    return RunCounts(
        claimed=report.claimed, succeeded=report.succeeded, failed=report.failed, retried=report.retried,
        rescued=report.rescued, callbacks_delivered=report.callbacks_delivered,
        callbacks_failed=report.callbacks_failed,
    )


class Progress:
    """A live tqdm bar on stderr, only when a person watches (stderr is a terminal)."""

    def __init__(self) -> None:
        self.bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(desc="pending-jobs", unit="job", file=sys.stderr, leave=False)

    def __call__(self, report: RunReport) -> None:
        if self.bar is not None:
            self.bar.n = report.succeeded + report.failed + report.retried
            self.bar.set_postfix(ok=report.succeeded, failed=report.failed, retried=report.retried, refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def recorded(store: Store, settings: Settings, runner: Runner) -> Iterator[None]:
    """Record the run in `pending_job_runs`, apply retention, write metrics.

    The run's own outcome decides the exit code stored; a failure to record it never hides that.
    """
    ops = OpsStore(store)
    started = time.monotonic()
    run_id = ops.start_run(socket.gethostname(), os.getpid())
    exit_code = common.EXIT_OK
    try:
        yield
        purged = ops.apply_retention(settings.retention_succeeded, settings.retention_failed)
        if purged:
            log.info("retention: deleted %d finished job(s)", purged)
    except BaseException as error:
        exit_code = exit_code_of(error)
        raise
    finally:
        counts = counts_of(runner.report)
        try:
            ops.finish_run(run_id, counts, exit_code)
        except (DatabaseUnavailable, exc.DBAPIError) as error:
            log.debug("could not record the end of run %d: %s", run_id, error)
        if settings.metrics_file:
            _write_metrics(ops, settings.metrics_file, counts, time.monotonic() - started, exit_code)


def _write_metrics(ops: OpsStore, path: str, counts: RunCounts, duration: float, exit_code: int) -> None:
    health: Health | None
    try:
        health = ops.health()
    except (DatabaseUnavailable, exc.DBAPIError):
        health = None  # the run's own numbers are still worth exporting
    try:
        write_textfile(path, RunMetrics(counts, duration, exit_code, time.time(), health))
    except OSError as error:
        log.warning("cannot write metrics file %s: %s", path, error.strerror or error)
