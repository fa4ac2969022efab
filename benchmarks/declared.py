"""`python -m benchmarks.declared`: tasks declared in the config (sql, url, command) drained by `pending-jobs run`.

- sql: each job INSERTs one row into another table, in the job's own transaction (exactly-once);
  MariaDB and PostgreSQL also run the raw floor (benchmarks/floor.py: same jobs and batch, no
  handler, batched completions) in the same invocation, and the ratio is printed.
- http: each job is POSTed as signed JSON to a local keep-alive HTTP/1.1 receiver that answers JSON.
- command: each job runs `true`, then a small PHP script (when `php` is installed); beside it, a
  bare loop of `subprocess.run` of the same command with the same concurrency, so the per-job
  overhead of the runner over the spawn itself is (1/rate - 1/bare rate).

Rates are jobs / (first started_at → last finished_at, database clock); wall includes start-up.
Other work on the machine makes figures noisy: compare within one invocation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pending_jobs import enqueue_many
from pending_jobs.store import create_engine

from . import floor, measures
from .databases import LABELS, analyzed, reachable, throwaway
from .measures import BATCH, ROOT, _runner_command, _seconds_between

CONCURRENCY = 4  # the runner's default handler threads
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a fixed test secret: requests are signed as in production
PHP_SCRIPT = """<?php
$job = json_decode(stream_get_contents(STDIN), true);
echo json_encode(['n' => $job['n'], 'id' => getenv('PENDING_JOBS_JOB_ID')]);
"""
SQL_TABLE = {
    "mysql": "CREATE TABLE bench_events (id BIGINT AUTO_INCREMENT PRIMARY KEY, n INT NOT NULL)",
    "postgresql": "CREATE TABLE bench_events (id BIGSERIAL PRIMARY KEY, n INT NOT NULL)",
    "sqlite": "CREATE TABLE bench_events (id INTEGER PRIMARY KEY, n INT NOT NULL)",
}


@dataclasses.dataclass(frozen=True)
class Rate:
    """Jobs/s of one drain: by the database clock, and by the wall clock including start-up."""

    jobs: int
    rate: float
    wall_rate: float
    cpu_us: float
    """The runner process's CPU (user + system, start-up included) per job, in µs: less sensitive than
    the rates to other work on the machine."""


def _toml(value: Any) -> str:
    return json.dumps(value)  # a JSON string or array of strings is valid TOML


def drain(url: str, tables: dict[str, dict[str, Any]], jobs: list[dict[str, Any]],
          concurrency: int = CONCURRENCY) -> Rate:
    """Enqueue `jobs`, run one `pending-jobs run` with these `[task.NAME]` tables until none is left."""
    folder = Path(tempfile.mkdtemp(prefix="pj_bench_declared_"))
    try:
        lines = [f"database_url = {_toml(url)}", f"callback_secret = [{_toml(SECRET)}]"]
        for name, table in tables.items():
            lines.append(f"[task.{_toml(name)}]")
            lines.extend(f"{key} = {_toml(value)}" for key, value in table.items())
        config = folder / "pending-jobs.toml"
        config.write_text("\n".join(lines) + "\n")
        engine = create_engine(url)
        try:
            enqueue_many(engine, jobs)
            analyzed(engine)  # as the floor's table (floor.setup)
            env = {k: v for k, v in os.environ.items() if not k.startswith("PENDING_JOBS_")}
            env.update(PENDING_JOBS_MAX_RUNTIME="900", PENDING_JOBS_POLL="0", PENDING_JOBS_CONCURRENCY=str(concurrency),
                       PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
            started = time.perf_counter()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            out = subprocess.run([*_runner_command(), "run", "--config", str(config)], env=env, cwd=ROOT,
                                 capture_output=True, text=True, timeout=1800)
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            if out.returncode != 0:
                raise RuntimeError(f"pending-jobs run exited {out.returncode}: {out.stderr.strip()[-600:]}")
            with engine.connect() as conn:
                done = conn.execute(sa.text("SELECT COUNT(*) FROM pending_jobs WHERE status = 'succeeded'")).scalar()
                error = conn.execute(sa.text("SELECT MAX(last_error) FROM pending_jobs")).scalar()
            if done != len(jobs):
                raise RuntimeError(f"{len(jobs) - int(done or 0)} of {len(jobs)} jobs not succeeded: {error}")
            span = _seconds_between(engine, "started_at", "finished_at", "status = 'succeeded'")
        finally:
            engine.dispose()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return Rate(len(jobs), len(jobs) / span, len(jobs) / wall, cpu / len(jobs) * 1e6)


# -- sql -----------------------------------------------------------------------------------------


def sql_drain(backend: str, jobs: int) -> Rate:
    """`jobs` sql-task jobs, each a one-row INSERT into bench_events, in its own transaction."""
    with throwaway(backend, "declared_sql") as url:
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql(SQL_TABLE[backend])
        engine.dispose()
        tables = {"bench.insert": {"sql": "INSERT INTO bench_events (n) VALUES (:n)"}}
        return drain(url, tables, [{"task": "bench.insert", "payload": {"n": i}} for i in range(jobs)])


def sql_floor(backend: str, jobs: int) -> float:
    """The raw floor's jobs/s on the same database server."""
    with throwaway(backend, "declared_floor") as url:
        return floor.measure(url, jobs, BATCH, 1)[1]


