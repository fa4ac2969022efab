"""Cron without cron's penalties, measured: pickup and callback latency under real cron, a 5-minute job,
what idle serving costs, and whether serving costs drain speed.

`python -m benchmarks.cron [--backends sqlite,mysql,postgresql] [--minutes 5] [--simulate] [--skip-long]`

- **Under cron**: Debian's `cron` daemon runs the shipped crontab line (crontab.example, with this
  checkout's paths) in /etc/cron.d while a producer inserts jobs at random moments (Poisson, `--rate`
  a second), each with a callback to a local receiver. Pickup is `started_at - created_at` (database
  clock); callback latency is the receiver's clock at arrival minus the producer's clock at insert.
  `--simulate` (or no cron on the machine): a thread starts the same command at every minute boundary.
- **Long job**: one 5-minute handler inserted at the start: it must succeed on attempt 1 while the
  other jobs keep their pickup figures and none runs twice.
- **Idle**: one serving run with nothing to do for a minute: statements a second, the runner's and the
  server's CPU. `--later N`: with N jobs in the queue due in two days (`--only idle --later 1000000`).
- **Burst**: `--only burst`: 100,000 jobs committed at once into a serving run that has caught up (it
  dives before each claim: store/due.py), against `run --drain` of the same jobs, start-up of an empty
  drain subtracted, in the same invocation: what the dives cost a burst.
- **Drain is not the price**: `run --drain` of 100,000 no-op jobs, whole-process wall time (start-up
  included) against the raw-SQL floor of the same jobs in the same invocation; beside it, the rate from the
  first claim to the last outcome (database clock) and the seconds start-up and exit took.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pending_jobs import enqueue, enqueue_many
from pending_jobs.store import create_engine, dialect_for

from . import floor
from .databases import LABELS, analyzed, fill, reachable, throwaway
from .measures import ROOT, _runner_command, _seconds_between

CRON_FILE = Path("/etc/cron.d/pending-jobs-bench")
TARGETS = "pickup p50 < 0.2 s, p99 < 1 s, max < 2 s; insert → callback p50 < 0.5 s, p99 < 2 s"


@dataclasses.dataclass(frozen=True)
class Latencies:
    """Seconds, sorted: p50/p90/p99/max."""

    values: list[float]

    def cells(self) -> str:
        if not self.values:
            return "n/a"
        v = self.values
        return (f"{_pct(v, 0.5):.3f} / {_pct(v, 0.9):.3f} / {_pct(v, 0.99):.3f} / {v[-1]:.3f} s"
                f" ({len(v)} jobs)")


def _pct(values: Sequence[float], fraction: float) -> float:
    return values[min(len(values) - 1, max(0, round(fraction * (len(values) - 1))))]


@dataclasses.dataclass
class CronResult:
    backend: str
    driver: str = ""
    pickup: Latencies | None = None
    callback: Latencies | None = None
    long_job: str = ""
    ran_twice: int = 0
    runs: int = 0
    idle: str = ""
    drain: str = ""
    problems: list[str] = dataclasses.field(default_factory=list)


class _Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    arrived: dict[int, float] = {}

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _Receiver.arrived.setdefault(int(self.path.rsplit("/", 1)[-1]), time.time())
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _config(tmp: Path, url: str) -> Path:
    config = tmp / "pending-jobs.toml"
    config.write_text(f'database_url = "{url}"\ntasks = ["benchmarks.noop"]\npython_path = ["{ROOT}"]\n'
                      f'callback_allow = ["127.0.0.1"]\nlock_file = "{tmp / "serve.lock"}"\n'
                      f'callback_secret = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]\n')
    return config


def _cron_line(config: Path, tmp: Path) -> str:
    """The shipped crontab line, with this checkout's command and a log of its own."""
    command = " ".join(_runner_command())
    return f"* * * * * root {command} run --config {config} >>{tmp / 'cron.log'} 2>&1\n"


