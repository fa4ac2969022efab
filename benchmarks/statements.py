"""`python -m benchmarks.statements`: the store's own claim and completion statements on the product's table,
without the runner, beside the raw-SQL floor on its two-index table, in one invocation.

A whole-process drain can be below the floor for two reasons: the runner's own work (threads, handler
context, start-up) and what the database does for each statement on `pending_jobs`, which is wider than
the floor's table and has more indexes. This loop takes the runner away: one connection, `Store.claim`
of a batch, then `Store.finish_many` of the batch as succeeded, until the table is empty, with the time
spent inside each kind of statement (SQLAlchemy's cursor events; COMMIT not included). Its rate over the
floor's is what the table and statements allow; the drain's rate over this loop's is the runner's part.
Beside each rate, the local server's CPU a job (`databases.server_cpu`): steadier than the rate on a
machine whose speed moves between rounds. `--without ix_a,ix_b` drops indexes of pending_jobs first, to
tell what each one costs a status change (on PostgreSQL every UPDATE of `status` writes a new row version
and an entry in every index).
"""

from __future__ import annotations

import argparse
import collections
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from pending_jobs.models import Completion
from pending_jobs.store import create_engine, open_store

from . import floor
from .databases import LABELS, drop_indexes, fill, server_cpu, throwaway, usable


def loop(backend: str, jobs: int, batch: int, without: Sequence[str] = ()) -> tuple[float, dict[str, float],
                                                                                   float | None]:
    """(jobs/s, seconds inside each kind of statement, the server's CPU µs a job or None) of claim-then-succeed
    batches over `jobs` jobs."""
    spent: dict[str, float] = collections.defaultdict(float)
    with throwaway(backend, "statements") as url:
        engine = create_engine(url)
        try:
            drop_indexes(engine, backend, without)
            fill(engine, jobs)

            @sa.event.listens_for(engine, "before_cursor_execute")
            def started(conn: sa.Connection, *_: Any) -> None:
                conn.info["statement_started"] = time.perf_counter()

            @sa.event.listens_for(engine, "after_cursor_execute")
            def ended(conn: sa.Connection, cursor: Any, statement: str, *_: Any) -> None:
                spent[statement.split(None, 1)[0].upper()] += time.perf_counter() - conn.info["statement_started"]

            store = open_store(engine)
            done = 0
            server = server_cpu(backend)
            began = time.perf_counter()
            while (claim := store.claim("default", batch, "statements", 300)).jobs:
                store.finish_many([Completion(claim.token, succeeded=[(job.id, None) for job in claim.jobs])])
                done += len(claim.jobs)
            rate = done / (time.perf_counter() - began)
            time.sleep(0.2)  # the server's last writes (WAL, the backend's exit) land in its counters
            after = server_cpu(backend)
            micros = None if server is None or after is None else (after - server) * 1e6 / max(done, 1)
        finally:
            engine.dispose()
    if done != jobs:
        raise RuntimeError(f"{done} of {jobs} jobs finished")
    return rate, dict(spent), micros


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.statements", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="mysql,postgresql")
    p.add_argument("--jobs", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--without", default="", metavar="INDEX,…", help="also loop with these indexes dropped")
    args = p.parse_args(argv)
    without = tuple(name.strip() for name in args.without.split(",") if name.strip())
    backends, failed = usable(args.backends)
    for backend in backends:
        variants = [("store", ())] + ([(f"store without {', '.join(without)}", without)] if without else [])
        for number in range(1, args.rounds + 1):
            with throwaway(backend, "statements_floor") as url:
                _, floor_rate = floor.measure(url, args.jobs, args.batch, 1)
            print(f"{LABELS[backend]} round {number} floor: {floor_rate:,.0f} jobs/s", flush=True)
            for name, dropped in variants:
                rate, spent, micros = loop(backend, args.jobs, args.batch, dropped)
                per_batch = {kind: seconds / (args.jobs / args.batch) * 1000 for kind, seconds in spent.items()}
                print(f"{LABELS[backend]} round {number} {name}: {rate:,.0f} jobs/s = {rate / floor_rate:.2f} x the "
                      f"floor; ms per batch inside {', '.join(f'{k} {v:.2f}' for k, v in sorted(per_batch.items()))}"
                      + ("" if micros is None else f"; server CPU {micros:.1f} µs/job"), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
