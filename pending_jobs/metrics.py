"""Prometheus metrics for node_exporter's textfile collector, written after every run.

The file is replaced atomically (a temporary file in the same directory, then `os.replace`), so the
collector never reads half a file.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from .store.ops import Health, RunCounts

PREFIX = "pending_jobs"


@dataclasses.dataclass(frozen=True)
class RunMetrics:
    """What one run did and how it ended, plus the queue's state afterwards (None: unreadable)."""

    counts: RunCounts
    duration: float
    exit_code: int
    finished_at: float
    """Unix time the run ended."""
    health: Health | None


def render(m: RunMetrics) -> bytes:
    """The textfile contents for one run."""
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(f"{PREFIX}_{name}", doc, labels, registry=registry)

    jobs = gauge("run_jobs", "Jobs the last run handled, by outcome", ("outcome",))
    for outcome in ("claimed", "succeeded", "failed", "retried", "rescued"):
        jobs.labels(outcome).set(getattr(m.counts, outcome))
    callbacks = gauge("run_callbacks", "Callbacks the last run attempted, by outcome", ("outcome",))
    callbacks.labels("delivered").set(m.counts.callbacks_delivered)
    callbacks.labels("failed").set(m.counts.callbacks_failed)
    gauge("run_duration_seconds", "How long the last run took").set(m.duration)
    gauge("run_exit_code", "Exit code of the last run (0 ok, 2 configuration, 75 database unavailable)") \
        .set(m.exit_code)
    gauge("run_finished_timestamp_seconds", "Unix time the last run ended").set(m.finished_at)
    if m.health is not None:
        h = m.health
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


def write_textfile(path: str, m: RunMetrics) -> None:
    """Write the metrics to `path` atomically, readable by the collector (mode 0644)."""
    data = render(m)
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