class _Simulator:
    """Starts the command at every minute boundary, as cron does (for machines without cron)."""

    def __init__(self, config: Path, tmp: Path) -> None:
        self.config, self.tmp = config, tmp
        self.stop = threading.Event()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.thread = threading.Thread(target=self._tick, daemon=True)
        self.thread.start()

    def _tick(self) -> None:
        while not self.stop.wait(60 - time.time() % 60):
            log = open(self.tmp / "cron.log", "ab")
            self.procs.append(subprocess.Popen([*_runner_command(), "run", "--config", str(self.config)],
                                               stdout=log, stderr=log, cwd="/"))

    def close(self) -> None:
        self.stop.set()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            proc.wait(60)


def under_cron(backend: str, minutes: float, rate: float, simulate: bool, long_job: bool) -> CronResult:
    """The crontab line for `minutes` while a producer inserts jobs at random moments."""
    result = CronResult(backend)
    with throwaway(backend, "cron") as url:
        engine = create_engine(url)
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"pj-cron-{os.getpid()}-{backend}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        config = _config(tmp, url)
        _Receiver.arrived = {}
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        hook = f"http://127.0.0.1:{server.server_address[1]}/cb"
        real = not simulate and shutil.which("cron") is not None and os.geteuid() == 0
        result.driver = "Debian cron" if real else "tick simulator"
        simulator: _Simulator | None = None
        try:
            if real:
                CRON_FILE.write_text(_cron_line(config, tmp))
                if subprocess.run(["pgrep", "-x", "cron"], capture_output=True).returncode != 0:
                    subprocess.run(["cron"], check=True)
            else:
                simulator = _Simulator(config, tmp)
            time.sleep(60 - time.time() % 60 + 2)  # the first tick's run is up
            long_id = enqueue(engine, "bench.sleep", {"seconds": 300}) if long_job else None
            inserted = _produce(engine, hook, minutes * 60, rate)
            end = time.monotonic() + (330 if long_job else 20)
            while time.monotonic() < end:
                left = int(_scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status <> 'succeeded'"))
                if left == 0 and len(_Receiver.arrived) >= len(inserted):
                    break
                time.sleep(1)
        finally:
            if real:
                CRON_FILE.unlink(missing_ok=True)
            if simulator is not None:
                simulator.close()
            subprocess.run(["pkill", "-f", str(config)], capture_output=True)
            server.shutdown()
        _figures(engine, result, inserted, long_id)
        engine.dispose()
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _produce(engine: sa.Engine, hook: str, seconds: float, rate: float) -> dict[int, float]:
    """Jobs at exponentially distributed gaps (a Poisson process); id -> the producer's clock at insert."""
    inserted: dict[int, float] = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(random.expovariate(rate))
        at = time.time()
        job_id = enqueue(engine, "bench.noop", {}, callback_url=f"{hook}/{len(inserted)}")
        inserted[job_id] = at
    return inserted


def _figures(engine: sa.Engine, result: CronResult, inserted: dict[int, float], long_id: int | None) -> None:
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT id, status, attempts, created_at, started_at, callback_url "
                                     "FROM pending_jobs")).all()
        result.runs = int(conn.execute(sa.text("SELECT COUNT(*) FROM pending_job_runs")).scalar_one())
    pickup, callback = [], []
    for job_id, status, attempts, created, started, url in found:
        if job_id == long_id:
            result.long_job = f"{status} on attempt {attempts}"
            continue
        result.ran_twice += int(attempts) > 1
        if started is not None and created is not None:
            pickup.append(_seconds(started) - _seconds(created))
        arrived = _Receiver.arrived.get(int(str(url).rsplit("/", 1)[-1])) if url else None
        if arrived is not None and job_id in inserted:
            callback.append(arrived - inserted[job_id])
    result.pickup, result.callback = Latencies(sorted(pickup)), Latencies(sorted(callback))
    missing = len(inserted) - len(callback)
    if missing:
        result.problems.append(f"{missing} of {len(inserted)} callbacks did not arrive")


def _seconds(value: Any) -> float:
    import datetime as dt

    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return float(value.timestamp())


