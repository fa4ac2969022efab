"""One run, whole: rescue expired leases, serve jobs, deliver callbacks, apply retention, and leave a
row in `pending_job_runs` and (optionally) a metrics file saying what it did and how it ended.

`run_once` is what `pending-jobs run` does, and what a Python caller gets too.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

from .callbacks import Deliverer
from .config import Settings
from .errors import exit_code_of
from .metrics import render, write_textfile
from .models import RunReport
from .registry import Task
from .runner import Executor, Producer, stop_on_signals
from .store import CallbackStore, Health, OpsStore, RunStore, Store

log = logging.getLogger(__name__)

CALLBACK_MIN_TIME = 5.0  # seconds callbacks get after the jobs even when the runtime is spent


def owner_name() -> str:
    """Who holds a lease: host and pid, so an operator can find the process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def run_once(store: Store, tasks: dict[str, Task], settings: Settings, *, job_id: int | None = None,
             on_progress: Callable[[RunReport], None] | None = None, deliverer: Deliverer | None = None) -> RunReport:
    """Run due jobs once and deliver due callbacks; the report says what happened.

    Raises DatabaseUnavailable when the database goes away or turns read-only, ConfigError on a bad
    callback setting, CommandFailed when `job_id` is not pending. The runs row and the metrics file
    record the run however it ends. `deliverer` replaces the callback sender the settings describe.
    """
    started = time.monotonic()
    deadline = started + settings.max_runtime
    report = RunReport()
    runs = RunStore(store)
    # Built first: a bad callback secret stops the run before it claims anything.
    deliver = deliverer or Deliverer(CallbackStore(store), settings)
    run_id: int | None = None
    try:
        run_id = runs.start_run(socket.gethostname(), os.getpid())
        store.check_writable()
        rescued = store.rescue_expired()
        report.rescued, report.failed, report.cancelled = rescued.total, rescued.failed, rescued.cancelled
        if rescued.total:
            log.warning("rescued %d job(s) with expired leases (%d failed, out of attempts; %d cancelled)",
                        rescued.total, rescued.failed, rescued.cancelled)
        producer = Producer(store, Executor(store, tasks, settings), settings, report, owner_name(), on_progress)
        with stop_on_signals(producer.signal, settings.grace):
            producer.run(job_id)
            if report.stopped_by != "signal":
                delivered, undelivered = deliver(max(deadline, time.monotonic() + CALLBACK_MIN_TIME))
                report.callbacks_delivered += delivered
                report.callbacks_failed += undelivered
        purged = OpsStore(store).apply_retention(settings.retention_succeeded, settings.retention_failed)
        if purged:
            log.info("retention: deleted %d finished job(s)", purged)
        report.exit_code = 0
    except BaseException as error:
        report.exit_code = exit_code_of(error)
        raise
    finally:
        report.duration = time.monotonic() - started
        _record(runs, run_id, report, settings.metrics_file)
    return report


def _record(runs: RunStore, run_id: int | None, report: RunReport, metrics_file: str) -> None:
    """The runs row and the metrics file; a failure to write either never hides how the run ended."""
    try:
        if run_id is not None:
            runs.finish_run(run_id, report)
    except Exception as error:
        log.debug("could not record the end of run %s: %s", run_id, error)
    if not metrics_file:
        return
    health: Health | None
    try:
        health = runs.health()
    except Exception:
        health = None  # the run's own numbers are still worth exporting
    try:
        write_textfile(metrics_file, render(report, time.time(), health))
    except OSError as error:
        log.warning("cannot write metrics file %s: %s", metrics_file, error.strerror or error)
