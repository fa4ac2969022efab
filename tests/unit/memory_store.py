"""An in-memory store that implements the runner's verbs (pending_jobs.runner.verbs.JobStore), so the
producer, executor and completer are tested without a database, in milliseconds.

It keeps the same rules as the SQL store: claims take due pending jobs by priority, then run_at, then
id, under a fresh token; every change of a running job is guarded by its token; `delay` pushes run_at.
Times are `time.monotonic()` seconds. It is not a second implementation to trust in production: the
contract suite checks the real one on every database.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Literal

from pending_jobs.models import Claim, ClaimedJob, Completion, Finished, Job, Rescued, Together


@dataclasses.dataclass
class Row:
    """One job as the memory store keeps it."""

    id: int
    task: str
    payload_text: str | None = "{}"
    queue: str = "default"
    status: str = "pending"
    priority: int = 0
    run_at: float = 0.0
    attempts: int = 0
    max_attempts: int = 5
    callback_url: str | None = None
    lease_token: str | None = None
    lease_expires_at: float | None = None
    cancel_requested: bool = False
    result: Any = None
    last_error: str | None = None
    history: list[str] = dataclasses.field(default_factory=list)
    """Every status this row has had, in order (tests assert transitions on it)."""


class MemorySession:
    """A handler transaction without a database: `connection` is not available."""

    def __init__(self, store: MemoryStore, job: ClaimedJob) -> None:
        self._store = store
        self._job = job

    @property
    def opened(self) -> bool:
        return False

    @property
    def connection(self) -> Any:
        raise RuntimeError("the memory store has no database connection")

    def cancel_requested(self) -> bool:
        return self._store.rows[self._job.id].cancel_requested

    def commit_success(self, result: Any) -> tuple[Literal["recorded", "stale", "error"], str]:
        raise AssertionError("never opened")

    def rollback(self, error: BaseException | None = None) -> None:
        return None

    def abandon(self) -> None:
        self._store.abandoned.append(self._job.id)


class MemoryStore:
    """The runner's store verbs over a dict of rows; thread-safe; optional slow writes."""

    json_accepts_nul = True

    def __init__(self, concurrent_writers: bool = True, write_delay: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.concurrent_writers = concurrent_writers
        self.write_delay = write_delay
        self.clock = clock
        self.rows: dict[int, Row] = {}
        self.lock = threading.Lock()
        self.claims = 0
        self.writes = 0
        self.writing = 0
        self.most_writing = 0
        self.heartbeats = 0
        self.fail_next_write: BaseException | None = None
        self.refuse: set[int] = set()
        """Jobs whose success or retry the "database" refuses to store (a value it cannot take)."""
        self.abandoned: list[int] = []
        self.together = False
        """Whether queues may be claimed by the transaction that runs their jobs (`claim_together`)."""
        self.orders = 0
        self.order_runs: list[tuple[int, int]] = []  # (jobs locked, jobs run) of each order that committed
        self.locked: set[int] = set()  # rows an order holds (its "transaction" is running)

    # -- test helpers ----------------------------------------------------------------------------

    def add(self, task: str, payload: Any = None, **columns: Any) -> int:
        """Insert a pending job (payload as JSON text unless `payload_text` is given); returns its id."""
        with self.lock:
            job_id = len(self.rows) + 1
            if "payload_text" not in columns:
                columns["payload_text"] = json.dumps({} if payload is None else payload)
            columns.setdefault("run_at", self.clock())
            self.rows[job_id] = Row(job_id, task, **columns)
            self.rows[job_id].history.append(self.rows[job_id].status)
            return job_id

    def status(self, job_id: int) -> str:
        return self.rows[job_id].status

    def statuses(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for row in self.rows.values():
            found[row.status] = found.get(row.status, 0) + 1
        return found

    def _set(self, row: Row, status: str) -> None:
        row.status = status
        row.history.append(status)

    # -- the verbs -------------------------------------------------------------------------------

    def due_queues(self) -> list[str]:
        with self.lock:
            return sorted({row.queue for row in self.rows.values() if row.status == "pending"})

    def claim(self, queue: str, limit: int, owner: str, lease: float) -> Claim:
        with self.lock:
            self.claims += 1
            now = self.clock()
            due = sorted((r for r in self.rows.values() if r.status == "pending" and r.queue == queue
                          and r.run_at <= now and r.id not in self.locked),  # SKIP LOCKED: orders hold these
                         key=lambda r: (-r.priority, r.run_at, r.id))[:limit]
            return self._mark(due, lease)

    def claim_job(self, job_id: int, owner: str, lease: float) -> Claim:
        with self.lock:
            row = self.rows.get(job_id)
            return self._mark([row] if row is not None and row.status == "pending" else [], lease)

    def _mark(self, rows: list[Row], lease: float) -> Claim:
        token = secrets.token_hex(8)
        jobs = []
        for row in rows:
            self._set(row, "running")
            row.attempts += 1
            row.lease_token = token
            row.lease_expires_at = self.clock() + lease
            jobs.append(ClaimedJob(row.id, row.task, row.queue, row.payload_text, row.attempts, row.max_attempts,
                                   row.priority, row.callback_url, token))
        return Claim(token, jobs)

    def finish_many(self, completions: Sequence[Completion]) -> list[Finished]:
        with self.lock:
            self.writing += 1
            self.most_writing = max(self.most_writing, self.writing)
            failure, self.fail_next_write = self.fail_next_write, None
        try:
            if self.write_delay:
                time.sleep(self.write_delay)
            if failure is not None:
                raise failure
            for c in completions:
                for job_id in [i for i, _ in c.succeeded] + [i for i, _, _ in c.retried]:
                    if job_id in self.refuse:
                        raise ValueError(f"the database cannot store the outcome of job {job_id}")
            with self.lock:
                self.writes += 1
                return [self._finish(completion) for completion in completions]
        finally:
            with self.lock:
                self.writing -= 1

    def _held(self, job_id: int, token: str) -> Row | None:
        row = self.rows.get(job_id)
        return row if row is not None and row.status == "running" and row.lease_token == token else None

    def _finish(self, c: Completion) -> Finished:
        succeeded = retried = failed = cancelled = 0
        for job_id, result in c.succeeded:
            if (row := self._held(job_id, c.token)) is not None:
                self._set(row, "succeeded")
                row.result = result
                succeeded += 1
        for job_id, delay, error in c.retried:
            if (row := self._held(job_id, c.token)) is not None:
                row.last_error = error
                if row.cancel_requested:
                    self._set(row, "cancelled")
                    cancelled += 1
                else:
                    self._set(row, "pending")
                    row.run_at = self.clock() + delay
                    retried += 1
        for job_id, error in c.failed:
            if (row := self._held(job_id, c.token)) is not None:
                row.last_error = error
                self._set(row, "cancelled" if row.cancel_requested else "failed")
                cancelled += row.cancel_requested
                failed += not row.cancel_requested
        return Finished(succeeded, retried, failed, cancelled)

    def release(self, token: str, ids: Sequence[int]) -> tuple[int, int]:
        with self.lock:
            released = cancelled = 0
            for job_id in ids:
                if (row := self._held(job_id, token)) is not None:
                    self._set(row, "cancelled" if row.cancel_requested else "pending")
                    row.attempts -= 1
                    cancelled += row.cancel_requested
                    released += not row.cancel_requested
            return released, cancelled

    def cancels_asked(self, ids: Sequence[int]) -> set[int]:
        with self.lock:
            return {job_id for job_id in ids if job_id in self.rows and self.rows[job_id].cancel_requested}

    def heartbeat(self, held: Sequence[tuple[int, str]], lease: float) -> int:
        with self.lock:
            self.heartbeats += 1
            renewed = 0
            for job_id, token in held:
                if (row := self._held(job_id, token)) is not None:
                    row.lease_expires_at = self.clock() + lease
                    renewed += 1
            return renewed

    def rescue_expired(self, task_limits: Mapping[str, int] | None = None,
                       held: tuple[Collection[str], Collection[str]] = ((), ())) -> Rescued:
        with self.lock:
            counts = {"pending": 0, "failed": 0, "cancelled": 0}
            for row in self.rows.values():
                if row.status != "running" or (row.lease_expires_at or 0.0) >= self.clock():
                    continue
                limit = min(row.max_attempts, (task_limits or {}).get(row.task, row.max_attempts))
                status = ("cancelled" if row.cancel_requested
                          else "failed" if row.attempts >= limit else "pending")
                self._set(row, status)
                row.lease_token = row.lease_expires_at = None
                counts[status] += 1
            return Rescued(**counts)

    def get(self, job_id: int) -> Job | None:
        row = self.rows.get(job_id)
        if row is None:
            return None
        return Job(row.id, row.queue, row.task, None, row.status, row.priority, None, row.attempts,
                   row.max_attempts, row.result, row.last_error, row.callback_url, None, 0, None, None, None, None,
                   None, row.cancel_requested, None, None, None, None)

    def run_together(self, jobs: Sequence[ClaimedJob], work: Callable[[Any, Sequence[ClaimedJob]], Sequence[Any]]
                     ) -> Together:
        """No connection to share: every job runs alone."""
        return Together(False, reason="the memory store has no connection")

    def claims_together(self, queue: str) -> bool:
        return self.together

    def claim_together(self, queue: str, tasks: Sequence[str], limit: int, owner: str,
                       work: Callable[[Any, Sequence[ClaimedJob]], Sequence[Any]]
                       ) -> tuple[list[ClaimedJob], Together]:
        """As the SQL store's: rows locked (left pending), worked, the ones worked marked succeeded at once; on any
        error nothing changes. `work` gets None for a connection."""
        token = secrets.token_hex(8)
        with self.lock:
            self.orders += 1
            now = self.clock()
            due = sorted((r for r in self.rows.values() if r.status == "pending" and r.queue == queue
                          and r.task in tasks and r.run_at <= now and r.id not in self.locked),
                         key=lambda r: (-r.priority, r.run_at, r.id))[:limit]
            self.locked.update(row.id for row in due)
            jobs = [ClaimedJob(row.id, row.task, row.queue, row.payload_text, row.attempts + 1, row.max_attempts,
                               row.priority, row.callback_url, token) for row in due]
        try:
            try:
                results = work(None, jobs) if jobs else []
            except Exception as error:
                return jobs, Together(False, reason=str(error))
            with self.lock:
                for job, result in zip(jobs, results, strict=False):
                    row = self.rows[job.id]
                    self._set(row, "succeeded")
                    row.attempts += 1
                    row.lease_token = token
                    row.result = result
            self.order_runs.append((len(jobs), len(results)))
            return jobs, Together(True, unstarted=len(jobs) - len(results))
        finally:
            with self.lock:
                self.locked.difference_update(job.id for job in jobs)

    def handler_transaction(self, job: ClaimedJob) -> MemorySession:
        return MemorySession(self, job)
