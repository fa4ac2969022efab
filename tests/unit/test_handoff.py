"""The host lock and the producer's hand-off: one serving run per host, the next tick's run taking over."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from pending_jobs.context import Context
from pending_jobs.handoff import HostLock, lock_path
from pending_jobs.registry import Task
from pending_jobs.runner import producer as producer_module

from .memory_store import MemoryStore
from .test_producer import noop, producer, tasks


def test_one_serves_one_waits_a_third_leaves(tmp_path: Path) -> None:
    path = str(tmp_path / "serve.lock")
    first, second, third = HostLock(path), HostLock(path), HostLock(path)
    assert first.acquire(wait=lambda: True)
    assert not first.successor_waiting()

    took_over = threading.Event()
    waiting = threading.Thread(target=lambda: second.acquire(wait=lambda: True) and took_over.set())
    waiting.start()
    deadline = time.monotonic() + 5
    while not first.successor_waiting():
        assert time.monotonic() < deadline, "the second run never started waiting"
        time.sleep(0.01)
    assert not third.acquire(wait=lambda: True)  # one serves, one waits: a third leaves at once
    assert not took_over.is_set()

    first.release()
    waiting.join(5)
    assert took_over.is_set()
    assert not second.successor_waiting()  # the waiting slot is free again for the next tick
    second.release()


def test_giving_up_the_wait_frees_the_waiting_slot(tmp_path: Path) -> None:
    path = str(tmp_path / "serve.lock")
    serving, impatient, next_one = HostLock(path), HostLock(path), HostLock(path)
    assert serving.acquire(wait=lambda: True)
    tries = iter(range(3))
    assert not impatient.acquire(wait=lambda: next(tries, None) is not None)
    assert not serving.successor_waiting()
    done = threading.Event()
    threading.Thread(target=lambda: next_one.acquire(wait=lambda: not done.is_set())).start()
    time.sleep(0.1)
    assert serving.successor_waiting()
    done.set()


def test_each_database_and_set_of_queues_has_its_own_lock() -> None:
    assert lock_path("mysql://a/x", ["q"], "on") == lock_path("mysql://a/x", ["q"], "on")
    assert lock_path("mysql://a/x", ["q"], "on") != lock_path("mysql://a/y", ["q"], "on")
    assert lock_path("mysql://a/x", ["q1"], "on") != lock_path("mysql://a/x", ["q2"], "on")


def test_a_run_hands_over_when_the_next_one_is_ready() -> None:
    store = MemoryStore()
    ready = threading.Event()
    p, report = producer(store, tasks(noop=noop), poll=0.02, max_runtime=30)
    p.hand_off = ready.is_set
    threading.Timer(0.2, ready.set).start()
    started = time.monotonic()
    p.run()
    assert report.stopped_by == "handoff" and time.monotonic() - started < 5


def test_a_run_busy_with_a_long_job_keeps_serving_short_ones_until_it_ends(monkeypatch: Any) -> None:
    monkeypatch.setattr(producer_module, "LONG_JOB", 0.2)
    store = MemoryStore()
    release = threading.Event()

    def long(payload: dict[str, Any], ctx: Context) -> str:
        release.wait(5)
        return "long one done"

    handlers = {**tasks(noop=noop), "long": Task("long", long)}
    store.add("long")
    p, report = producer(store, handlers, poll=0.02, max_runtime=30, concurrency=2)
    tick = time.monotonic() + 0.3
    p.hand_off = lambda: time.monotonic() > tick  # the next tick's run is ready once the long job is long
    short: list[int] = []

    def produce_short_jobs() -> None:
        time.sleep(0.4)  # the long job is long by now
        for _ in range(5):
            short.append(store.add("noop"))
            time.sleep(0.05)
        release.set()

    threading.Thread(target=produce_short_jobs).start()
    p.run()
    assert report.stopped_by == "handoff"
    assert [store.status(job) for job in short] == ["succeeded"] * 5  # served while the long job ran
    assert store.status(1) == "succeeded"
