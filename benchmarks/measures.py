"""The measures: each takes a backend and sizes, uses its own throwaway database, and returns figures."""

from __future__ import annotations

import base64
import compileall
import dataclasses
import functools
import multiprocessing
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pending_jobs import config, enqueue, enqueue_many
from pending_jobs.store import create_engine, open_store

from .databases import analyzed, fill, throwaway

ROOT = Path(__file__).resolve().parent.parent
BATCH = int(config.BY_NAME["batch_size"].default)
TASKS = "benchmarks.noop"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each measure is; `--quick` shrinks everything but the drain."""

    jobs: int = 20_000
    rounds: int = 3  # drain and raw floor alternate this many times; the best of each is kept
    enqueue_single: int = 3_000
    callbacks: int = 3_000
    latency_samples: int = 60
    backlog: int = 1_000_000
    small_backlog: int = 1_000
    rss_jobs: int = 2_000

    @classmethod
    def quick(cls, jobs: int) -> Sizes:
        return cls(jobs=jobs, rounds=1, enqueue_single=300, callbacks=200, latency_samples=10, backlog=20_000,
                   small_backlog=1_000, rss_jobs=500)


def _runner_command() -> list[str]:
    """`pending-jobs` from this interpreter's environment, as cron would start it: its modules compiled to
    bytecode, as a `pip install` leaves them. An editable install (`make install`) leaves that to the first
    start, and where PYTHONDONTWRITEBYTECODE is set (the CI machine's environment) to every start: 0.3 s more
    of the 1.05 s `pending-jobs --version` took there (2026-12-07), counted in a whole-process drain's time."""
    _compiled()
    script = Path(sys.executable).with_name("pending-jobs")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pending_jobs"]


@functools.cache
def _compiled() -> None:
    compileall.compile_dir(ROOT / "pending_jobs", quiet=1)
    compileall.compile_dir(ROOT / "benchmarks", quiet=1)


def _env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENDING_JOBS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env.update(PENDING_JOBS_DATABASE_URL=url, PENDING_JOBS_TASKS=TASKS, PENDING_JOBS_MAX_RUNTIME="900",
               PENDING_JOBS_POLL="0", PENDING_JOBS_LOCK_FILE="none", **extra)
    return env


def _start_run(url: str, *flags: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*_runner_command(), "run", *flags], env=_env(url, **env), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str], timeout: float = 900) -> None:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"pending-jobs run exited {proc.returncode}: {(err or out).strip()[-800:]}")


