"""What is read continuously: the /events stream behind the live pages, /metrics, and /healthz.

/events renders a page's fragment every INTERVAL seconds and sends it, when it changed, as one SSE `data:`
line of JSON (`{"html": ...}`; unchanged, a `:` comment line); console.js swaps it in (`once=1`: one
snapshot, then the end). A stream ends after STREAM_FOR seconds (EventSource opens a new one by itself) so a
server stopping never waits on a tab.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from time import monotonic
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ..store import Store
from ..store.console import ConsoleStore
from .pages import ENV, base_context, fragment
from .security import Csrf
from .views import BadRequest

INTERVAL = 2.0
STREAM_FOR = 300.0
METRICS_CACHE = 5.0
"""Seconds one read of the database serves every /metrics scrape (_Shared): what a scrape shows is at most
this old. Prometheus's shortest usual interval is 15 s."""


class _DatabaseCollector(Collector):
    """Counters and gauges read from the tables at scrape time: they sum every runner host and survive
    restarts. The counters never go down: what a purge deletes or a retry reopens stays counted in
    pending_job_totals (store/totals.py), so rate() sees no false reset."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Any:
        found = ConsoleStore(self.store).counters()
        finished = CounterMetricFamily("pending_jobs_finished", "Jobs that ended, by queue, task and outcome "
                                       "(purged and retried ones included)", labels=["queue", "task", "outcome"])
        for queue, task, outcome, n in found.finished:
            finished.add_metric([queue, task, outcome], n)
        callbacks = CounterMetricFamily("pending_jobs_callbacks", "Callbacks that ended, by outcome (purged and "
                                        "retried ones included)", labels=["outcome"])
        for outcome, n in sorted(found.callbacks.items()):
            callbacks.add_metric([outcome], n)
        waiting = GaugeMetricFamily("pending_jobs_callbacks_pending", "Jobs whose callback waits to be sent")
        waiting.add_metric([], found.callbacks_pending)
        depth = GaugeMetricFamily("pending_jobs_queue_depth", "Pending jobs per queue", labels=["queue"])
        age = GaugeMetricFamily("pending_jobs_oldest_due_age_seconds", "Seconds the oldest due job has waited",
                                labels=["queue"])
        for queue, n in sorted(found.depth.items()):
            depth.add_metric([queue], n)
            age.add_metric([queue], found.oldest_due_age.get(queue, 0.0))
        yield from (finished, callbacks, waiting, depth, age)


class _Shared:
    """One read of the metrics, served to every scrape for `ttl` seconds after that read began.

    A scrape reads the whole table's counters (0.2-0.4 s at 1,000,000 jobs), and Prometheus servers in a
    pair, or several, each scrape every 15 s: each scrape had read them again. A scrape that comes while a
    read is under way waits for it and gets its text, so no two reads run at once. What a scrape gets is at
    most `ttl` seconds old (counted from the start of the read), so a counter shows a change that much later;
    counters still never go down (the text is only ever replaced by a newer read). A read that fails is not
    kept: the next scrape reads again. `ttl` 0: every scrape reads."""

    def __init__(self, ttl: float, read: Callable[[], bytes]) -> None:
        self.ttl, self.read = ttl, read
        self.lock = threading.Lock()
        self.text, self.read_at = b"", float("-inf")

    def get(self) -> bytes:
        if self.ttl <= 0:
            return self.read()
        with self.lock:
            if monotonic() - self.read_at >= self.ttl:
                started = monotonic()
                self.text, self.read_at = self.read(), started
            return self.text


def live_routes(store: Store, csrf: Csrf, read_only: bool, metrics_cache: float = METRICS_CACHE) -> list[BaseRoute]:

    async def events(request: Request) -> Response:
        params = dict(request.query_params)
        view = params.pop("view", "overview")
        once = params.pop("once", "") == "1"  # one snapshot, then the end (scripts, tests)
        context = base_context(request, csrf, read_only)

        def snapshot() -> str:
            name, data = fragment(view, store, params, context)
            if view == "job" and data["job"] is None:  # the page says 404; its fragment has nothing to show
                raise BadRequest(f"id: job {params.get('id')} does not exist")
            return json.dumps({"view": view, "html": ENV.get_template(name).render(data)})

        try:
            first = await run_in_threadpool(snapshot)
        except BadRequest as error:
            return PlainTextResponse(str(error), 400)

        async def stream() -> AsyncIterator[str]:
            yield f"retry: 2000\ndata: {first}\n\n"
            if once:
                return
            loop = asyncio.get_running_loop()
            ends, last = loop.time() + STREAM_FOR, first
            while loop.time() < ends:
                await asyncio.sleep(INTERVAL)
                if await request.is_disconnected():
                    return
                try:
                    data = await run_in_threadpool(snapshot)
                except BadRequest:  # the job was purged meanwhile: nothing more to show (the page says so)
                    return
                # An unchanged snapshot is not sent again (console.js would drop it): a finished job's page with
                # a 1 MB result had sent it every 2 s, for as long as the tab stayed open. A comment line keeps
                # the stream alive through proxies.
                yield ": unchanged\n\n" if data == last else f"data: {data}\n\n"
                last = data

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    def read_metrics() -> bytes:
        registry = CollectorRegistry()
        registry.register(_DatabaseCollector(store))
        return generate_latest(registry)

    shared = _Shared(metrics_cache, read_metrics)

    def metrics(request: Request) -> Response:
        return Response(shared.get(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def healthz(request: Request) -> Response:
        store.read(lambda conn: None)  # raises (500) when the database does not answer
        return PlainTextResponse("ok\n")

    return [Route("/events", events), Route("/metrics", metrics), Route("/healthz", healthz)]
