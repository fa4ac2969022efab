"""Deliverer.serve with one slow receiver: a callback that comes due while that attempt is under way goes out
at once, not after it (each new callback once waited up to callback_timeout behind one slow receiver)."""

from __future__ import annotations

import threading
import time

from pending_jobs import config
from pending_jobs.callbacks import Deliverer
from pending_jobs.models import CallbackResult, DueCallback

from .callback_fakes import ListStore, callback


def test_a_new_callback_does_not_wait_for_a_slow_receiver() -> None:
    settings = config.load({}, environ={})
    store = ListStore([callback(1, "hooks1.example.test")])
    sender = Deliverer(store, settings)  # type: ignore[arg-type]
    sent: dict[int, float] = {}
    slow_started, release_slow = threading.Event(), threading.Event()

    def send(due: DueCallback) -> CallbackResult:
        sent[due.job_id] = time.monotonic()
        if due.job_id == 1:  # a receiver that takes its time (up to callback_timeout)
            slow_started.set()
            release_slow.wait(10)
        return CallbackResult(due, "delivered")

    sender._send = send  # type: ignore[method-assign]
    stop, wake = threading.Event(), threading.Event()
    serving = threading.Thread(target=sender.serve, args=(stop, wake))
    serving.start()
    try:
        assert slow_started.wait(5)
        time.sleep(0.2)
        with store.lock:
            # Another job ended: the run wakes the sender (run._Callbacks.wake).
            store.due.append(callback(2, "hooks2.example.test"))
        ended = time.monotonic()
        wake.set()
        deadline = ended + 3
        while 2 not in sent and time.monotonic() < deadline:
            time.sleep(0.02)
        assert 2 in sent, "the second callback waited for the slow receiver"
        assert sent[2] - ended < 1.5
    finally:
        release_slow.set()
        stop.set()
        wake.set()
        serving.join(10)
    assert not serving.is_alive()
    assert sorted(r.callback.job_id for r in store.recorded if r.kind == "delivered") == [1, 2]
