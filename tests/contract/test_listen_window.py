"""PostgreSQL: a job inserted between a serving run's first claim and its LISTEN is served at once, not at the
next poll. The listener thread LISTENs on its first wait, beside the producer's first claim; on a loaded
machine the claim came first, the INSERT's NOTIFY went to nobody, and the job waited a whole poll (a
minute where a run relies on the push). The same holds after the listener reconnects."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue, registry
from pending_jobs.run import run_once
from pending_jobs.store import Store
from pending_jobs.store.postgres_listen import Listener
from tests.conftest import settings_for


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_job_inserted_before_the_run_listens_is_served_without_waiting_for_the_poll(
        store: Store, engine: sa.Engine, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    looked = threading.Event()
    due_queues = store.due_queues

    def look() -> list[str]:
        found = due_queues()
        looked.set()
        return found

    monkeypatch.setattr(store, "due_queues", look)
    listen = Listener.__call__
    inserted: list[int] = []

    def late(self: Listener, seconds: float) -> Any:
        # The interleaving a loaded machine makes: the producer has looked for due jobs (none), then a producer
        # inserts one, then the listener's LISTEN runs. Its NOTIFY went out before anyone listened.
        if self.conn is None and not inserted:
            assert looked.wait(10), "the run never looked for due jobs"
            inserted.append(enqueue(engine, "echo", {}))
        return listen(self, seconds)

    monkeypatch.setattr(Listener, "__call__", late)
    settings = settings_for(db_url, poll=60.0, max_runtime=3.0)  # without the push, a minute's wait
    report = run_once(store, registry.load(settings.tasks), settings)

    assert len(inserted) == 1
    found = store.get(inserted[0])
    assert found is not None and (found.status, report.succeeded) == ("succeeded", 1), (found, report)
