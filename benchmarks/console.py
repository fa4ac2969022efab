"""`python -m benchmarks.console`: the console's queries on 1,000,000 jobs, on MariaDB and PostgreSQL.

Fills a throwaway database with one multi-row INSERT … SELECT over a generated series (5 queues, 20 tasks,
90 % succeeded, 5 % failed, 4 % pending, 1 % cancelled, created over 30 days), then times each console
read (median of 5, after one warm-up) and prints the plan the database chose for the two that must be
index-served: the overview's counts (one bounded count per queue x status: pending_jobs/store/overview.py)
and a filtered page of the job list.

PostgreSQL's table is VACUUMed after the fill, as autovacuum would soon do (it is off on some test servers):
until then the visibility map is unset and every index-only read visits the table too; the overview is
also timed once before that VACUUM.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pending_jobs import enqueue_many
from pending_jobs.schema import pending_jobs as J
from pending_jobs.store import create_engine, joblist, open_store
from pending_jobs.store.columns import JOB_COLUMNS
from pending_jobs.store.console import ConsoleStore
from pending_jobs.store.ops import JobFilter
from pending_jobs.store.overview import BOUND, CLAIM_ORDER, bounded_count
from pending_jobs.web import views

from .databases import LABELS, reachable, server_version, throwaway

COLUMNS = ("queue, task, payload, status, priority, run_at, attempts, max_attempts, last_error, created_at, "
           "updated_at, started_at, finished_at")
# n is 1..N; status by n % 100: 0-3 pending, 4 cancelled, 5-9 failed, else succeeded.
FILL = {
    "postgresql": f"""INSERT INTO pending_jobs ({COLUMNS})
        SELECT 'q' || (n % 5), 'task' || (n % 20), jsonb_build_object('n', n, 'to', 'user' || n || '@example.com'),
          CASE WHEN n % 100 < 4 THEN 'pending' WHEN n % 100 = 4 THEN 'cancelled'
               WHEN n % 100 < 10 THEN 'failed' ELSE 'succeeded' END, 0,
          t, 1, 5, CASE WHEN n % 100 BETWEEN 5 AND 9 THEN 'RuntimeError: failed ' || n END, t, t,
          CASE WHEN n % 100 >= 4 THEN t + interval '1 second' END,
          CASE WHEN n % 100 >= 4 THEN t + interval '2 seconds' END
        FROM generate_series(1, :n) AS n, LATERAL (SELECT now() - (:n - n) * interval '2.592 seconds' AS t) AS c""",
    "mysql": f"""INSERT INTO pending_jobs ({COLUMNS})
        SELECT CONCAT('q', seq % 5), CONCAT('task', seq % 20), JSON_OBJECT('n', seq, 'to', CONCAT('user', seq,
          '@example.com')),
          CASE WHEN seq % 100 < 4 THEN 'pending' WHEN seq % 100 = 4 THEN 'cancelled'
               WHEN seq % 100 < 10 THEN 'failed' ELSE 'succeeded' END, 0,
          t, 1, 5, CASE WHEN seq % 100 BETWEEN 5 AND 9 THEN CONCAT('RuntimeError: failed ', seq) END, t, t,
          CASE WHEN seq % 100 >= 4 THEN t + INTERVAL 1 SECOND END,
          CASE WHEN seq % 100 >= 4 THEN t + INTERVAL 2 SECOND END
        FROM (SELECT seq, UTC_TIMESTAMP(6) - INTERVAL ((:n - seq) * 2592000) MICROSECOND AS t
              FROM seq_1_to_{{n}}) AS s""",
}


def _median(work: Callable[[], Any], times: int = 5) -> float:
    work()  # warm-up: the first read loads pages into the buffer pool
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        work()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def _vacuum(engine: sa.Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE pending_jobs")


def _explain(engine: sa.Engine, stmt: sa.Select[Any]) -> str:
    text = str(stmt.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(f"EXPLAIN {text}").all()
    return "\n".join("    " + " | ".join(str(v) for v in row) for row in rows)


def measure(backend: str, jobs: int, say: Callable[[str], None]) -> dict[str, float]:
    """Fill, time and explain on one database; the medians in milliseconds."""
    with throwaway(backend, "console") as url:
        engine = create_engine(url, pool_size=2)
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(sa.text(FILL[backend].replace("{n}", str(jobs))), {"n": jobs})
            conn.exec_driver_sql("ANALYZE" if backend == "postgresql" else "ANALYZE TABLE pending_jobs")
        say(f"{LABELS[backend]} ({server_version(backend)}): {jobs:,} jobs filled in "
            f"{time.perf_counter() - started:.1f} s")
        enqueue_many(engine, [{"task": "report.nightly", "payload": {"n": n}} for n in range(10)])
        store = open_store(engine)
        console = ConsoleStore(store)
        if backend == "postgresql":
            say(f"  {_median(console.overview) * 1000:8.1f} ms  overview before VACUUM (visibility map unset)")
            _vacuum(engine)
        failed_q1 = JobFilter(statuses=("failed",), queue="q1")
        cursor = console.jobs(failed_q1, limit=50).next
        deep = console.jobs(JobFilter(), before=jobs // 2, limit=50)
        assert deep.jobs, "the middle of the table has jobs"
        measures: dict[str, Callable[[], Any]] = {
            f"overview (counts exact to {BOUND:,}, oldest due, expired leases, paused per queue)": console.overview,
            "overview page (the above, throughput, callbacks, last runs)": lambda: views.overview(store),
            "overview counts all exact (bound=None)": lambda: console.overview(bound=None),
            "jobs: status=failed, queue=q1, first page of 50": lambda: console.jobs(failed_q1, limit=50),
            "jobs: same filter, next page (keyset cursor)": lambda: console.jobs(failed_q1, cursor, 50),
            "jobs: no filter, page at the middle of the table": lambda: console.jobs(JobFilter(), jobs // 2, 50),
            "jobs: task=task2, status=pending, first page": lambda: console.jobs(
                JobFilter(statuses=("pending",), task="task2"), limit=50),
            "jobs: task=report.nightly (10 rows among 1,000,000), first page": lambda: console.jobs(
                JobFilter(task="report.nightly"), limit=50),
            "jobs: task=report.nightly, status=failed (matches none)": lambda: console.jobs(
                JobFilter(statuses=("failed",), task="report.nightly"), limit=50),
            "jobs: task=task7, status=pending (50,000 rows of task7, none pending; searched in windows past "
            f"{joblist.BUDGET * 1000:.0f} ms)": lambda: console.jobs(JobFilter(statuses=("pending",), task="task7"),
                                                               limit=50),
            "jobs: text search 'user999999@' (one row; windowed)": lambda: console.jobs(
                JobFilter(text="user999999@"), limit=50),
            "job page errors (by job_id)": lambda: console.errors(jobs // 2),
            "throughput (runs table, newest 2,000 jobs sampled)": console.throughput,
            "metrics counters (queue x task x outcome: a full scan)": console.counters,
        }
        found = {}
        for name, work in measures.items():
            found[name] = _median(work) * 1000
            say(f"  {found[name]:8.1f} ms  {name}")
        pair = (J.c.status == "succeeded", J.c.queue == "q1")
        counts = bounded_count(pair, CLAIM_ORDER, BOUND)
        with engine.connect() as conn:
            estimate = store.sql.estimate(conn, sa.select(J.c.id).where(*pair), {})
            exact = conn.execute(bounded_count(pair, CLAIM_ORDER, None)).scalar_one()
        say(f"  succeeded in q1: {exact:,}; the planner's estimate {estimate if estimate is None else f'{estimate:,}'}")
        page = (sa.select(*JOB_COLUMNS).where(*console.ops.where(failed_q1)).order_by(J.c.id.desc()).limit(51))
        say(f"  EXPLAIN overview count of one queue x status (succeeded, q1):\n{_explain(engine, counts)}")
        say(f"  EXPLAIN jobs status=failed, queue=q1:\n{_explain(engine, page)}")
        nightly = (sa.select(*JOB_COLUMNS).where(*console.ops.where(JobFilter(task="report.nightly")))
                   .order_by(J.c.id.desc()).limit(51))
        say(f"  EXPLAIN jobs task=report.nightly:\n{_explain(engine, nightly)}")
        engine.dispose()
        return found


def trigger_cost(jobs: int, rounds: int, say: Callable[[str], None]) -> dict[str, float]:
    """Drain `jobs` no-op jobs with `pending-jobs run` on PostgreSQL with the NOTIFY-on-finish trigger of
    migration 0006 enabled and disabled, alternating; the median rate of each, in jobs/s."""
    root = Path(__file__).resolve().parent.parent
    rates: dict[str, list[float]] = {"enabled": [], "disabled": []}
    with throwaway("postgresql", "trigger") as url:
        engine = create_engine(url)
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(root), "PENDING_JOBS_DATABASE_URL": url,
               "PENDING_JOBS_TASKS": "benchmarks.noop", "PENDING_JOBS_POLL": "0", "PENDING_JOBS_LOCK_FILE": "none"}
        for _ in range(rounds):
            for mode in rates:
                with engine.begin() as conn:
                    conn.exec_driver_sql("DELETE FROM pending_jobs")
                    conn.exec_driver_sql(f"ALTER TABLE pending_jobs {mode[:-1].upper()} TRIGGER "
                                         "pending_jobs_notify_finished")
                enqueue_many(engine, [{"task": "bench.noop", "payload": {}} for _ in range(jobs)])
                started = time.perf_counter()
                subprocess.run([sys.executable, "-m", "pending_jobs", "run"], env=env, cwd=root, check=True)
                rates[mode].append(jobs / (time.perf_counter() - started))
                say(f"  trigger {mode}: {rates[mode][-1]:,.0f} jobs/s")
        engine.dispose()
    return {mode: statistics.median(found) for mode, found in rates.items()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.console", description=__doc__)
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--backends", default="mysql,postgresql")
    p.add_argument("--trigger-cost", action="store_true",
                   help="instead: what the NOTIFY-on-finish trigger costs a drain on PostgreSQL")
    args = p.parse_args(argv)
    if args.trigger_cost:
        medians = trigger_cost(20_000, 3, lambda line: print(line, flush=True))
        print("median: " + ", ".join(f"trigger {mode} {rate:,.0f} jobs/s" for mode, rate in medians.items()))
        return 0
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        problem = reachable(backend)
        if problem:
            print(f"{LABELS[backend]}: skipped ({problem})")
            continue
        measure(backend, args.jobs, lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
