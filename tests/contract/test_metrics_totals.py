"""/metrics' counters never go down, on every database: the ended jobs and callback outcomes a purge, the
retention or a retry takes out of the rows stay counted in pending_job_totals, added in the same transaction."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa

import pending_jobs
from pending_jobs.models import CallbackKind, CallbackResult
from pending_jobs.store import CallbackStore, OpsStore, Store
from pending_jobs.store import ops as ops_module
from pending_jobs.store.console import ConsoleStore, Counters
from pending_jobs.store.ops import JobFilter
from tests.conftest import finish, rows, scalar

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "mysql", "postgresql"], indirect=True)

OLD = "2000-01-01 00:00:00"
HOOK = "http://127.0.0.1:9/cb"
Sample = dict[tuple[str, ...], int]


def _enqueue(engine: sa.Engine, queue: str, task: str, n: int, callback: str | None = None) -> list[int]:
    with engine.begin() as conn:
        return [pending_jobs.enqueue(conn, task, {"n": i}, queue=queue, callback_url=callback) for i in range(n)]


def _end(store: Store, queue: str, outcome: str) -> list[int]:
    """Every pending job of `queue` claimed and ended with `outcome` (succeeded or failed) by the runner's verbs."""
    claim = store.claim(queue, 1000, "t", 60)
    ids = [job.id for job in claim.jobs]
    if outcome == "succeeded":
        finish(store, claim.token, succeeded=[(i, None) for i in ids])
    else:
        finish(store, claim.token, failed=[(i, "broke") for i in ids])
    return ids