def _scalar(engine: sa.Engine, sql: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar()


def idle_cost(backend: str, seconds: float = 60.0, later: int = 0) -> str:
    """One serving run with nothing due for `seconds`: statements/s, the runner's and the server's CPU.
    With `later`, that many jobs wait in the queue, due in two days (a claim must not read through them)."""
    with throwaway(backend, "idle") as url:
        engine = create_engine(url)
        if later:
            fill(engine, later, run_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
        env = {**os.environ, "PENDING_JOBS_DATABASE_URL": url, "PENDING_JOBS_TASKS": "benchmarks.noop",
               "PENDING_JOBS_LOCK_FILE": "none", "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([*_runner_command(), "run"], env=env, cwd=ROOT)
        time.sleep(3.0)  # started, listening or polling
        before, server_before = _statements(engine), _server_cpu(engine)
        started = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - started
        after, server_after = _statements(engine), _server_cpu(engine)
        proc.terminate()
        _, status, usage = os.wait4(proc.pid, 0)
        engine.dispose()
    runner_cpu = (usage.ru_utime + usage.ru_stime) / (elapsed + 3.0) * 60
    server = f", server CPU {(server_after - server_before) / elapsed * 60:.2f} s/min" \
        if server_before is not None and server_after is not None else ""
    # SQLite runs in the runner's process: no server counts its statements.
    statements = "statements n/a (no server)" if math.isnan(after) else f"{(after - before) / elapsed:.1f} statements/s"
    return (f"{statements}, runner CPU {runner_cpu:.2f} s/min{server}"
            f" (exit {os.waitstatus_to_exitcode(status)})")


def _statements(engine: sa.Engine) -> float:
    kind = dialect_for(engine).name
    with engine.connect() as conn:
        if kind == "mysql":
            return float(conn.execute(sa.text("SHOW GLOBAL STATUS LIKE 'Questions'")).one()[1])
        if kind == "postgresql":
            return float(conn.execute(sa.text(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"))
                .scalar_one())
    return float("nan")  # SQLite: in-process, no server


def _server_cpu(engine: sa.Engine) -> float | None:
    """Seconds of CPU the database server's processes have used (from /proc), or None for SQLite."""
    kind = dialect_for(engine).name
    names = {"mysql": ("mariadbd", "mysqld"), "postgresql": ("postgres",)}.get(kind)
    if names is None:
        return None
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)
            if fields[0].split("(", 1)[1] not in names:
                continue
            parts = fields[1].split()
            total += (int(parts[11]) + int(parts[12])) / ticks
        except (OSError, IndexError, ValueError):
            continue
    return total


def drain_price(backend: str, jobs: int = 100_000) -> str:
    """`run --drain` of `jobs` no-op jobs, whole-process wall time, beside the raw floor of the same jobs."""
    with throwaway(backend, "drainprice") as url:
        engine = create_engine(url)
        for start in range(0, jobs, 10_000):
            enqueue_many(engine, ({"task": "bench.noop"} for _ in range(min(10_000, jobs - start))))
        analyzed(engine)  # as the floor's table (floor.setup)
        env = {**os.environ, "PENDING_JOBS_DATABASE_URL": url, "PENDING_JOBS_TASKS": "benchmarks.noop",
               "PYTHONPATH": str(ROOT)}
        started = time.perf_counter()
        subprocess.run([*_runner_command(), "run", "--drain"], env=env, cwd=ROOT, check=True)
        wall = time.perf_counter() - started
        span = _seconds_between(engine, "started_at", "finished_at", "status = 'succeeded'")
        engine.dispose()
    with throwaway(backend, "drainfloor") as url:
        _, floor_rate = floor.measure(url, jobs, 100, 1)
    rate = jobs / wall
    # The floor is forked with no start-up of its own; the run's is the interpreter, its imports and its checks.
    return (f"{rate:,.0f}/s whole process = {rate / floor_rate:.2f} x the floor's {floor_rate:,.0f}/s "
            f"(first claim to last outcome {jobs / span:,.0f}/s = {jobs / span / floor_rate:.2f} x; "
            f"start-up and exit {wall - span:.2f} s)")


def burst_cost(backend: str, jobs: int = 100_000) -> str:
    """Jobs/s of a caught-up serving run taking a burst of `jobs`, beside `run --drain` of as many."""
    with throwaway(backend, "burst") as url:
        engine = create_engine(url)
        env = {**os.environ, "PENDING_JOBS_DATABASE_URL": url, "PENDING_JOBS_TASKS": "benchmarks.noop",
               "PENDING_JOBS_LOCK_FILE": "none", "PYTHONPATH": str(ROOT)}

        def timed(*args: str) -> float:
            started = time.perf_counter()
            subprocess.run([*_runner_command(), "run", *args], env=env, cwd=ROOT, check=True)
            return time.perf_counter() - started

        serving = subprocess.Popen([*_runner_command(), "run", "--poll", "0.2", "--max-jobs", str(jobs)],
                                   env=env, cwd=ROOT)
        time.sleep(3.0)  # started; its first claims came back empty: caught up
        fill(engine, jobs, analyze=False)
        committed = time.perf_counter()
        if serving.wait() != 0:
            raise RuntimeError(f"the serving run exited {serving.returncode}")
        burst = jobs / (time.perf_counter() - committed)
        fill(engine, jobs, analyze=False)
        drain_wall, empty_wall = timed("--drain"), timed("--drain")
        engine.dispose()
    drain = jobs / (drain_wall - empty_wall)
    return (f"burst into a caught-up serving run {burst:,.0f}/s; run --drain {drain:,.0f}/s "
            f"({drain_wall:.2f} s less an empty drain's {empty_wall:.2f} s); ratio {burst / drain:.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cron", description=__doc__)
    p.add_argument("--backends", default="sqlite,mysql,postgresql")
    p.add_argument("--minutes", type=float, default=5.0, help="minutes of cron ticks per backend (default 5)")
    p.add_argument("--rate", type=float, default=3.0, help="jobs a second the producer inserts (default 3)")
    p.add_argument("--simulate", action="store_true", help="tick simulator instead of the cron daemon")
    p.add_argument("--skip-long", action="store_true", help="no 5-minute job")
    p.add_argument("--only", choices=("cron", "idle", "drain", "burst"), help="one measure only")
    p.add_argument("--later", type=int, default=0, metavar="N",
                   help="the idle run's queue holds N jobs due in two days (default 0: an empty table)")
    args = p.parse_args(argv)
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        problem = reachable(backend)
        if problem:
            print(f"{LABELS[backend]}: not reachable ({problem})")
            continue
        if args.only in (None, "drain") and backend != "sqlite":
            print(f"{LABELS[backend]}: drain of 100,000: {drain_price(backend)}", flush=True)
        if args.only in (None, "burst") and backend != "sqlite":
            print(f"{LABELS[backend]}: {burst_cost(backend)}", flush=True)
        if args.only in (None, "idle"):
            ahead = f" beside {args.later:,} jobs due later" if args.later else ""
            print(f"{LABELS[backend]}: idle serving run{ahead}: {idle_cost(backend, later=args.later)}", flush=True)
        if args.only in (None, "cron"):
            found = under_cron(backend, args.minutes, args.rate, args.simulate, not args.skip_long)
            print(f"{LABELS[backend]} under {found.driver}, {args.minutes:g} min at {args.rate:g} jobs/s, "
                  f"{found.runs} runs:")
            print(f"  pickup p50 / p90 / p99 / max:            {found.pickup.cells() if found.pickup else 'n/a'}")
            print(f"  insert → callback p50 / p90 / p99 / max: {found.callback.cells() if found.callback else 'n/a'}")
            print(f"  5-minute job: {found.long_job or 'not run'}; other jobs with more than one attempt: "
                  f"{found.ran_twice}")
            for problem in found.problems:
                print(f"  problem: {problem}")
            print(flush=True)
    print(f"targets: {TARGETS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
