"""Deliverer.serve stopped by a signal: the attempts under way finish, the callbacks queued behind them go
back unsent (a stopping run once sent all of them, up to QUEUED_ROUNDS rounds of requests after SIGTERM)."""

from __future__ import annotations

import threading
import time
from typing import Any

from pending_jobs import config
from pending_jobs.callbacks import Deliverer
from pending_jobs.models import CallbackResult, DueCallback

from .callback_fakes import ListStore, callback


def test_a_signal_sends_the_attempts_under_way_and_puts_the_queued_ones_back() -> None:
    settings = config.load({}, environ={}).replace(callback_concurrency=2)
    store = ListStore([callback(job_id) for job_id in range(1, 31)])
    sender = Deliverer(store, settings)  # type: ignore[arg-type]
    sent: list[int] = []
    started = threading.Event()

    def send(due: DueCallback, **_: Any) -> CallbackResult:
        sent.append(due.job_id)
        started.set()
        time.sleep(0.3)
        return CallbackResult(due, "delivered")

    sender._send = send  # type: ignore[method-assign]
    stop, wake = threading.Event(), threading.Event()
    serving = threading.Thread(target=sender.serve, args=(stop, wake))
    serving.start()
    assert started.wait(5)
    stop.set()  # the run's first SIGTERM (run._Callbacks.stop_now)
    wake.set()
    serving.join(10)
    assert not serving.is_alive()
    assert len(sent) <= 2 * settings.callback_concurrency  # one round of requests, not every queued one
    kinds = {result.callback.job_id: result.kind for result in store.recorded}
    assert all(kinds[job_id] == "delivered" for job_id in sent)
    released = [job_id for job_id, kind in kinds.items() if kind == "release"]
    assert released and len(released) + len(sent) == len(kinds)  # every claimed callback accounted for
