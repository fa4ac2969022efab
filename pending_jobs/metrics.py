"""Prometheus metrics for node_exporter's textfile collector, written after every run.

The file is replaced atomically (a temporary file in the same directory, then `os.replace`), so the
collector never reads half a file.
"""

from __future__ import annotations

import os
import tempfile

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from .models import RunReport
from .store import Health

PREFIX = "pending_jobs"


def render(report: RunReport, finished_at: float, health: Health | None) -> bytes:
    """The textfile contents after one run: what it did (`finished_at`, Unix time) and the queue's state
    afterwards (`health`; None when it could not be read)."""
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(f"{PREFIX}_{name}", doc, labels, registry=registry)

    jobs = gauge("run_jobs", "Jobs the last run handled, by outcome", ("outcome",))
    for outcome in ("claimed", "succeeded", "failed", "retried", "cancelled", "held", "rescued"):
        jobs.labels(outcome).set(getattr(report, outcome))
    callbacks = gauge("run_callbacks", "Callbacks the last run delivered or failed for good", ("outcome",))
    callbacks.labels("delivered").set(report.callbacks_delivered)
    callbacks.labels("failed").set(report.callbacks_failed)
    gauge("run_duration_seconds", "How long the last run took").set(report.duration)
    gauge("run_exit_code", "Exit code of the last run (0 ok, 2 configuration, 75 database unavailable)") \
        .set(report.exit_code if report.exit_code is not None else 1)
    gauge("run_finished_timestamp_seconds", "Unix time the last run ended").set(finished_at)
    if health is not None:
        h = health
        depth = gauge("queue_jobs", "Jobs in the table, by queue and status", ("queue", "status"))
        for queue, status, n in h.counts:
            depth.labels(queue, status).set(n)
        gauge("oldest_due_age_seconds", "How long the oldest due pending job has waited (0: none due)") \
            .set(h.oldest_due_age or 0.0)
        backlog = gauge("callbacks", "Jobs by callback status (due: pending and due now)", ("status",))
        for status, n in sorted(h.callbacks.items()):
            backlog.labels(status).set(n)
        if h.last_success_at is not None:
            gauge("last_success_timestamp_seconds", "Unix time the last run with exit code 0 ended") \
                .set(h.last_success_at.timestamp())
    return generate_latest(registry)


def write_textfile(path: str, data: bytes) -> None:
    """Write rendered metrics to `path` atomically, readable by the collector (mode 0644)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=".pending_jobs.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
