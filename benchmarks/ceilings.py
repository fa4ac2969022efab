"""What the job table allows an sql-task drain, by the number of times each job's row changes status.

The sql drain (benchmarks/declared.py) runs one one-row INSERT per job into another table. Here the same
work is done with no runner at all: the bare DB-API driver, one connection, on the shipped `pending_jobs`
table (migrated, every index), in batches of the runner's size, with a multi-row INSERT per batch:

- two status changes a job, the runner's design: the claim (SELECT … FOR UPDATE SKIP LOCKED, UPDATE to
  `running` with a lease, COMMIT), then the batch's INSERT and its guarded UPDATE to `succeeded`, COMMIT;
- one status change a job: a locking SELECT, the INSERT, one UPDATE from `pending` to `succeeded`, COMMIT
  (the row lock is the lease; a crash rolls the whole batch back, pending as before).

Beside them the raw floor (benchmarks/floor.py) of the same number of jobs, in the same invocation, rounds
alternating. On PostgreSQL every status change writes a new row version and an entry in each of the
table's indexes, so the number of status changes, not the runner's Python, sets the ceiling.

`python -m benchmarks.ceilings [--backends mysql,postgresql] [--jobs 50000] [--rounds 2]`
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from pending_jobs import enqueue_many
from pending_jobs.store import create_engine

from . import floor
from .databases import LABELS, analyzed, reachable, throwaway
from .declared import SQL_TABLE
from .measures import BATCH

DESIGNS = ("two status changes a job", "one status change a job")
_NOW = {"mysql": "UTC_TIMESTAMP(6)", "postgresql": "now()"}
_LEASE = {"mysql": "UTC_TIMESTAMP(6) + INTERVAL 60 SECOND", "postgresql": "now() + interval '60 seconds'"}


def drain(url: str, design: str) -> int:
    """Run every pending job of `url`'s table the way `design` says; the number run."""
    kind = floor._kind(url)
    now = _NOW[kind]
    conn = floor.connect(url)
    cur = conn.cursor()
    done = 0
    try:
        while True:
            cur.execute("SELECT id, payload FROM pending_jobs WHERE status = 'pending' AND queue = 'default' "
                        f"AND run_at <= {now} ORDER BY priority DESC, run_at, id LIMIT {BATCH} FOR UPDATE SKIP LOCKED")
            rows = cur.fetchall()
            if not rows:
                conn.commit()
                return done
            ids = [row[0] for row in rows]
            marks = ", ".join(["%s"] * len(ids))
            if design == DESIGNS[0]:
                cur.execute(f"UPDATE pending_jobs SET status = 'running', attempts = attempts + 1, "
                            f"lease_owner = 'ceiling', lease_token = 'tok', lease_expires_at = {_LEASE[kind]}, "
                            f"started_at = {now}, updated_at = {now} WHERE id IN ({marks})", ids)
                conn.commit()
                guard, counted = "lease_token = 'tok'", ""
            else:
                guard, counted = "status = 'pending'", f", attempts = attempts + 1, started_at = {now}"
            values = [(row[1] if isinstance(row[1], dict) else json.loads(row[1]))["n"] for row in rows]
            cur.execute("INSERT INTO bench_events (n) VALUES " + ", ".join(["(%s)"] * len(values)), values)
            cur.execute(f"UPDATE pending_jobs SET status = 'succeeded', result = '{{\"rows\": 1}}', "
                        f"finished_at = {now}, updated_at = {now}, lease_owner = NULL, lease_token = NULL, "
                        f"lease_expires_at = NULL{counted} WHERE id IN ({marks}) AND {guard}", ids)
            if cur.rowcount != len(ids):
                raise RuntimeError(f"{len(ids) - cur.rowcount} of a batch's jobs not finished")
            conn.commit()
            done += len(ids)
    finally:
        conn.close()


def ceiling(backend: str, jobs: int, design: str) -> float:
    """Jobs/s of `design` draining `jobs` sql jobs from a fresh, analyzed job table."""
    with throwaway(backend, "ceiling") as url:
        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(SQL_TABLE[backend])
            enqueue_many(engine, ({"task": "bench.insert", "payload": {"n": n}} for n in range(jobs)))
            analyzed(engine)
            started = time.perf_counter()
            done = drain(url, design)
            rate = done / (time.perf_counter() - started)
            with engine.connect() as conn:
                inserted = conn.exec_driver_sql("SELECT COUNT(*) FROM bench_events").scalar()
        finally:
            engine.dispose()
    if done != jobs or inserted != jobs:
        raise RuntimeError(f"{jobs} jobs: {done} finished, {inserted} rows inserted")
    return rate


def report(backend: str, jobs: int, rounds: int) -> None:
    """The best of `rounds` of each design and of the floor, alternating, as one line per design."""
    print(f"{LABELS[backend]}:")
    problem = reachable(backend)
    if problem:
        print(f"  not reachable: {problem}")
        return
    best = dict.fromkeys(DESIGNS, 0.0)
    floors = []
    for _ in range(rounds):
        for design in DESIGNS:
            best[design] = max(best[design], ceiling(backend, jobs, design))
        with throwaway(backend, "ceiling_floor") as url:
            floors.append(floor.measure(url, jobs, BATCH, 1)[1])
    for design, rate in best.items():
        print(f"  {design} ({jobs:,} sql jobs, bare driver, one connection): {rate:,.0f} jobs/s "
              f"= {rate / max(floors):.0%} of the raw floor {max(floors):,.0f}/s")


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print one block per backend."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.ceilings", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="mysql,postgresql", help="comma-separated: mysql, postgresql")
    p.add_argument("--jobs", type=int, default=50_000, help="jobs of each drain and of the floor (50,000)")
    p.add_argument("--rounds", type=int, default=2, help="rounds, alternating; the best of each (2)")
    args = p.parse_args(argv)
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        report(backend, args.jobs, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
