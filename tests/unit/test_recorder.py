"""The recorder on its own: order, the first error, and no hang after it (threaded and inline)."""

from __future__ import annotations

import threading

import pytest

from pending_jobs.recorder import Recorder


@pytest.mark.parametrize("concurrent", [True, False])
def test_results_come_back_in_submission_order(concurrent: bool) -> None:
    writers: set[str] = set()

    def write(batch: int) -> int:
        writers.add(threading.current_thread().name)
        return batch * 10

    recorder: Recorder[int, int] = Recorder(write, concurrent)
    try:
        for batch in range(5):
            recorder.submit(batch)
        assert recorder.drain() == [0, 10, 20, 30, 40]
        assert recorder.outstanding == 0
    finally:
        recorder.close()
    assert (threading.current_thread().name in writers) is not concurrent


@pytest.mark.parametrize("concurrent", [True, False])
def test_first_error_is_raised_then_submit_refuses_and_drain_does_not_hang(concurrent: bool) -> None:
    def write(batch: int) -> int:
        if batch == 1:
            raise ConnectionError("database went away")
        return batch

    recorder: Recorder[int, int] = Recorder(write, concurrent)
    try:
        for batch in range(3):
            recorder.submit(batch)
        with pytest.raises(ConnectionError):
            recorder.drain()
        assert recorder.outstanding == 0
        assert recorder.drain() == []  # returns at once: nothing more will be answered
        with pytest.raises(ConnectionError):
            recorder.submit(3)
    finally:
        recorder.close()