def _scalar(engine: sa.Engine, sql: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar()


def _seconds_between(engine: sa.Engine, start: str, end: str, where: str) -> float:
    """Seconds from MIN(start) to MAX(end) by the database's own clock columns."""
    with engine.connect() as conn:
        first, last = conn.execute(sa.text(f"SELECT MIN({start}), MAX({end}) FROM pending_jobs WHERE {where}")).one()
    if isinstance(first, str):  # SQLite keeps times as text
        import datetime as dt

        first, last = dt.datetime.fromisoformat(first), dt.datetime.fromisoformat(last)
    return max(1e-6, float((last - first).total_seconds()))


# -- drain ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Drain:
    """Jobs/s from the first claim to the last completion (database clock), and wall time with start-up."""

    processes: int
    jobs: int
    rate: float
    wall_rate: float


def drain(backend: str, jobs: int, processes: int) -> Drain:
    """N no-op jobs drained by `processes` concurrent `pending-jobs run` processes."""
    with throwaway(backend, "drain") as url:
        engine = create_engine(url)
        try:
            enqueue_many(engine, ({"task": "bench.noop"} for _ in range(jobs)))
            analyzed(engine)  # as the floor's table (floor.setup)
            started = time.perf_counter()
            procs = [_start_run(url) for _ in range(processes)]
            for proc in procs:
                _finish(proc)
            wall = time.perf_counter() - started
            done = int(_scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status = 'succeeded'"))
            if done != jobs:
                raise RuntimeError(f"drain left {jobs - done} of {jobs} jobs unfinished")
            span = _seconds_between(engine, "started_at", "finished_at", "status = 'succeeded'")
        finally:
            engine.dispose()
    return Drain(processes, jobs, jobs / span, jobs / wall)


def raw_floor(backend: str, jobs: int, processes: int) -> float | None:
    """The raw-SQL floor's jobs/s (benchmarks/floor.py) in a throwaway database; None on SQLite."""
    if backend == "sqlite":
        return None
    with throwaway(backend, "floor") as url:
        out = subprocess.run([sys.executable, "-m", "benchmarks.floor", url, str(jobs), str(BATCH), str(processes)],
                             cwd=ROOT, capture_output=True, text=True, timeout=900, check=True)
    found = re.search(r"done=(\d+) ([\d,.]+) jobs/s", out.stdout)
    if not found:
        raise RuntimeError(f"raw floor printed no rate: {out.stdout.strip()} {out.stderr.strip()[-400:]}")
    return float(found.group(2).replace(",", ""))


# -- enqueue -------------------------------------------------------------------------------------


PRODUCERS = 4  # concurrent producer processes, as a small web tier's workers


@dataclasses.dataclass(frozen=True)
class Enqueue:
    """Rows/s through `enqueue` (one transaction each) by one producer and by PRODUCERS processes at
    once, and through `enqueue_many` (one transaction)."""

    single: float
    concurrent: float
    bulk: float
    floor: float | None = None
    """The driver's own INSERT + COMMIT loop on the same table (no SQLAlchemy, no checks); None on SQLite."""


def _driver_insert_floor(engine: sa.Engine, count: int) -> float:
    """Rows/s of a bare DB-API loop: one INSERT and one COMMIT per row, what a single producer connection allows."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        started = time.perf_counter()
        for i in range(count):
            cursor.execute("INSERT INTO pending_jobs (task, payload) VALUES (%s, %s)", ("bench.floor", f'{{"i":{i}}}'))
            raw.commit()
        rate = count / (time.perf_counter() - started)
        cursor.close()
        return rate
    finally:
        raw.close()


def _produce(url: str, count: int, start_at: float) -> tuple[float, float]:
    """One producer process: `count` single-row enqueues from `start_at` (time.time); its first and last instant."""
    engine = create_engine(url)
    try:
        enqueue(engine, "bench.warm")  # connect before the clock starts
        time.sleep(max(0.0, start_at - time.time()))
        started = time.time()
        for i in range(count):
            enqueue(engine, "bench.noop", {"i": i})
        return started, time.time()
    finally:
        engine.dispose()


def enqueue_rates(backend: str, single: int, bulk: int) -> Enqueue:
    """Insert `single` jobs one by one, then as many from PRODUCERS processes at once, then `bulk` in one call."""
    with throwaway(backend, "enqueue") as url:
        engine = create_engine(url)
        try:
            enqueue(engine, "bench.warm")
            started = time.perf_counter()
            for i in range(single):
                enqueue(engine, "bench.noop", {"i": i})
            single_rate = single / (time.perf_counter() - started)
            floor = None if backend == "sqlite" else _driver_insert_floor(engine, single)
            per_producer = max(1, single // PRODUCERS)
            with multiprocessing.get_context("spawn").Pool(PRODUCERS) as pool:
                start_at = time.time() + 3.0  # every producer has started and connected by then
                spans = pool.starmap(_produce, [(url, per_producer, start_at)] * PRODUCERS)
            concurrent_rate = per_producer * PRODUCERS / (max(e for _, e in spans) - min(s for s, _ in spans))
            rows = [{"task": "bench.noop", "payload": {"i": i}} for i in range(bulk)]
            started = time.perf_counter()
            ids = enqueue_many(engine, rows)
            bulk_rate = bulk / (time.perf_counter() - started)
            total = int(_scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE task = 'bench.noop'"))
            expected = single + per_producer * PRODUCERS + bulk
            if len(ids) != bulk or total != expected:
                raise RuntimeError(f"enqueue stored {total} rows, expected {expected}")
        finally:
            engine.dispose()
    return Enqueue(single_rate, concurrent_rate, bulk_rate, floor)


# -- callbacks -----------------------------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    # Headers and body go out as two writes; with Nagle on, the second waits for the client's
    # delayed ACK (40 ms) and the benchmark would measure that instead of the sender.
    disable_nagle_algorithm = True
    server: _Server

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.seen(self.headers.get("webhook-signature") is not None)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Receiver)
        self.lock = threading.Lock()
        self.times: list[float] = []
        self.signed = 0

    def seen(self, signed: bool) -> None:
        with self.lock:
            self.times.append(time.perf_counter())
            self.signed += signed


@dataclasses.dataclass(frozen=True)
class Callbacks:
    """Callbacks/s between the first and the last request the local receiver saw."""

    delivered: int
    rate: float


def callbacks(backend: str, count: int) -> Callbacks:
    """`count` finished jobs with a callback to a local keep-alive receiver, delivered by `pending-jobs run`."""
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with throwaway(backend, "callbacks") as url:
            engine = create_engine(url)
            try:
                hook = f"http://127.0.0.1:{server.server_address[1]}/hook"
                enqueue_many(engine, ({"task": "bench.noop", "callback_url": hook} for _ in range(count)))
                secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
                _finish(_start_run(url, PENDING_JOBS_CALLBACK_ALLOW="127.0.0.1", PENDING_JOBS_CALLBACK_SECRET=secret))
                delivered = int(_scalar(engine, "SELECT COUNT(*) FROM pending_jobs "
                                                "WHERE callback_status = 'delivered'"))
            finally:
                engine.dispose()
    finally:
        server.shutdown()
        server.server_close()
    if delivered != count or server.signed != count:
        raise RuntimeError(f"{delivered} of {count} callbacks delivered ({server.signed} signed requests)")
    times = server.times
    return Callbacks(delivered, (len(times) - 1) / max(1e-6, times[-1] - times[0]))


# -- pickup latency ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Latency:
    """Seconds from enqueue to handler start while a `--poll 0.2` run is waiting."""

    samples: int
    p50: float
    p99: float


def pickup_latency(backend: str, samples: int, poll: float = 0.2) -> Latency:
    """Enqueue one job at a time at irregular moments while `run --poll` polls; the handler reports its delay."""
    with throwaway(backend, "latency") as url:
        engine = create_engine(url)
        proc = _start_run(url, "--poll", str(poll))
        try:
            time.sleep(2.0)  # let the run start and reach its polling loop
            gap = 0.05
            for _ in range(samples):
                enqueue(engine, "bench.stamp", {"t": time.time()})
                time.sleep(gap)
                gap = 0.05 + (gap * 7.3) % 0.3  # irregular, so arrivals fall anywhere in the poll cycle
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if int(_scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status = 'succeeded'")) == samples:
                    break
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            _finish(proc, timeout=60)
        with engine.connect() as conn:
            results = [row[0] for row in conn.execute(sa.text("SELECT result FROM pending_jobs"))]
        engine.dispose()
    delays = sorted(float(r if not isinstance(r, str) else r.strip('"')) for r in results if r is not None)
    if len(delays) != samples:
        raise RuntimeError(f"only {len(delays)} of {samples} latency jobs ran")
    return Latency(samples, statistics.median(delays), _percentile(delays, 0.99))


def _percentile(values: Sequence[float], fraction: float) -> float:
    index = min(len(values) - 1, max(0, round(fraction * (len(values) - 1))))
    return sorted(values)[index]


# -- backlog -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Backlog:
    """Median claim time (seconds, batch BATCH) at a small and a large backlog, and a run's peak RSS there."""

    small: int
    large: int
    claim_small: float
    claim_large: float
    rss_bytes: int
    rss_jobs: int


CLAIM_ROUNDS = 12


def _claim_time(url: str) -> float:
    """Median time of CLAIM_ROUNDS claims of BATCH jobs (kept running, so each claim finds fresh rows)."""
    engine = create_engine(url)
    store = open_store(engine)
    times: list[float] = []
    try:
        for _ in range(CLAIM_ROUNDS):
            started = time.perf_counter()
            claim = store.claim("default", BATCH, "bench", 300)
            times.append(time.perf_counter() - started)
            if len(claim.jobs) != BATCH:
                raise RuntimeError(f"claim returned {len(claim.jobs)} jobs")
    finally:
        engine.dispose()
    return statistics.median(times[2:])  # the first claims warm the statement cache and the pool


def backlog(backend: str, small: int, large: int, rss_jobs: int) -> Backlog:
    """Claim time with `small` then `large` pending rows; then peak RSS of `run --max-jobs` on the large backlog."""
    with throwaway(backend, "backlog") as url:
        engine = create_engine(url)
        try:
            # Claimed rows stay running (releasing them would leave dead index entries at the head of
            # the claim range and measure those instead), so top up to keep `small` pending throughout.
            fill(engine, small + CLAIM_ROUNDS * BATCH)
            claim_small = _claim_time(url)
            fill(engine, large - small)
            claim_large = _claim_time(url)
        finally:
            engine.dispose()
        proc = _start_run(url, "--max-jobs", str(rss_jobs))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        _finish(proc)
    # ru_maxrss is in kilobytes on Linux (bytes on macOS).
    rss = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
    return Backlog(small, large, claim_small, claim_large, rss, rss_jobs)
