"""`run --job ID`, a one-off run of one job, sends that job's callback before it ends. Its sender thread was
stopped as soon as the job ended, in a fresh process mostly before it had claimed anything (`callbacks
delivered 0`): the callback waited for the next run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from pending_jobs import enqueue, registry
from pending_jobs.callbacks import Deliverer
from pending_jobs.run import run_once
from pending_jobs.store import CallbackStore, Store
from tests.conftest import settings_for
from tests.receivers import answer, receiver


class ColdSender(Deliverer):
    """A sender thread that starts as slowly as in a fresh `pending-jobs run` process (imports, first connection)."""

    def serve(self, stop: threading.Event, wake: threading.Event, queues: Sequence[str] = (),
              on_counts: Callable[[int, int], None] | None = None) -> None:
        time.sleep(0.5)
        super().serve(stop, wake, queues, on_counts)


def test_a_one_off_job_run_sends_its_callback(store: Store, db_url: str) -> None:
    with receiver(answer(200)) as server:
        job_id = enqueue(store.engine, "noop", {}, callback_url=server.url(), delay=3600)
        settings = settings_for(db_url, poll=0.2, callback_allow=["127.0.0.1"])  # `run --job` from a shell: poll > 0
        sender = ColdSender(CallbackStore(store), settings)
        report = run_once(store, registry.load(settings.tasks), settings, job_id=job_id, deliverer=sender)
        assert (report.succeeded, report.callbacks_delivered) == (1, 1)
        assert len(server.received) == 1
    found = store.get(job_id)
    assert found is not None and found.callback_status == "delivered"
