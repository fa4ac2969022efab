"""Deliver due callbacks: claim a few, POST them concurrently, record every attempt.

Claims and batched records are short transactions of their own (claims in the calling thread, records
overlapped with them in a thread of their own, see batch.py); HTTP requests run in worker threads over
one pool of keep-alive connections while no transaction is open and no row is locked.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .. import __version__
from ..config import Settings
from ..errors import ConfigError
from ..store.callbacks import CallbackResult, CallbackStore, DueCallback
from .batch import Batch
from .guard import Guard, Refused, Resolver, Unresolved, host_key, redact
from .policy import classify
from .signing import Signer
from .transport import Response, Transport

log = logging.getLogger(__name__)

LEASE_MARGIN = 60.0  # seconds beyond the request timeout before another runner may take a callback over
# Rounds of requests claimed ahead of the workers. Each claim has a fixed cost (a transaction, column
# metadata), so bigger, fewer claims deliver more per second: 3 / 5 / 8 rounds measured ≈ 2,080 /
# 2,100 / 2,520 callbacks/s on MariaDB (median of 3). The price is a longer lease (8 rounds: 195 s at
# the default 15 s timeout), which only matters when a runner dies holding callbacks.
QUEUED_ROUNDS = 8
BREAKER_THRESHOLD = 5  # consecutive failures to one host that open its circuit for the rest of the run
BREAKER_PAUSE = 60.0  # seconds a callback held back by an open circuit waits (about one cron tick)
EXCERPT = 1024
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def webhook_id(callback: DueCallback) -> str:
    """The event's id: the same on every retry of this outcome, new if the job runs and ends again."""
    finished = callback.finished_at or EPOCH
    return f"msg_{callback.job_id}_{(finished - EPOCH) // dt.timedelta(microseconds=1)}"


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="microseconds").replace("+00:00", "Z") if value else None


def body_of(callback: DueCallback) -> bytes:
    """The JSON body: event type, event time, and the job's outcome (`error` is its last_error)."""
    document = {
        "type": f"job.{callback.status}",
        "timestamp": _iso(callback.finished_at),
        "data": {
            "id": callback.job_id,
            "task": callback.task,
            "queue": callback.queue,
            "status": callback.status,
            "attempts": callback.attempts,
            "result": callback.result,
            "error": callback.last_error,
            "created_at": _iso(callback.created_at),
            "finished_at": _iso(callback.finished_at),
        },
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, default=str).encode()


T = TypeVar("T")
Outcome = tuple[DueCallback, CallbackResult | BaseException]


def _take(items: queue.SimpleQueue[T], timeout: float) -> list[T]:
    """Everything queued, waiting up to `timeout` seconds for the first item."""
    found: list[T] = []
    with contextlib.suppress(queue.Empty):
        found.append(items.get(timeout=timeout))
        while True:
            found.append(items.get_nowait())
    return found


