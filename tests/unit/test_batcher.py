"""When the batcher flushes: full, idle or old enough, and only while the writer has room; on a fake clock."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from pending_jobs import batcher as batcher_module
from pending_jobs.batcher import FLUSH_AFTER, Batcher


class Clock:
    """Stands in for the `time` module inside pending_jobs.batcher: `monotonic()` is `now`."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(batcher_module, "time", fake)
    return fake


def inline(size: int = 3, writes_ahead: int = 1, flush_after: float | None = 1.0) -> tuple[Batcher[int, int],
                                                                                             list[list[int]]]:
    """A batcher writing inline; returns it and the batches written."""
    written: list[list[int]] = []

    def write(batch: list[int]) -> int:
        written.append(batch)
        return len(batch)

    return Batcher(write, False, size, writes_ahead, flush_after), written


def test_the_defaults_and_their_floors() -> None:
    b, _ = inline(size=0, writes_ahead=0, flush_after=None)
    assert (b.size, b.writes_ahead, b.flush_after) == (1, 1, FLUSH_AFTER)
    assert FLUSH_AFTER == 0.05
    b, _ = inline(size=7, writes_ahead=2, flush_after=0.0)
    assert (b.size, b.writes_ahead, b.flush_after) == (7, 2, 0.0)


def test_nothing_pending_is_never_due_and_has_nothing_to_wait_for(clock: Clock) -> None:
    b, written = inline()
    assert b.pending == 0 and b.wait_for() is None
    assert not b.due(idle=True)
    b.add([])
    assert b.pending == 0 and b.wait_for() is None
    b.flush()
    assert written == [] and b.outstanding == 0


def test_pending_outcomes_wait_for_flush_after_counted_from_the_oldest(clock: Clock) -> None:
    b, _ = inline(size=10, flush_after=1.0)
    b.add([1])
    assert b.wait_for() == 1.0
    clock.now += 0.25
    b.add([2, 3])  # does not restart the wait
    assert b.wait_for() == 0.75
    assert b.pending == 3
    assert not b.due(idle=False)
    clock.now += 0.75
    assert b.wait_for() == 0.0
    assert b.due(idle=False)
    clock.now += 5
    assert b.wait_for() == 0.0  # never negative


def test_an_empty_add_does_not_start_the_wait(clock: Clock) -> None:
    b, _ = inline(flush_after=1.0)
    b.add([])
    clock.now += 10
    b.add([1])
    assert b.wait_for() == 1.0


def test_the_wait_starts_again_after_a_flush(clock: Clock) -> None:
    b, _ = inline(size=10, writes_ahead=5, flush_after=1.0)
    b.add([1])
    clock.now += 0.5
    b.flush()
    clock.now += 0.25
    b.add([2])
    assert b.wait_for() == 1.0


def test_a_full_batch_is_due_at_once(clock: Clock) -> None:
    b, _ = inline(size=3, flush_after=10.0)
    b.add([1, 2])
    assert not b.due(idle=False)
    b.add([3])
    assert b.due(idle=False)
    b.add([4])
    assert b.due(idle=False)


def test_an_idle_caller_flushes_at_once(clock: Clock) -> None:
    b, _ = inline(size=3, flush_after=10.0)
    b.add([1])
    assert b.due(idle=True) and not b.due(idle=False)


def test_nothing_is_due_while_the_writer_has_no_room(clock: Clock) -> None:
    b, written = inline(size=1, writes_ahead=2, flush_after=0.0)
    b.add([1])
    b.flush()
    assert b.outstanding == 1
    b.add([2])
    assert b.due(idle=True)  # one write outstanding, room for two
    b.flush()
    assert b.outstanding == 2
    b.add([3])
    assert not b.due(idle=True) and not b.due(idle=False)  # full batch, waited, idle: still no room
    assert b.results() == [1, 1]
    assert b.outstanding == 0 and b.due(idle=False)
    assert written == [[1], [2]]


def test_flush_hands_every_pending_outcome_over_as_one_batch(clock: Clock) -> None:
    b, written = inline(size=2)
    b.add([1, 2, 3])
    b.flush()
    assert written == [[1, 2, 3]] and b.pending == 0 and b.outstanding == 1
    assert b.results() == [3] and b.outstanding == 0


def test_drain_flushes_and_waits_for_every_write() -> None:
    release = threading.Event()
    written: list[list[int]] = []

    def write(batch: list[int]) -> int:
        release.wait(timeout=2)
        written.append(batch)
        return sum(batch)

    b: Batcher[int, int] = Batcher(write, True, 10, 4)
    try:
        b.add([1, 2])
        b.flush()
        b.add([3])
        assert b.results() == []  # the write is still running: nothing blocks
        release.set()
        assert b.drain() == [3, 3]
        assert written == [[1, 2], [3]] and b.pending == 0 and b.outstanding == 0
    finally:
        release.set()
        b.close()


def test_results_blocks_for_an_answer_when_asked() -> None:
    b: Batcher[int, int] = Batcher(lambda batch: len(batch), True, 10, 4, name="pending-jobs-test-batcher")
    try:
        b.add([1, 2])
        b.flush()
        assert b.results(block=True) == [2]
    finally:
        b.close()


def naming(names: list[str]) -> Callable[[list[int]], int]:
    """A write that notes the name of the thread it runs in."""

    def write(batch: list[int]) -> int:
        names.append(threading.current_thread().name)
        return 0

    return write


def test_the_writer_thread_has_the_recorders_name_by_default() -> None:
    names: list[str] = []
    b: Batcher[int, int] = Batcher(naming(names), True, 10, 4)
    b.add([1])
    b.drain()
    b.close()
    assert names == ["pending-jobs-recorder"]


def test_close_stops_the_writer_thread() -> None:
    names: list[str] = []
    b: Batcher[int, int] = Batcher(naming(names), True, 10, 4, name="pending-jobs-test-batcher")
    b.add([1])
    b.flush()
    thread = b._recorder._thread
    b.close()
    assert thread is not None and not thread.is_alive()
    assert names == ["pending-jobs-test-batcher"]


def test_a_write_error_is_raised_by_results_and_drain() -> None:
    def write(batch: list[int]) -> int:
        raise ConnectionError("gone")

    b: Batcher[int, int] = Batcher(write, False, 10, 4)
    b.add([1])
    b.flush()
    with pytest.raises(ConnectionError):
        b.results()
    b.add([2])
    with pytest.raises(ConnectionError):
        b.drain()
