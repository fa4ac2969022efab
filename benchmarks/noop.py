"""Handlers the benchmarks run (`--tasks benchmarks.noop`): a no-op, and one that reports its pickup latency."""

from __future__ import annotations

import time
from typing import Any

from pending_jobs import Context, task


@task("bench.noop")
def noop(payload: Any, ctx: Context) -> None:
    """Does nothing: the drain benchmark measures the runner, not the handler."""
    return None


@task("bench.stamp")
def stamp(payload: Any, ctx: Context) -> float:
    """Seconds from the producer's clock reading (`payload["t"]`) to the handler starting."""
    return time.time() - float(payload["t"])


@task("bench.sleep", timeout=900)
def sleep(payload: Any, ctx: Context) -> float:
    """A long job: sleeps `payload["seconds"]` (the cron benchmark's 5-minute handler)."""
    time.sleep(float(payload["seconds"]))
    return float(payload["seconds"])
