"""The recorder's thread from start to stop: close waits for what was submitted and stops the thread,
`results()` never blocks while a write runs, and the first error stops every later write."""

from __future__ import annotations

import threading
import time

import pytest

from pending_jobs import recorder as recorder_module
from pending_jobs.recorder import Recorder


class Stop(BaseException):
    """Not an Exception (as KeyboardInterrupt is not): it must still reach the caller, not kill the thread."""


def test_close_waits_for_the_submitted_writes_and_stops_the_thread() -> None:
    written: list[int] = []

    def write(batch: int) -> int:
        time.sleep(0.05)  # close() must wait for it, however long it takes
        written.append(batch)
        return batch

    recorder: Recorder[int, int] = Recorder(write, concurrent=True)
    recorder.submit(1)
    recorder.submit(2)
    thread = recorder._thread
    assert thread is not None and thread.is_alive() and thread.daemon
    recorder.close()
    assert written == [1, 2]
    assert not thread.is_alive()
    assert recorder._thread is None
    recorder.close()  # a second close has nothing to stop
    assert recorder.drain() == [1, 2]  # what was written is still handed back


def test_close_gives_up_on_a_stuck_write_after_its_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that never returns (a hung database) must not hang the run's exit: the thread is left."""
    assert recorder_module.CLOSE_WAIT == 5.0
    monkeypatch.setattr(recorder_module, "CLOSE_WAIT", 0.05)
    release = threading.Event()
    recorder: Recorder[int, int] = Recorder(lambda batch: release.wait(timeout=5) and batch, concurrent=True)
    try:
        recorder.submit(1)
        thread = recorder._thread
        recorder.close()
        assert thread is not None and thread.is_alive()
        assert recorder._thread is None
    finally:
        release.set()


def test_drain_waits_for_answers_rather_than_asking_again_and_again() -> None:
    def write(batch: int) -> int:
        time.sleep(0.05)  # long enough for a drain that did not wait to ask again
        return batch

    recorder: Recorder[int, int] = Recorder(write, concurrent=True)
    asked: list[bool] = []
    results = recorder.results

    def counted(block: bool = False) -> list[int]:
        asked.append(block)
        return results(block=block)

    recorder.results = counted  # type: ignore[method-assign]
    try:
        recorder.submit(1)
        assert recorder.drain() == [1]
        assert asked == [True]  # one blocking wait, not a busy loop while the write runs
    finally:
        recorder.close()


def test_a_closed_recorder_starts_a_new_thread_for_the_next_batch() -> None:
    recorder: Recorder[int, int] = Recorder(lambda batch: batch, concurrent=True)
    recorder.submit(1)
    recorder.close()
    recorder.submit(2)
    second = recorder._thread
    assert second is not None and second.is_alive()
    assert recorder.drain() == [1, 2]
    recorder.close()
    assert not second.is_alive()


def test_close_without_a_thread_does_nothing() -> None:
    for concurrent in (True, False):
        recorder: Recorder[int, int] = Recorder(lambda batch: batch, concurrent)
        recorder.close()
        assert recorder._thread is None


def test_inline_writes_start_no_thread() -> None:
    threads: list[str] = []

    def write(batch: int) -> int:
        threads.append(threading.current_thread().name)
        return batch

    recorder: Recorder[int, int] = Recorder(write, concurrent=False)
    recorder.submit(5)
    assert recorder._thread is None and threads == [threading.current_thread().name]
    assert recorder.outstanding == 1
    assert recorder.results() == [5] and recorder.outstanding == 0


def test_the_thread_is_named_as_asked() -> None:
    names: list[str] = []

    def write(batch: int) -> int:
        names.append(threading.current_thread().name)
        return batch

    for name in ("pending-jobs-callback-recorder", None):
        recorder: Recorder[int, int] = (Recorder(write, True, name) if name else Recorder(write, True))
        recorder.submit(1)
        recorder.drain()
        recorder.close()
    assert names == ["pending-jobs-callback-recorder", "pending-jobs-recorder"]


