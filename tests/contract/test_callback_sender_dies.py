"""A run whose callback sender stopped with an error stops at once with that error, not at its end: a
callbacks-only run (or a `serve`) otherwise went on for up to max_runtime, or for ever, sending nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import pytest

from pending_jobs import registry
from pending_jobs.callbacks import Deliverer
from pending_jobs.errors import DatabaseUnavailable
from pending_jobs.run import run_once
from pending_jobs.store import CallbackStore, Store
from tests.conftest import settings_for


class DyingSender(Deliverer):
    """Serves a moment, then fails as a claim does when the database turned read-only."""

    def serve(self, stop: threading.Event, wake: threading.Event, queues: Sequence[str] = (),
              on_counts: Callable[[int, int], None] | None = None) -> None:
        time.sleep(0.3)
        raise DatabaseUnavailable("ReadOnlySqlTransaction: cannot execute UPDATE in a read-only transaction")


@pytest.mark.parametrize("callbacks", ["only", "on"])
def test_a_run_stops_when_its_callback_sender_dies(store: Store, db_url: str, callbacks: str) -> None:
    settings = settings_for(db_url, callbacks=callbacks, poll=0.2, max_runtime=20.0)
    sender = DyingSender(CallbackStore(store), settings)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match="read-only"):
        run_once(store, registry.load(settings.tasks), settings, deliverer=sender)
    assert time.monotonic() - started < 10  # not max_runtime (20 s) later
