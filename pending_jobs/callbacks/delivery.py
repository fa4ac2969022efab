"""Deliver due callbacks: claim a few, POST them concurrently, record every attempt.

Claims and batched records are short transactions of their own (claims in the calling thread, records
overlapped with them in a thread of their own, see ../batcher.py); HTTP requests run in worker threads over
one pool of keep-alive connections while no transaction is open and no row is locked.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..batcher import Batcher
from ..config import Settings
from ..errors import ConfigError
from ..models import CallbackResult, DueCallback
from ..validation import short_reason
from ..version import __version__
from ..workers import WorkerPool
from .guard import Guard, Refused, Resolver, Unresolved, host_key, host_name_problem, redact
from .policy import classify
from .signing import Signer
from .transport import Response, Transport
from .verbs import CallbackVerbs

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
CALLBACK_POLL = 1.0  # seconds between looks for callback retries whose time came, while a run serves
BUSY_LOOK = 0.1  # seconds at least between claims woken by jobs' ends while attempts are under way
BATCH_SIZE = 200  # outcomes recorded in one transaction at most
POLL = 0.005  # seconds between looks at a background record that outcomes wait behind
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
            "error": short_reason(callback.last_error),
            "created_at": _iso(callback.created_at),
            "finished_at": _iso(callback.finished_at),
        },
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, default=str).encode()


class Deliverer:
    """The runner's `deliver_callbacks` hook: `deliverer(deadline) -> (delivered, not delivered)`."""

    def __init__(self, store: CallbackVerbs, settings: Settings, resolver: Resolver | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.signer, self.guard = _checked(settings, resolver)
        self.store = store
        self.settings = settings
        self.concurrency = max(1, settings.callback_concurrency)
        self.transport = Transport(self.concurrency)
        self.clock = clock
        self.failures: dict[str, int] = {}
        self._opened: dict[str, float] = {}
        self._lock = threading.Lock()
        self._deadline = 0.0
        self._start_by: dict[tuple[int, str], float] = {}

    @staticmethod
    def check(settings: Settings) -> None:
        """Raise ConfigError for a callback setting a Deliverer would refuse (before a run takes the host lock)."""
        _checked(settings, None)

    def __call__(self, deadline: float, queues: Sequence[str] = ()) -> tuple[int, int]:
        """Deliver what is due (of jobs in `queues`; empty: all) until nothing is left or the deadline
        passes; returns (delivered, failed for good)."""
        return self._deliver(deadline, queues, None, None)

    def serve(self, stop: threading.Event, wake: threading.Event, queues: Sequence[str] = (),
              on_counts: Callable[[int, int], None] | None = None) -> None:
        """Deliver callbacks as they come due until `stop` is set: at once when `wake` is set (a job with a
        callback ended), else every CALLBACK_POLL seconds (a retry's time came); then finish the attempts
        under way and record them. `on_counts(delivered, failed for good)` as outcomes come in."""
        self._deliver(math.inf, queues, stop, wake, on_counts)

    def _deliver(self, deadline: float, queues: Sequence[str], stop: threading.Event | None,
                 wake: threading.Event | None, on_counts: Callable[[int, int], None] | None = None) -> tuple[int, int]:
        self.failures, self._opened = {}, {}  # the circuit breaker is per delivery round
        self._deadline = deadline
        self._start_by = {}
        # A callback queued behind QUEUED_ROUNDS rounds of requests starts at most that many timeouts late.
        lease = self.settings.callback_timeout * (1 + QUEUED_ROUNDS) + LEASE_MARGIN
        capacity = self.concurrency * (1 + QUEUED_ROUNDS)
        delivered = failed = 0
        inflight = 0
        batch: Batcher[CallbackResult, int] = Batcher(self.store.record, self.store.concurrent_writers, BATCH_SIZE,
                                                     writes_ahead=1, name="pending-jobs-callback-recorder")
        drained = False
        # Refill once half the capacity is free: a claim per freed slot costs a transaction per request.
        refill = (capacity + 1) // 2
        workers: WorkerPool[DueCallback, CallbackResult] = WorkerPool(
            self.concurrency, self.attempt, self._internal_error, "pending-jobs-callback")
        withdrawn = False
        claimed_at = 0.0
        try:
            while True:
                stopping = stop is not None and stop.is_set()
                if drained and inflight and wake is not None:
                    # A job ended (at most every BUSY_LOOK s), or a retry may have come due, while attempts are
                    # under way: look now. Waiting for every attempt to end first held each new callback
                    # behind one slow receiver for up to callback_timeout (15 s), though a sender was free.
                    since = time.monotonic() - claimed_at
                    if since >= CALLBACK_POLL or (since >= BUSY_LOOK and wake.is_set()):
                        wake.clear()
                        drained = False
                if stopping and not withdrawn:
                    # A signal: attempts under way finish, but the callbacks queued behind them (up to
                    # QUEUED_ROUNDS rounds of requests) go back unsent, for the next run: sent after the
                    # signal they kept a stopping run alive for minutes, past any supervisor's stop timeout.
                    withdrawn = True
                    for slot in workers.withdraw_unstarted():
                        self._start_by.pop((slot.item.job_id, slot.item.token), None)
                        batch.add([CallbackResult(slot.item, "release")])
                        inflight -= 1
                free = capacity - inflight
                if not drained and not stopping and free >= refill and time.monotonic() < deadline:
                    # Started later than this, a request could outlive the lease (a slow DNS answer or
                    # TLS handshake can make a round longer than callback_timeout): attempt() releases it.
                    start_by = time.monotonic() + self.settings.callback_timeout * QUEUED_ROUNDS
                    claimed = self.store.claim(free, lease, queues)
                    drained = len(claimed) < free  # nothing more is due now (or others hold it)
                    claimed_at = time.monotonic()
                    for callback in claimed:
                        if self._open(callback.url):
                            batch.add([self._hold_back(callback)])
                        else:
                            self._start_by[(callback.job_id, callback.token)] = start_by
                            workers.submit(callback)
                            inflight += 1
                if batch.due(idle=not inflight):
                    batch.flush()
                batch.results()  # raises the error that stopped recording
                if not inflight:
                    if stopping or time.monotonic() >= deadline or (drained and wake is None):
                        break
                    if drained and wake is not None:  # serving: wait for a job's end, or a retry's time
                        batch.drain()
                        wake.wait(CALLBACK_POLL)
                        wake.clear()
                        drained = False
                    continue
                pause = batch.wait_for() if batch.outstanding == 0 else POLL
                done = workers.take(0.5 if pause is None else pause)
                inflight -= len(done)
                results = [result for _, result in done]
                batch.add(results)
                # Failed for good only, as `callbacks list` and `status` use the word: an attempt to be
                # retried is neither (the run's summary said "failed 3" while 2 of them were retrying).
                counts = (sum(1 for r in results if r.kind == "delivered"),
                          sum(1 for r in results if r.kind == "failed"))
                delivered, failed = delivered + counts[0], failed + counts[1]
                if on_counts is not None and results:
                    on_counts(*counts)
            batch.drain()
        except BaseException:
            workers.withdraw_unstarted()  # not started: left leased, retried once the lease runs out
            # Record what was sent before giving up, so those callbacks are not sent again.
            with contextlib.suppress(Exception):
                batch.drain()
            raise
        finally:
            batch.close()
            workers.close(wait=self.settings.callback_timeout + 1)
        return delivered, failed

    def _open(self, url: str) -> bool:
        """Whether the host's circuit is open: BREAKER_THRESHOLD failures in a row, less than BREAKER_PAUSE
        ago (then it closes, and the next attempt tells whether the host is back)."""
        host = host_key(url)
        if self.failures.get(host, 0) < BREAKER_THRESHOLD:
            return False
        if time.monotonic() - self._opened.get(host, 0.0) < BREAKER_PAUSE:
            return True
        with self._lock:
            self.failures[host] = 0
        return False

    def _hold_back(self, callback: DueCallback) -> CallbackResult:
        return CallbackResult(callback, "release", delay=BREAKER_PAUSE)

    def _internal_error(self, callback: DueCallback, error: BaseException) -> CallbackResult:
        """An attempt that raised (attempt() catches everything; this is the last line of defence)."""
        name = type(error).__name__
        log.error("callback for job %d: unexpected %s", callback.job_id, name, exc_info=error)
        result = CallbackResult(callback, "retry", webhook_id(callback), redact(callback.url), delay=60.0,
                                error=f"internal error: {name}")
        self._count(result)
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
                self._opened[host] = time.monotonic()
                log.warning("callbacks to %s: %d failures in a row; the rest wait %.0fs", host, BREAKER_THRESHOLD,
                            BREAKER_PAUSE)

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


def _checked(settings: Settings, resolver: Resolver | None) -> tuple[Signer, Guard]:
    """The signer and the SSRF guard of these settings; ConfigError when one is malformed."""
    if settings.callback_timeout <= 0 or settings.callback_connect_timeout <= 0:
        raise ConfigError("callback_timeout and callback_connect_timeout must be positive")
    guard = Guard(settings.callback_allow, resolver)
    problems = allow_problems(guard)
    if problems:
        raise ConfigError(f"callback_allow: {problems[0]}")
    return Signer(settings.callback_secret), guard


def allow_problems(guard: Guard) -> list[str]:
    """The callback_allow entries that are neither a network nor a host name. Each became a "name" no URL's host
    ever equals (`hooks.internal:8080`, `http://hooks.internal`, `10.0.0.0/33`): the allowance silently did
    nothing and every callback it meant to let through failed for good, refused."""
    return [f"{name!r} is neither a CIDR, an address nor a host name (a name goes without scheme, port or path)"
            for name in sorted(guard.names) if host_name_problem(name)]