def test_results_returns_at_once_while_a_write_runs() -> None:
    started, release = threading.Event(), threading.Event()

    def write(batch: int) -> int:
        started.set()
        release.wait(timeout=2)  # a results() that blocked would wait this out, then see the answer
        return batch * 10

    recorder: Recorder[int, int] = Recorder(write, concurrent=True)
    try:
        recorder.submit(1)
        assert started.wait(timeout=5)
        assert recorder.results() == []
        assert recorder.results(block=False) == []
        assert recorder.outstanding == 1
        release.set()
        assert recorder.drain() == [10]
        assert recorder.outstanding == 0
    finally:
        release.set()
        recorder.close()


def test_a_blocking_results_waits_for_one_answer_not_for_all() -> None:
    second_started, release = threading.Event(), threading.Event()

    def write(batch: int) -> int:
        if batch == 2:
            second_started.set()
            release.wait(timeout=2)
        return batch

    recorder: Recorder[int, int] = Recorder(write, concurrent=True)
    try:
        recorder.submit(1)
        recorder.submit(2)
        assert recorder.results(block=True) == [1]
        assert second_started.wait(timeout=5)
        assert recorder.outstanding == 1
        release.set()
        assert recorder.results(block=True) == [2]
        assert recorder.results(block=True) == []  # nothing outstanding: returns at once
    finally:
        release.set()
        recorder.close()


def test_results_hands_back_every_answer_already_there() -> None:
    recorder: Recorder[int, int] = Recorder(lambda batch: batch, concurrent=False)
    for batch in (1, 2, 3):
        recorder.submit(batch)
    assert recorder.outstanding == 3
    assert recorder.results() == [1, 2, 3]
    assert recorder.results() == [] and recorder.outstanding == 0


def test_the_first_error_stops_the_thread_and_every_later_write() -> None:
    written: list[int] = []
    gate = threading.Event()

    def write(batch: int) -> int:
        gate.wait(timeout=2)  # every batch is queued before the first is written
        written.append(batch)
        if batch == 1:
            raise ConnectionError("database went away")
        return batch

    recorder: Recorder[int, int] = Recorder(write, concurrent=True)
    for batch in range(4):
        recorder.submit(batch)
    thread = recorder._thread
    assert thread is not None
    gate.set()
    with pytest.raises(ConnectionError, match="database went away") as raised:
        recorder.drain()
    assert recorder.outstanding == 0
    recorder.close()
    assert written == [0, 1]  # batches 2 and 3 were never written
    assert not thread.is_alive()
    with pytest.raises(ConnectionError) as again:
        recorder.submit(4)
    assert again.value is raised.value
    assert written == [0, 1] and recorder.outstanding == 0


def test_an_inline_error_is_raised_by_results_then_by_submit_without_writing() -> None:
    written: list[int] = []

    def write(batch: int) -> int:
        written.append(batch)
        if batch == 1:
            raise ConnectionError("database went away")
        return batch

    recorder: Recorder[int, int] = Recorder(write, concurrent=False)
    recorder.submit(0)
    recorder.submit(1)  # the error waits for results(): submit itself never raises a write's error
    assert recorder.outstanding == 2
    with pytest.raises(ConnectionError):
        recorder.results()
    assert recorder.outstanding == 0
    with pytest.raises(ConnectionError):
        recorder.submit(2)
    assert written == [0, 1]
    assert recorder.results() == [] and recorder.drain() == []


@pytest.mark.parametrize("concurrent", [True, False])
def test_a_base_exception_in_a_write_reaches_the_caller(concurrent: bool) -> None:
    def write(batch: int) -> int:
        raise Stop()

    recorder: Recorder[int, int] = Recorder(write, concurrent)
    try:
        recorder.submit(1)
        with pytest.raises(Stop):
            recorder.drain()
        with pytest.raises(Stop):
            recorder.submit(2)
    finally:
        recorder.close()


def test_a_write_that_returns_none_is_an_answer_not_the_end() -> None:
    recorder: Recorder[int, None] = Recorder(lambda batch: None, concurrent=True)
    try:
        for batch in range(3):
            recorder.submit(batch)
        assert recorder.drain() == [None, None, None]
        thread = recorder._thread
        assert thread is not None and thread.is_alive()  # None from a write does not stop the thread
    finally:
        recorder.close()