def _claimed_batches(url: str, batch: int) -> Iterator[tuple[Any, list[int]]]:
    """The floor's claims (SELECT … SKIP LOCKED, UPDATE to running, COMMIT) on its table, batch by batch."""
    now = floor.NOW[floor._kind(url)]
    conn = floor.connect(url)
    cur = conn.cursor()
    try:
        while True:
            cur.execute(f"SELECT id FROM {floor.TABLE} WHERE status = 'pending' AND queue = 'default' AND "
                        f"run_at <= {now} ORDER BY run_at, id LIMIT {int(batch)} FOR UPDATE SKIP LOCKED")
            ids = [row[0] for row in cur.fetchall()]
            if not ids:
                conn.commit()
                return
            marks = ",".join(["%s"] * len(ids))
            cur.execute(f"UPDATE {floor.TABLE} SET status = 'running', attempts = attempts + 1 WHERE id IN ({marks})",
                        ids)
            conn.commit()
            yield conn, ids
    finally:
        conn.close()


BOUNDS = ("per job", "per claim, SAVEPOINT per job", "per claim, executemany")


def sql_bounds(backend: str, jobs: int) -> list[float]:
    """Bare DB-API ceilings (jobs/s) of three designs for an exactly-once INSERT per job, on the floor's table.

    - per job: INSERT, UPDATE to succeeded, COMMIT, from CONCURRENCY threads — what a handler's own
      transaction (the design today) allows, without SQLAlchemy or the runner;
    - per claim, SAVEPOINT per job: one transaction per claim, SAVEPOINT/INSERT/RELEASE per job (so a
      failing job can be undone alone), one UPDATE, one COMMIT;
    - per claim, executemany: the claim's INSERTs as one executemany (a multi-row INSERT on PyMySQL,
      a pipeline on psycopg), one UPDATE, one COMMIT — a failure would have to replay job by job.
    """
    rates = []
    for design in BOUNDS:
        with throwaway(backend, "declared_bound") as url:
            floor.setup(url, jobs)
            conn = floor.connect(url)
            conn.cursor().execute(SQL_TABLE[backend])
            conn.commit()
            conn.close()
            started = time.perf_counter()
            if design != "per job":
                for conn, ids in _claimed_batches(url, BATCH):
                    cur = conn.cursor()
                    if design == "per claim, executemany":
                        cur.executemany("INSERT INTO bench_events (n) VALUES (%s)", [(job_id,) for job_id in ids])
                    else:
                        for job_id in ids:
                            cur.execute("SAVEPOINT job")
                            cur.execute("INSERT INTO bench_events (n) VALUES (%s)", (job_id,))
                            cur.execute("RELEASE SAVEPOINT job")
                    marks = ",".join(["%s"] * len(ids))
                    cur.execute(f"UPDATE {floor.TABLE} SET status = 'succeeded' WHERE id IN ({marks})", ids)
                    conn.commit()
            else:
                def work(own: Any, batch: list[int]) -> None:
                    cur = own.cursor()
                    for job_id in batch:
                        cur.execute("INSERT INTO bench_events (n) VALUES (%s)", (job_id,))
                        cur.execute(f"UPDATE {floor.TABLE} SET status = 'succeeded' WHERE id = %s", (job_id,))
                        own.commit()

                workers = [floor.connect(url) for _ in range(CONCURRENCY)]
                with ThreadPoolExecutor(CONCURRENCY) as pool:
                    for _, ids in _claimed_batches(url, BATCH):
                        list(pool.map(work, workers, [ids[n::CONCURRENCY] for n in range(CONCURRENCY)]))
                for own in workers:
                    own.close()
            rates.append(jobs / (time.perf_counter() - started))
    return rates


