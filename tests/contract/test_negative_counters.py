"""A counter a producer wrote below zero counts from zero. The runner read it as 0 (models.count) and numbered the
attempt 1, but the claim stored counter + 1: -1 became 0 after one attempt, so the row said no callback was
attempted though one was, with its error, and the next attempt was numbered 1 again (one more than the
schedule gives). Found by the property test (a producer row with callback_attempts = -1)."""

from __future__ import annotations

import sqlalchemy as sa

from pending_jobs import registry
from pending_jobs.callbacks import Deliverer
from pending_jobs.run import run_once
from pending_jobs.store import CallbackStore, Store
from tests.conftest import settings_for
from tests.receivers import answer, receiver


def test_a_negative_counter_counts_from_zero(store: Store, engine: sa.Engine, db_url: str) -> None:
    with receiver(answer(500)) as server:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO pending_jobs (task, payload, attempts, callback_url, callback_attempts) "
                                 "VALUES ('echo', '{}', -1, :url, -1)"), {"url": server.url()})
            job_id = conn.execute(sa.text("SELECT MAX(id) FROM pending_jobs")).scalar_one()
        settings = settings_for(db_url, callback_allow=["127.0.0.1"], callback_schedule=[600.0])
        run_once(store, registry.load(settings.tasks), settings,
                 deliverer=Deliverer(CallbackStore(store), settings))
        assert len(server.received) == 1
    found = store.get(job_id)
    assert found is not None
    (attempt,) = CallbackStore(store).attempts(job_id)
    assert (found.status, found.attempts) == ("succeeded", 1)
    assert (found.callback_status, found.callback_attempts, attempt.attempt) == ("pending", 1, 1)
