"""/metrics serves one read of the database to every scrape for `metrics_cache` seconds: scrapes that come
together, or within those seconds, do not each read the table again."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

import pending_jobs
from pending_jobs.store.console import ConsoleStore
from pending_jobs.web import live


def _depth(text: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith('pending_jobs_queue_depth{queue="mail"}')]
    return line


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_scrapes_within_the_cache_share_one_read(console: Any, engine: sa.Engine,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pending_jobs.enqueue_many(engine, [{"task": "echo", "queue": "mail"} for _ in range(3)])
    reads = []
    counters = ConsoleStore.counters
    gate = threading.Event()

    def counted(self: ConsoleStore) -> Any:
        reads.append(1)
        gate.wait(5)  # a slow read: the scrapes that come meanwhile wait for it
        return counters(self)

    monkeypatch.setattr(ConsoleStore, "counters", counted)
    client = console(metrics_cache=60.0)
    answers: list[str] = []
    scrapes = [threading.Thread(target=lambda: answers.append(client.get("/metrics").text)) for _ in range(4)]
    for scrape in scrapes:
        scrape.start()
    gate.set()
    for scrape in scrapes:
        scrape.join(10)
    assert len(answers) == 4 and len(reads) == 1
    assert {_depth(a) for a in answers} == {'pending_jobs_queue_depth{queue="mail"} 3.0'}
    pending_jobs.enqueue_many(engine, [{"task": "echo", "queue": "mail"}])
    assert _depth(client.get("/metrics").text).endswith(" 3.0") and len(reads) == 1  # within the 60 s
    later = time.monotonic() + 61
    monkeypatch.setattr(live, "monotonic", lambda: later)
    assert _depth(client.get("/metrics").text).endswith(" 4.0") and len(reads) == 2  # past them: read again
    monkeypatch.setattr(live, "monotonic", time.monotonic)

    fresh = console(metrics_cache=0.0)  # a read per scrape
    assert _depth(fresh.get("/metrics").text).endswith(" 4.0") and len(reads) == 3
    assert _depth(fresh.get("/metrics").text).endswith(" 4.0") and len(reads) == 4
