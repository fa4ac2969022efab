"""A run that serves for long: it hands the host over as soon as it claims no more (not when its last job
ends), hands over at once when every worker is busy, and rescues a dead runner's jobs while it serves."""

from __future__ import annotations

import threading
import time
from typing import Any

from pending_jobs.context import Context
from pending_jobs.registry import Task
from pending_jobs.runner import producer as producer_module

from .memory_store import MemoryStore
from .test_producer import noop, producer, tasks


def _long_task(release: threading.Event) -> Task:
    def long(payload: dict[str, Any], ctx: Context) -> str:
        release.wait(10)
        return "long one done"

    return Task("long", long)


def test_the_host_is_handed_over_when_claiming_stops_not_when_the_last_job_ends() -> None:
    store = MemoryStore()
    release = threading.Event()
    store.add("long")
    p, report = producer(store, {**tasks(noop=noop), "long": _long_task(release)}, poll=0.02, max_runtime=30,
                         concurrency=2)
    served: list[str] = []
    # The next tick's run is ready while the long job is still short (< LONG_JOB): the run stops claiming.
    p.hand_off = lambda: store.status(1) == "running"
    p.on_stop_claiming = lambda: served.append(store.status(1)) or release.set()  # the long job ends after
    p.run()
    assert report.stopped_by == "handoff"
    assert served == ["running"]  # released while its job still ran: the next run served meanwhile
    assert store.status(1) == "succeeded"


def test_a_run_whose_every_worker_runs_a_long_job_hands_over_at_once(monkeypatch: Any) -> None:
    monkeypatch.setattr(producer_module, "LONG_JOB", 0.05)
    store = MemoryStore()
    release = threading.Event()
    store.add("long")
    p, report = producer(store, {**tasks(noop=noop), "long": _long_task(release)}, poll=0.02, max_runtime=30,
                         concurrency=1)
    asked = threading.Event()
    ready_at = time.monotonic() + 0.3  # the long job is long by then (LONG_JOB 0.05 s)

    def successor_ready() -> bool:
        asked.set()
        return time.monotonic() >= ready_at

    stopped_at: list[float] = []
    p.hand_off = successor_ready
    p.on_stop_claiming = lambda: stopped_at.append(time.monotonic())
    threading.Timer(3.0, release.set).start()
    started = time.monotonic()
    p.run()
    assert report.stopped_by == "handoff" and asked.is_set()
    # It did not keep the host until the long job ended (3 s): no worker of its own was free to serve.
    assert stopped_at and stopped_at[0] - started < 2.0
    assert store.status(1) == "succeeded" and report.succeeded == 1


def test_a_run_that_serves_for_long_rescues_a_dead_runner_s_jobs(monkeypatch: Any) -> None:
    monkeypatch.setattr(producer_module, "RESCUE_EVERY", 0.1)
    store = MemoryStore()
    dead = store.add("noop")
    claimed = store.claim("default", 1, "a runner that died", lease=0.05)  # and never renews its lease
    assert [job.id for job in claimed.jobs] == [dead]
    p, report = producer(store, tasks(noop=noop), poll=0.02, max_runtime=0.6)
    p.run()
    assert report.rescued == 1 and report.stopped_by == "max-runtime"
    assert store.status(dead) == "succeeded"  # back to pending by the rescue, then claimed and run
    assert store.rows[dead].attempts == 2