def _old(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET finished_at = :t WHERE finished_at IS NOT NULL"), {"t": OLD})


def _sample(counters: Counters) -> Sample:
    found: Sample = {("finished", q, t, o): n for q, t, o, n in counters.finished}
    return found | {("callbacks", o): n for o, n in counters.callbacks.items()}


class Scrapes:
    """Reads the counters as a scrape would and checks that none went down since the previous read."""

    def __init__(self, store: Store) -> None:
        self.console = ConsoleStore(store)
        self.last: Sample = {}

    def __call__(self) -> Sample:
        now = _sample(self.console.counters())
        lower = {key: (n, now.get(key, 0)) for key, n in self.last.items() if now.get(key, 0) < n}
        assert lower == {}, f"counters went down (before, after): {lower}"
        self.last = now
        return now


def _finished_mail(store: Store, engine: sa.Engine, succeeded: int, failed: int) -> tuple[list[int], Scrapes,
                                                                                     dict[Any, int]]:
    """`succeeded` echo jobs, `failed` boom jobs and one cancelled echo job ended in queue mail; the ids of
    the failed ones, a scraper that has seen them, and what it saw."""
    scrape = Scrapes(store)
    _enqueue(engine, "mail", "echo", succeeded)
    _end(store, "mail", "succeeded")
    failed_ids = _enqueue(engine, "mail", "boom", failed)
    _end(store, "mail", "failed")
    (cancelled,) = _enqueue(engine, "mail", "echo", 1)
    assert OpsStore(store).cancel(cancelled) == "done"
    expected = {("finished", "mail", "echo", "succeeded"): succeeded, ("finished", "mail", "boom", "failed"): failed,
                ("finished", "mail", "echo", "cancelled"): 1}
    assert scrape() == expected
    return failed_ids, scrape, expected


def test_purge_and_retention_keep_what_they_delete(store: Store, engine: sa.Engine) -> None:
    ops = OpsStore(store)
    _, scrape, expected = _finished_mail(store, engine, succeeded=3, failed=2)

    _old(engine)
    assert ops.purge(3600, ["succeeded"]) == 3
    assert scrape() == expected
    assert rows(engine, "SELECT kind, queue, task, outcome, total FROM pending_job_totals") == [
        ("job", "mail", "echo", "succeeded", 3)]

    _enqueue(engine, "mail", "echo", 2)  # two more of a group the totals hold already: the upsert adds
    _end(store, "mail", "succeeded")
    _enqueue(engine, "later", "echo", 1)  # the newest job: SQLite's purge keeps the newest row (its id)
    expected[("finished", "mail", "echo", "succeeded")] = 5
    assert scrape() == expected
    _old(engine)
    assert ops.purge(3600, ["succeeded"]) == 2
    assert scrape() == expected

    assert ops.apply_retention(3600, 3600) == 3  # the cancelled one with the succeeded, then the failed
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE queue = 'mail'") == 0
    assert scrape() == expected
    assert sorted(rows(engine, "SELECT kind, queue, task, outcome, total FROM pending_job_totals")) == [
        ("job", "mail", "boom", "failed", 2), ("job", "mail", "echo", "cancelled", 1),
        ("job", "mail", "echo", "succeeded", 5)]


def test_every_retry_keeps_the_outcome_it_reopens(store: Store, engine: sa.Engine) -> None:
    ops, console = OpsStore(store), ConsoleStore(store)
    failed, scrape, expected = _finished_mail(store, engine, succeeded=2, failed=2)

    assert ops.retry(failed[0])  # `retry ID` and the console's retry
    assert scrape() == expected
    assert not ops.retry(failed[0])  # pending now: nothing reopened, nothing added twice
    assert ops.retry_failed(JobFilter()) == 1  # `retry --failed`
    assert scrape() == expected
    assert console.bulk_retry(JobFilter(queue="mail")) == 3  # the console's bulk retry: succeeded and cancelled
    assert scrape() == expected
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status = 'pending'") == 5

    assert len(_end(store, "mail", "succeeded")) == 5  # each ends again, and counts again
    expected[("finished", "mail", "boom", "succeeded")] = 2
    expected[("finished", "mail", "echo", "succeeded")] = 2 + 3
    assert scrape() == expected


def _deliver(store: Store, kinds: dict[int, CallbackKind]) -> None:
    callbacks = CallbackStore(store)
    due = callbacks.claim(100, 60)
    assert sorted(c.job_id for c in due) == sorted(kinds)
    assert callbacks.record([CallbackResult(c, kinds[c.job_id], webhook_id=f"msg_{c.job_id}", url=HOOK,
                                            error="HTTP 410" if kinds[c.job_id] == "failed" else None,
                                            status_code=410 if kinds[c.job_id] == "failed" else 200)
                             for c in due]) == len(due)


def test_callback_outcomes_survive_callback_retry_job_retry_and_purge(store: Store, engine: sa.Engine) -> None:
    ops, callbacks, scrape = OpsStore(store), CallbackStore(store), Scrapes(store)
    jobs = _enqueue(engine, "hooks", "echo", 4, callback=HOOK)
    _end(store, "hooks", "succeeded")
    assert ConsoleStore(store).counters().callbacks_pending == 4
    assert scrape() == {("finished", "hooks", "echo", "succeeded"): 4}  # pending is no outcome
    _deliver(store, {jobs[0]: "delivered", jobs[1]: "delivered", jobs[2]: "failed", jobs[3]: "failed"})
    expected = {("finished", "hooks", "echo", "succeeded"): 4, ("callbacks", "delivered"): 2,
                ("callbacks", "failed"): 2}
    assert scrape() == expected
    assert ConsoleStore(store).counters().callbacks_pending == 0

    assert callbacks.retry(jobs[0])  # `callbacks retry`: delivered, now pending again
    assert callbacks.retry(jobs[2])  # failed, now pending again
    assert scrape() == expected
    assert ops.retry(jobs[3])  # the job reopened: its failed callback forgotten (NULL)
    assert scrape() == expected

    _deliver(store, {jobs[0]: "delivered", jobs[2]: "delivered"})
    expected[("callbacks", "delivered")] = 4
    assert scrape() == expected

    _old(engine)
    assert ops.purge(3600, ["succeeded"]) == 3  # the reopened job is pending: kept
    assert scrape() == expected
    _end(store, "hooks", "succeeded")
    expected[("finished", "hooks", "echo", "succeeded")] = 5
    assert scrape() == expected
    assert ConsoleStore(store).counters().callbacks_pending == 1


def test_racing_purge_and_retry_count_every_job_once(store: Store, engine: sa.Engine,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator retrying failed jobs one by one (newest first) while the retention purges them in small
    batches (oldest first): each job is reopened or deleted, and its failure counted exactly once either
    way, because both verbs lock the rows they count before they change them."""
    monkeypatch.setattr(ops_module, "PURGE_BATCH", 20)
    ids = _enqueue(engine, "mail", "boom", 300)
    assert len(_end(store, "mail", "failed")) == len(ids)
    _old(engine)
    ops = OpsStore(store)
    retried: list[int] = []

    def retry() -> None:
        retried.extend(job for job in reversed(ids) if ops.retry(job))

    retrying = threading.Thread(target=retry)
    retrying.start()
    purged = 0
    while True:
        alive = retrying.is_alive()
        batch = ops.purge(3600, ["failed"])
        purged += batch
        if not alive and batch == 0:
            break
    retrying.join()
    assert purged + len(retried) == len(ids)
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status = 'pending'") == len(retried)
    assert Scrapes(store)() == {("finished", "mail", "boom", "failed"): len(ids)}