# -- http ----------------------------------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # else the body waits 40 ms for the client's delayed ACK

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        answer = b'{"resized": ' + body + b"}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def receiver() -> Iterator[str]:
    """A local keep-alive receiver answering JSON; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jobs/resize"
    finally:
        server.shutdown()
        server.server_close()


def http_drain(backend: str, jobs: int) -> Rate:
    """`jobs` url-task jobs to the local receiver, each signed, the JSON answer stored as the result."""
    with throwaway(backend, "declared_http") as url, receiver() as endpoint:
        tables = {"bench.post": {"url": endpoint}}
        return drain(url, tables, [{"task": "bench.post", "payload": {"n": i}} for i in range(jobs)])


# -- command -------------------------------------------------------------------------------------


def bare_spawns(argv: Sequence[str], jobs: int, concurrency: int = CONCURRENCY) -> float:
    """Spawns/s of `subprocess.run(argv)` with a JSON payload on stdin, `concurrency` at a time."""

    def one(n: int) -> None:
        subprocess.run(list(argv), input=json.dumps({"n": n}).encode(), capture_output=True, check=True)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(jobs)))
    return jobs / (time.perf_counter() - started)


@dataclasses.dataclass(frozen=True)
class Command:
    """A command task's drain against the bare spawn loop of the same command."""

    label: str
    drain: Rate
    bare: float

    @property
    def overhead_ms(self) -> float:
        """Wall time per job the runner adds over the bare spawn, at the same concurrency."""
        return (1 / self.drain.rate - 1 / self.bare) * 1000


def command_drain(backend: str, label: str, argv: Sequence[str], jobs: int) -> Command:
    """`jobs` command-task jobs running `argv`, and the bare spawn loop of it."""
    bare = bare_spawns(argv, jobs)
    with throwaway(backend, "declared_cmd") as url:
        tables = {"bench.command": {"command": list(argv)}}
        rate = drain(url, tables, [{"task": "bench.command", "payload": {"n": i}} for i in range(jobs)])
    return Command(label, rate, bare)


def commands(backend: str, jobs: int) -> list[Command]:
    """`true`, then the PHP script when php is installed."""
    found = [command_drain(backend, "true", [shutil.which("true") or "/bin/true"], jobs)]
    php = shutil.which("php")
    if php:
        with tempfile.TemporaryDirectory(prefix="pj_bench_php_") as folder:
            script = Path(folder) / "job.php"
            script.write_text(PHP_SCRIPT)
            found.append(command_drain(backend, "php job.php", [php, str(script)], jobs))
    return found


# -- main ----------------------------------------------------------------------------------------