class Workers:
    """Threads that run attempts; each outcome comes back on one queue with its callback.

    Plain threads and two queues, not a ThreadPoolExecutor: a Future, its condition and its done
    callback per request cost ≈9 µs of CPU more per callback (measured), all of it under the GIL.
    """

    def __init__(self, count: int, attempt: Callable[[DueCallback], CallbackResult]) -> None:
        self._todo: queue.SimpleQueue[DueCallback | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._attempt = attempt
        self._threads = [threading.Thread(target=self._work, name=f"pending-jobs-callback_{n}", daemon=True)
                         for n in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, callback: DueCallback) -> None:
        self._todo.put(callback)

    def take(self, timeout: float) -> list[Outcome]:
        """The outcomes finished so far, waiting up to `timeout` seconds for the first."""
        return _take(self._done, timeout)

    def cancel(self) -> None:
        """Drop the callbacks not started yet: they stay leased, retried once the lease runs out."""
        _take(self._todo, 0.0)

    def close(self) -> None:
        """Let the running attempts finish, then stop the threads."""
        for _ in self._threads:
            self._todo.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while (callback := self._todo.get()) is not None:
            try:
                outcome: CallbackResult | BaseException = self._attempt(callback)
            except BaseException as error:  # handed to the calling thread, which raises it
                outcome = error
            self._done.put((callback, outcome))


class Deliverer:
    """The runner's `deliver_callbacks` hook: `deliverer(deadline) -> (delivered, not delivered)`."""

    def __init__(self, store: CallbackStore, settings: Settings, resolver: Resolver | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if settings.callback_timeout <= 0 or settings.callback_connect_timeout <= 0:
            raise ConfigError("callback_timeout and callback_connect_timeout must be positive")
        self.store = store
        self.settings = settings
        self.signer = Signer(settings.callback_secret)  # raises ConfigError on a malformed secret
        self.guard = Guard(settings.callback_allow, resolver)
        self.concurrency = max(1, settings.callback_concurrency)
        self.transport = Transport(self.concurrency)
        self.clock = clock
        self.failures: dict[str, int] = {}
        self._lock = threading.Lock()
        self._deadline = 0.0
        self._start_by: dict[tuple[int, str], float] = {}

    def __call__(self, deadline: float) -> tuple[int, int]:
        """Deliver what is due until nothing is left or the deadline passes; returns the counts."""
        self.failures = {}  # the circuit breaker is per run
        self._deadline = deadline
        self._start_by = {}
        # A callback queued behind QUEUED_ROUNDS rounds of requests starts at most that many timeouts late.
        lease = self.settings.callback_timeout * (1 + QUEUED_ROUNDS) + LEASE_MARGIN
        capacity = self.concurrency * (1 + QUEUED_ROUNDS)
        delivered = undelivered = 0
        inflight = 0
        batch = Batch(self.store)
        drained = False
        # Refill once half the capacity is free: a claim per freed slot costs a transaction per request.
        refill = (capacity + 1) // 2
        workers = Workers(self.concurrency, self.attempt)
        try:
            while True:
                free = capacity - inflight
                if not drained and free >= refill and time.monotonic() < deadline:
                    # Started later than this, a request could outlive the lease (a slow DNS answer or
                    # TLS handshake can make a round longer than callback_timeout): attempt() releases it.
                    start_by = time.monotonic() + self.settings.callback_timeout * QUEUED_ROUNDS
                    claimed = self.store.claim(free, lease)
                    drained = len(claimed) < free  # nothing more is due now (or others hold it)
                    for callback in claimed:
                        if self._open(callback.url):
                            batch.add([self._hold_back(callback)])
                        else:
                            self._start_by[(callback.job_id, callback.token)] = start_by
                            workers.submit(callback)
                            inflight += 1
                if batch.due(idle=not inflight):
                    batch.flush()
                if not inflight:
                    if drained or time.monotonic() >= deadline:
                        break
                    continue
                pause = batch.wait_for()
                done = workers.take(0.5 if pause is None else pause)
                inflight -= len(done)
                results = [self._result(callback, outcome) for callback, outcome in done]
                batch.add(results)
                delivered += sum(1 for r in results if r.kind == "delivered")
                undelivered += sum(1 for r in results if r.kind in ("retry", "failed"))
            batch.finish()
        except BaseException:
            workers.cancel()  # not started: left leased, retried once the lease runs out
            # Record what was sent before giving up, so those callbacks are not sent again.
            with contextlib.suppress(Exception):
                batch.finish()
            raise
        finally:
            workers.close()
        return delivered, undelivered

    def _open(self, url: str) -> bool:
        return self.failures.get(host_key(url), 0) >= BREAKER_THRESHOLD

    def _hold_back(self, callback: DueCallback) -> CallbackResult:
        return CallbackResult(callback, "release", delay=BREAKER_PAUSE)

    def _result(self, callback: DueCallback, outcome: CallbackResult | BaseException) -> CallbackResult:
        if isinstance(outcome, CallbackResult):
            result = outcome
        elif isinstance(outcome, Exception):  # attempt() catches everything; this is a last line of defence
            name = type(outcome).__name__
            log.error("callback for job %d: unexpected %s", callback.job_id, name, exc_info=outcome)
            result = CallbackResult(callback, "retry", webhook_id(callback), redact(callback.url), delay=60.0,
                                    error=f"internal error: {name}")
            self._count(result)
        else:
            raise outcome  # KeyboardInterrupt and the like, raised in a worker
        return result

    def _count(self, result: CallbackResult) -> None:
        host = host_key(result.callback.url)
        code = result.status_code
        with self._lock:
            self._count_locked(host, code, result)

    def _count_locked(self, host: str, code: int | None, result: CallbackResult) -> None:
        if result.kind == "delivered" or (code is not None and code < 500 and code != 429):
            self.failures[host] = 0
        elif result.kind == "retry":
            self.failures[host] = self.failures.get(host, 0) + 1
            if self.failures[host] == BREAKER_THRESHOLD:
                log.warning("callbacks to %s: %d failures in a row; the rest wait for the next run",
                            host, BREAKER_THRESHOLD)

    def attempt(self, callback: DueCallback) -> CallbackResult:
        """One delivery attempt of one callback (runs in a worker thread; holds no database state)."""
        start_by = self._start_by.pop((callback.job_id, callback.token), math.inf)
        if self._open(callback.url):  # the circuit opened while this callback waited for a worker
            return self._hold_back(callback)
        now = time.monotonic()
        if now >= self._deadline or now > start_by:  # queued too long: the next run sends it
            return CallbackResult(callback, "release")
        result = self._send(callback)
        # Counted here, not when the main thread collects it: the next queued callback to this host
        # must already see an open circuit.
        self._count(result)
        return result

    def _send(self, callback: DueCallback) -> CallbackResult:
        msg_id, safe_url = webhook_id(callback), redact(callback.url)
        base: dict[str, Any] = {"webhook_id": msg_id, "url": safe_url}
        try:
            target = self.guard.check(callback.url)
        except Refused as refused:
            log.warning("callback for job %d to %s %s", callback.job_id, safe_url, refused)
            return CallbackResult(callback, "failed", error=str(refused), **base)
        except Unresolved as unresolved:  # DNS may answer later: retried on the schedule like a transport error
            failed = Response(status_code=None, headers={}, body=b"", error=str(unresolved), duration_ms=0)
            kind, delay, error = classify(failed, callback.attempt, self.settings.callback_schedule)
            log.log(logging.WARNING if kind == "failed" else logging.DEBUG, "callback for job %d to %s, attempt %d: %s",
                    callback.job_id, safe_url, callback.attempt, error)
            return CallbackResult(callback, kind, delay=delay, error=error, **base)
        body = body_of(callback)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"pending-jobs/{__version__}",
            **self.signer.headers(msg_id, int(self.clock()), body),
        }
        response = self.transport.post(target, callback.url, body, headers,
                                       self.settings.callback_connect_timeout, self.settings.callback_timeout)
        kind, delay, error = classify(response, callback.attempt, self.settings.callback_schedule)
        excerpt = response.body[:EXCERPT].decode("utf-8", "replace") if response.body else None
        note = error or response.error
        log.debug("callback for job %d to %s, attempt %d: %s%s", callback.job_id, safe_url, callback.attempt,
                  kind, f" ({note})" if note else "")
        if kind == "failed":
            log.warning("callback for job %d to %s failed for good: %s", callback.job_id, safe_url, error)
        return CallbackResult(callback, kind, delay=delay, error=note, status_code=response.status_code,
                              duration_ms=response.duration_ms, excerpt=excerpt, **base)
