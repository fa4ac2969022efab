"""`python -m benchmarks.push`: push latency with many subscribers held against one server process.

For each database: enqueue N jobs, start the push app (uvicorn, one process) on a loopback port, open N
WebSocket subscribers at once (one per job) from this process, then finish the jobs through the store in
small batches at random moments; each job's latency is from the moment its outcome's commit returned to
the moment its subscriber received the end. SQLite and MariaDB poll (one query per interval for all
subscribers); PostgreSQL answers a NOTIFY at once (the trigger of migration 0006).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from websockets.asyncio.client import connect

from pending_jobs import enqueue_many
from pending_jobs.models import Completion
from pending_jobs.store import create_engine, open_store
from pending_jobs.web import tokens

from .databases import LABELS, reachable, throwaway

SECRET = "push benchmark secret, 32 bytes."
ORIGIN = "http://127.0.0.1"

def serve(url: str, poll_interval: float) -> None:
    """The server process: the push app alone on a loopback port it binds itself (port 0: no other process
    can take it between a check and the bind), printed on its first line of stdout."""
    import uvicorn

    from pending_jobs.web.push import PushSettings, create_push_app

    settings = PushSettings(SECRET, [ORIGIN], poll_interval=poll_interval)
    app = create_push_app(settings, open_store(create_engine(url, pool_size=4)))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)).run(sockets=[sock])


@contextlib.contextmanager
def server(url: str, poll_interval: float) -> Iterator[int]:
    """A push server subprocess, ready; yields its port."""
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.push", "--serve", url,
                                "--poll-interval", str(poll_interval)], env=dict(os.environ), stdout=subprocess.PIPE,
                               text=True)
    try:
        line = process.stdout.readline() if process.stdout else ""
        if not line.strip().isdigit():
            raise RuntimeError("the push server did not start")
        port = int(line)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the push server did not start")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


async def _subscriber(port: int, job_id: int, ready: asyncio.Semaphore, connected: list[int],
                      received: dict[int, float]) -> None:
    url = f"ws://127.0.0.1:{port}/push/jobs/{job_id}/ws?token={tokens.mint(SECRET, job_id)}"
    async with ready:  # connect at most `ready` at a time (the listen backlog), then hold
        ws = await connect(url, origin=ORIGIN, open_timeout=60, max_queue=4)  # type: ignore[arg-type]
        await ws.recv()  # the state at once
    connected.append(job_id)
    async with ws:
        await ws.recv()  # the end
        received[job_id] = time.perf_counter()


def _finish(url: str, ids: list[int], batch: int, spread: float) -> dict[int, float]:
    """Claim every job, then succeed them `batch` at a time at random moments; when each commit returned."""
    engine = create_engine(url, pool_size=2)
    store = open_store(engine)
    claim = store.claim("default", len(ids), "bench", 600)
    assert len(claim.jobs) == len(ids)
    committed: dict[int, float] = {}
    order = [job.id for job in claim.jobs]
    random.shuffle(order)
    for start in range(0, len(order), batch):
        time.sleep(random.uniform(0, 2 * spread))
        chunk = order[start: start + batch]
        store.finish_many([Completion(claim.token, succeeded=[(job_id, {"n": job_id}) for job_id in chunk])])
        now = time.perf_counter()
        committed.update(dict.fromkeys(chunk, now))
    engine.dispose()
    return committed


async def _measure(url: str, port: int, ids: list[int], batch: int, spread: float) -> dict[str, Any]:
    connected: list[int] = []
    received: dict[int, float] = {}
    ready = asyncio.Semaphore(100)
    started = time.perf_counter()
    tasks = [asyncio.create_task(_subscriber(port, job_id, ready, connected, received)) for job_id in ids]
    while len(connected) < len(ids):
        await asyncio.sleep(0.05)
        failed = [task for task in tasks if task.done() and task.exception()]
        if failed:
            raise RuntimeError(f"a subscriber failed: {failed[0].exception()!r}")
    held = time.perf_counter() - started
    committed = await asyncio.to_thread(_finish, url, ids, batch, spread)
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    latencies = sorted(received[job_id] - committed[job_id] for job_id in ids)
    cut = statistics.quantiles(latencies, n=100, method="inclusive")  # never beyond the largest
    return {"subscribers": len(ids), "connect_s": held, "p50": cut[49], "p99": cut[98], "max": latencies[-1]}


def measure(backend: str, subscribers: int, batch: int, poll_interval: float) -> dict[str, Any]:
    """One database: hold `subscribers` WebSockets, finish their jobs, return the latency figures."""
    with throwaway(backend, "push") as url:
        engine = create_engine(url)
        ids = enqueue_many(engine, ({"task": "bench.noop"} for _ in range(subscribers)))
        engine.dispose()
        with server(url, poll_interval) as port:
            figures = asyncio.run(_measure(url, port, ids, batch, spread=poll_interval))
    figures["mode"] = "NOTIFY" if backend == "postgresql" else f"polling every {poll_interval}s"
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.push", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subscribers", type=int, default=1000, help="WebSockets held at once, default 1,000")
    p.add_argument("--batch", type=int, default=20, help="jobs finished per commit, default 20")
    p.add_argument("--poll-interval", type=float, default=0.25, help="the hub's poll interval, default 0.25 s")
    p.add_argument("--backends", default="sqlite,mysql,postgresql")
    p.add_argument("--serve", metavar="URL", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.poll_interval)
        return 0
    print(f"{'database':<14} {'mode':<24} {'held':>6} {'connect':>8} {'p50':>8} {'p99':>8} {'max':>8}")
    for backend in args.backends.split(","):
        problem = reachable(backend)
        if problem:
            print(f"{LABELS[backend]:<14} not reachable: {problem}")
            continue
        f = measure(backend, args.subscribers, args.batch, args.poll_interval)
        print(f"{LABELS[backend]:<14} {f['mode']:<24} {f['subscribers']:>6} {f['connect_s']:>7.1f}s "
              f"{f['p50'] * 1000:>6.0f}ms {f['p99'] * 1000:>6.0f}ms {f['max'] * 1000:>6.0f}ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