def _step(name: str, work: Callable[[], Any], problems: list[str]) -> Any:
    started = time.perf_counter()
    try:
        value = work()
    except Exception as error:
        problems.append(f"{name}: {type(error).__name__}: {' '.join(str(error).split())[:300]}")
        value = None
    print(f"  {name}: {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return value


def report(backend: str, args: argparse.Namespace) -> None:
    """Every measure on one backend, printed as it finishes; a measure that fails is named, the rest go on."""
    print(f"{LABELS[backend]}:")
    problem = reachable(backend)
    if problem:
        print(f"  not reachable: {problem}")
        return
    problems: list[str] = []
    sql: list[Rate] = []
    floors: list[float] = []
    for _ in range(args.rounds):  # alternating: a moment of other load costs one round of one side
        found = _step("sql drain", lambda: sql_drain(backend, args.sql_jobs), problems)
        sql += [found] if found else []
        if backend != "sqlite":
            rate = _step("raw floor", lambda: sql_floor(backend, args.sql_jobs), problems)
            floors += [rate] if rate else []
    bounds = _step("sql bounds", lambda: sql_bounds(backend, args.sql_jobs), problems) \
        if backend != "sqlite" and not args.sql_only else None
    http = reference = None
    spawned: list[Command] = []
    if not args.sql_only:
        http = _step("http drain", lambda: http_drain(backend, args.http_jobs), problems)
        reference = _step("callbacks", lambda: measures.callbacks(backend, args.http_jobs), problems)
        spawned = _step("command drains", lambda: commands(backend, args.command_jobs), problems) or []
    if sql:
        best = max(sql, key=lambda r: r.rate)
        ratio = f" = {best.rate / max(floors):.0%} of the raw floor {max(floors):,.0f}/s" if floors else ""
        cpu = ", ".join(f"{rate.cpu_us:.0f}" for rate in sql)
        print(f"  sql task drain ({best.jobs:,} one-row INSERTs): {best.rate:,.0f} jobs/s{ratio} "
              f"(wall with start-up {best.wall_rate:,.0f}/s; runner CPU per job {cpu} µs)")
    if bounds and floors:
        shown = "; ".join(f"{name} {rate:,.0f}/s = {rate / max(floors):.0%}" for name, rate in zip(BOUNDS, bounds,
                                                                                                   strict=True))
        print(f"  bare DB-API ceilings of an exactly-once INSERT per job (transaction {shown} of the floor)")
    if http:
        same = f"; callbacks to a local receiver, same moment: {reference.rate:,.0f}/s" if reference else ""
        print(f"  http task drain ({http.jobs:,} signed POSTs, keep-alive): {http.rate:,.0f} jobs/s "
              f"(wall {http.wall_rate:,.0f}/s{same})")
    for command in spawned:
        print(f"  command task drain `{command.label}` ({command.drain.jobs:,}): {command.drain.rate:,.0f} jobs/s "
              f"against {command.bare:,.0f}/s bare subprocess.run, {CONCURRENCY} at a time: "
              f"{command.overhead_ms:+.2f} ms per job")
    for line in problems:
        print(f"  FAILED {line}")


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print one block per backend."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.declared", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="mysql,postgresql", help="comma-separated: mysql, postgresql, sqlite")
    p.add_argument("--sql-jobs", type=int, default=20_000, help="jobs of the sql drain and the floor (20,000)")
    p.add_argument("--http-jobs", type=int, default=10_000, help="jobs of the http drain (10,000)")
    p.add_argument("--command-jobs", type=int, default=1_000, help="jobs of each command drain (1,000)")
    p.add_argument("--rounds", type=int, default=2, help="sql drain and floor alternate; the best of each (2)")
    p.add_argument("--sql-only", action="store_true", help="the sql drain against the floor alone (no bounds, "
                                                           "http or command drains)")
    args = p.parse_args(argv)
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        report(backend, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
