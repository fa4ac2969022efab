"""A claim's batch handed to the worker pool at once: every item runs once, in order, and is in flight
until its result is taken."""

from __future__ import annotations

import threading
import time

from pending_jobs.workers import WorkerPool


def test_a_batch_submitted_at_once_runs_every_item_once_in_order() -> None:
    started: list[int] = []
    gate = threading.Event()

    def work(item: int) -> int:
        started.append(item)
        gate.wait(5)
        return item * 10

    pool: WorkerPool[int, int] = WorkerPool(1, work, lambda item, error: -1)
    try:
        slots = pool.submit_all(range(5))
        assert [slot.item for slot in slots] == [0, 1, 2, 3, 4]
        assert pool.busy == 5  # in flight from the moment they are submitted
        deadline = time.monotonic() + 5
        while not started and time.monotonic() < deadline:
            time.sleep(0.01)
        unstarted = pool.withdraw_unstarted()  # a run that stops now gets back all but the running one
        assert sorted(slot.item for slot in unstarted) == [1, 2, 3, 4]
        gate.set()
        results: list[int] = []
        deadline = time.monotonic() + 5
        while pool.busy and time.monotonic() < deadline:
            results.extend(result for _, result in pool.take(0.1))
        assert results == [0]
        assert started == [0]
    finally:
        pool.close()


def test_items_submitted_in_batches_all_come_back() -> None:
    pool: WorkerPool[int, int] = WorkerPool(3, lambda item: item + 1, lambda item, error: -1)
    try:
        pool.submit_all([1, 2, 3])
        pool.submit(4)
        pool.submit_all([])
        results: list[int] = []
        deadline = time.monotonic() + 5
        while len(results) < 4 and time.monotonic() < deadline:
            results.extend(result for _, result in pool.take(0.1))
        assert sorted(results) == [2, 3, 4, 5]
        assert pool.busy == 0
    finally:
        pool.close()


def test_an_item_that_ends_as_its_timeout_releases_it_gets_the_timeouts_result() -> None:
    # Giving up on a timed-out handler cancels what it waits on, so it ends at once: its late result came out
    # first, and the job was recorded with the cancellation's error instead of its timeout.
    gate = threading.Event()

    def work(item: int) -> str:
        gate.wait(5)
        return "late"

    def on_timeout(item: int) -> str:
        gate.set()  # what closing a handler's connection does to it
        time.sleep(0.2)  # it has ended by now
        return "timed out"

    pool: WorkerPool[int, str] = WorkerPool(1, work, lambda item, error: "error", timeout_of=lambda item: 0.05,
                                            on_timeout=on_timeout)
    try:
        pool.submit(1)
        results: list[str] = []
        deadline = time.monotonic() + 5
        while pool.busy and time.monotonic() < deadline:
            results.extend(result for _, result in pool.take(0.1))
        time.sleep(0.1)  # a late result would be out by now
        results.extend(result for _, result in pool.take(0))
        assert results == ["timed out"]
    finally:
        pool.close()
