"""Service mode holds its memory: `pending-jobs serve` under a steady stream of jobs with callbacks.

`python -m benchmarks.soak [--backends mysql,postgresql,sqlite] [--jobs 100000] [--minutes 10]`

A producer inserts `--jobs` no-op jobs evenly over `--minutes` (in small batches, each job with a
callback to a local receiver that answers 200), while one `pending-jobs serve` process runs them. The
serving process's RSS is sampled from /proc every 5 s. Reported: RSS after the first minute (warm-up:
pools, caches, compiled statements) and at the end, the growth between them (target < 10 MB), the
largest RSS seen, and whether every job succeeded and every callback was delivered.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pending_jobs import enqueue_many
from pending_jobs.store import create_engine

from .databases import LABELS, reachable, throwaway
from .measures import _env, _runner_command

WARM_UP = 60.0
SAMPLE = 5.0
TARGET_MB = 10.0


class _Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    count = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _Receiver.count += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _rss(pid: int) -> int:
    """Resident set size in bytes, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def soak(backend: str, jobs: int, minutes: float) -> str:
    """One soak on one database; returns its report line."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}/done"
    _Receiver.count = 0
    with throwaway(backend, "soak") as url:
        engine = create_engine(url)
        env = {**_env(url, PENDING_JOBS_CALLBACK_ALLOW="127.0.0.1"), "PENDING_JOBS_POLL": "0.2"}
        proc = subprocess.Popen([*_runner_command(), "serve"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        samples: list[tuple[float, int]] = []
        started = time.monotonic()
        duration = minutes * 60
        batch = max(1, jobs // int(duration * 10))  # ten inserts a second
        inserted = 0
        next_sample = started
        try:
            while inserted < jobs:
                now = time.monotonic()
                due = min(jobs, int((now - started) / duration * jobs) + batch)
                if due > inserted:
                    enqueue_many(engine, [{"task": "bench.noop", "payload": {}, "callback_url": hook}
                                          for _ in range(due - inserted)])
                    inserted = due
                if now >= next_sample:
                    samples.append((now - started, _rss(proc.pid)))
                    next_sample += SAMPLE
                if proc.poll() is not None:
                    said = proc.stderr.read()[-800:] if proc.stderr else ""
                    raise RuntimeError(f"serve exited {proc.returncode}: {said}")
                time.sleep(0.1)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and _pending(engine) > 0:
                samples.append((time.monotonic() - started, _rss(proc.pid)))
                time.sleep(SAMPLE)
            samples.append((time.monotonic() - started, _rss(proc.pid)))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        succeeded, delivered = _outcomes(engine)
        engine.dispose()
    server.shutdown()
    warm = next((rss for at, rss in samples if at >= WARM_UP), samples[-1][1])
    end = samples[-1][1]
    growth = (end - warm) / 2**20
    verdict = "meets" if growth < TARGET_MB else "MISSES"
    return (f"| {LABELS[backend]} | {jobs:,} in {minutes:g} min | {warm / 2**20:.1f} MB | {end / 2**20:.1f} MB | "
            f"{growth:+.1f} MB ({verdict} < {TARGET_MB:g} MB) | {max(r for _, r in samples) / 2**20:.1f} MB | "
            f"{succeeded:,} succeeded, {delivered:,} callbacks delivered ({_Receiver.count:,} received) |")


def _pending(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(
            "SELECT COUNT(*) FROM pending_jobs WHERE status IN ('pending', 'running') "
            "OR callback_status = 'pending'")).scalar_one())


def _outcomes(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        succeeded = conn.execute(sa.text("SELECT COUNT(*) FROM pending_jobs WHERE status = 'succeeded'")).scalar_one()
        delivered = conn.execute(sa.text(
            "SELECT COUNT(*) FROM pending_jobs WHERE callback_status = 'delivered'")).scalar_one()
    return int(succeeded), int(delivered)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="mysql,postgresql,sqlite")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args(argv)
    print("| database | jobs | RSS after 1 min | RSS at end | growth | peak | outcome |")
    print("|---|---|---|---|---|---|---|")
    for backend in args.backends.split(","):
        problem = reachable(backend)
        if problem:
            print(f"| {LABELS[backend]} | skipped: {problem} |")
            continue
        print(soak(backend, args.jobs, args.minutes), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
