"""Executable state rules: every store verb, on every database, makes only the status changes that
`states.TRANSITIONS` and `states.CALLBACK_TRANSITIONS` allow."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue
from pending_jobs.models import CallbackResult, Completion
from pending_jobs.states import CALLBACK_TRANSITIONS, TRANSITIONS, CallbackStatus, JobStatus
from pending_jobs.store import CallbackStore, JobFilter, OpsStore, Store

Snapshot = dict[int, tuple[str, str | None]]
JobTable = dict[JobStatus, frozenset[JobStatus]]
CallbackTable = dict[CallbackStatus | None, frozenset[CallbackStatus | None]]


def snapshot(engine: sa.Engine) -> Snapshot:
    with engine.connect() as conn:
        return {int(i): (s, c) for i, s, c in conn.execute(sa.text(
            "SELECT id, status, callback_status FROM pending_jobs"))}


def forbidden_changes(before: Snapshot, after: Snapshot, jobs: JobTable = TRANSITIONS,
                      callbacks: CallbackTable = CALLBACK_TRANSITIONS) -> list[str]:
    """Every change between two snapshots that the tables do not allow (deleted rows are not changes)."""
    problems = []
    for job_id, (status, callback) in after.items():
        if job_id not in before:
            continue
        old_status, old_callback = before[job_id]
        if status != old_status and JobStatus(status) not in jobs[JobStatus(old_status)]:
            problems.append(f"job {job_id}: {old_status} -> {status}")
        old_cb = CallbackStatus(old_callback) if old_callback else None
        new_cb = CallbackStatus(callback) if callback else None
        if new_cb != old_cb and new_cb not in callbacks[old_cb]:
            problems.append(f"job {job_id}: callback {old_callback} -> {callback}")
    return problems


class Checked:
    """Runs store verbs, recording every change each makes and every one the tables forbid."""

    def __init__(self, engine: sa.Engine, jobs: JobTable = TRANSITIONS,
                 callbacks: CallbackTable = CALLBACK_TRANSITIONS) -> None:
        self.engine = engine
        self.jobs = jobs
        self.callbacks = callbacks
        self.problems: list[str] = []
        self.changes: set[tuple[str, str]] = set()
        self.callback_changes: set[tuple[str | None, str | None]] = set()

    def __call__(self, verb: str, action: Callable[[], Any]) -> Any:
        before = snapshot(self.engine)
        value = action()
        after = snapshot(self.engine)
        forbidden = forbidden_changes(before, after, self.jobs, self.callbacks)
        self.problems += [f"{verb}: {problem}" for problem in forbidden]
        self.changes |= {(before[i][0], after[i][0]) for i in after if i in before and before[i][0] != after[i][0]}
        self.callback_changes |= {(before[i][1], after[i][1]) for i in after
                                  if i in before and before[i][1] != after[i][1]}
        return value


def expire(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET lease_expires_at = :t WHERE status = 'running'"),
                     {"t": dt.datetime(2000, 1, 1)})


def drive_every_verb(engine: sa.Engine, store: Store, check: Checked) -> None:
    """Each verb that can change a status, at least once, on rows in every state it accepts."""
    ops, callbacks = OpsStore(store), CallbackStore(store)
    url = "https://hooks.example.com/x"
    ids = [enqueue(engine, "noop", {"n": n}, callback_url=url if n else None) for n in range(12)]

    claim = check("claim", lambda: store.claim("default", 6, "runner", 60))
    held = [job.id for job in claim.jobs]
    check("heartbeat", lambda: store.heartbeat([(i, claim.token) for i in held], 60))
    with engine.begin() as conn:  # an operator asks to cancel one running job
        conn.execute(sa.text("UPDATE pending_jobs SET cancel_requested = :t WHERE id = :id"),
                     {"t": True, "id": held[5]})
    check("finish", lambda: store.finish_many([Completion(
        claim.token, succeeded=[(held[0], {"ok": 1})], retried=[(held[1], 0.0, "again"), (held[5], 0.0, "gave up")],
        failed=[(held[2], "broken")])]))
    check("release", lambda: store.release(claim.token, [held[3]]))
    session = store.handler_transaction(claim.jobs[4])

    def handler_commits() -> Any:
        session.connection.execute(sa.text("SELECT 1"))  # the handler's own work (SQLite: holds the write lock)
        return session.commit_success({"in": "tx"})

    check("commit_success", handler_commits)

    job_claim = check("claim_job", lambda: store.claim_job(ids[11], "runner", 60))
    rescue_me = check("claim", lambda: store.claim("default", 3, "crashed", 60))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET max_attempts = attempts WHERE id = :id"),
                     {"id": rescue_me.jobs[0].id})
        conn.execute(sa.text("UPDATE pending_jobs SET cancel_requested = :t WHERE id = :id"),
                     {"t": True, "id": rescue_me.jobs[1].id})
    expire(engine)
    check("rescue_expired", store.rescue_expired)
    assert job_claim.jobs  # also rescued: its lease expired too

    check("cancel", lambda: ops.cancel(ids[10]))  # pending -> cancelled
    running = check("claim", lambda: store.claim("default", 1, "runner", 60))
    check("cancel", lambda: ops.cancel(running.jobs[0].id))  # running: only marked

    due = check("callbacks.claim", lambda: callbacks.claim(20, 60))
    # Two delivered and two failed: one of each is reopened by `retry`, the other sent again by `callbacks.retry`.
    kinds: list[Any] = ["failed", "delivered", "failed", "delivered", "retry", "release"]
    assert len(due) >= len(kinds)
    check("callbacks.record", lambda: callbacks.record([
        CallbackResult(cb, kinds[n % len(kinds)], webhook_id="w", url=url, delay=0.0, error="e")
        for n, cb in enumerate(due)]))
    now = snapshot(engine)
    # Reopen a job whose callback was delivered and one whose callback failed: both forget that outcome.
    reopen = [next(i for i, (status, cb) in now.items() if status != "pending" and cb == wanted)
              for wanted in ("delivered", "failed")]
    check("retry", lambda: [ops.retry(i) for i in reopen])
    for job_id, _ in snapshot(engine).items():
        check("callbacks.retry", lambda job_id=job_id: callbacks.retry(job_id))
    now = snapshot(engine)
    reopen = [next(i for i, (status, _) in now.items() if status == wanted) for wanted in ("succeeded", "cancelled")]
    check("retry", lambda: [ops.retry(i) for i in reopen])
    check("retry_failed", lambda: ops.retry_failed(JobFilter()))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pending_jobs SET finished_at = :t WHERE finished_at IS NOT NULL"),
                     {"t": dt.datetime(2000, 1, 1)})
    check("purge", lambda: ops.purge(1.0, ["succeeded", "failed", "cancelled"]))


def test_every_store_verb_makes_only_allowed_changes(engine: sa.Engine, store: Store, backend: str) -> None:
    check = Checked(engine)
    drive_every_verb(engine, store, check)
    if backend == "sqlite":  # only SQLite stores text that cannot be decoded: the claim fails that row
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO pending_jobs (task, payload, callback_url) "
                                 "VALUES (CAST(X'6563686fff' AS TEXT), '{}', 'https://hooks.example.com/x')"))
        check("claim", lambda: store.claim("default", 10, "runner", 60))
    assert check.problems == []
    # The drive reached every allowed job transition, so the table is not wider than the code either.
    reachable = {(a.value, b.value) for a, targets in TRANSITIONS.items() for b in targets}
    assert check.changes == (reachable if backend == "sqlite" else reachable - {("pending", "failed")})
    callback_reachable = {(a and a.value, b and b.value) for a, targets in CALLBACK_TRANSITIONS.items()
                          for b in targets}
    assert check.callback_changes == (callback_reachable if backend == "sqlite"
                                      else callback_reachable - {(None, "failed")})


@pytest.mark.parametrize("missing", [(JobStatus.RUNNING, JobStatus.SUCCEEDED), (JobStatus.RUNNING, JobStatus.CANCELLED),
                                     (JobStatus.FAILED, JobStatus.PENDING)])
def test_the_check_fails_when_a_verb_makes_a_change_the_table_does_not_allow(
    engine: sa.Engine, store: Store, missing: tuple[JobStatus, JobStatus]
) -> None:
    narrower = {status: targets - {missing[1]} if status == missing[0] else targets
                for status, targets in TRANSITIONS.items()}
    check = Checked(engine, narrower)
    drive_every_verb(engine, store, check)
    assert any(f"{missing[0].value} -> {missing[1].value}" in problem for problem in check.problems)


@pytest.mark.parametrize("missing", [(CallbackStatus.PENDING, CallbackStatus.FAILED),
                                     (CallbackStatus.FAILED, CallbackStatus.PENDING),
                                     (CallbackStatus.DELIVERED, None)])
def test_the_check_fails_when_a_verb_makes_a_callback_change_the_table_does_not_allow(
    engine: sa.Engine, store: Store, missing: tuple[CallbackStatus, CallbackStatus | None]
) -> None:
    narrower = {status: targets - {missing[1]} if status == missing[0] else targets
                for status, targets in CALLBACK_TRANSITIONS.items()}
    check = Checked(engine, callbacks=narrower)
    drive_every_verb(engine, store, check)
    assert any(f"callback {missing[0].value} -> {missing[1]}" in problem for problem in check.problems)
