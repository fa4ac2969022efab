"""`python -m benchmarks.flow`: what limits cost.

1. Where no limit binds, a drain stays within 5 % of the same drain without limits: rounds of
   `pending-jobs run` on N no-op jobs with no limit, with a task limit on another task (every claim takes
   the limited path, nothing binds) and with a queue cap far above what runs, every other round in
   reverse order; the best of each, and the median of each round's ratio to that round's drain without
   limits (its drains ran back to back, on the same machine state). `--only drain` runs this part alone.
2. With a per-key limit of 2 binding on 20 keys: jobs/s of one run. Claims of 100 alternating in one
   process (plain, each CONFIGS entry, the keys binding): their time, and this process's CPU per claim,
   the steadier measure of what a limit that does not bind adds to the runner. `--only claims` alone.
3. At 1,000,000 rows: EXPLAIN of the limited claim's statements (candidates, running count, first due
   jobs of a key) shows them index-served, without a filesort (MariaDB) or a Sort node (PostgreSQL).
4. A rate limit of 50/s shared by 4 runners for 30 s: the rate achieved, printed beside the limit (the
   target: within 10 % of it), and the busiest 1-second window (the ceiling: the limit plus the burst).
   `--only rate` runs this part alone.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pending_jobs import enqueue_many
from pending_jobs.limits import parse, parse_rate
from pending_jobs.models import utc
from pending_jobs.store import LimitedStore, create_engine, open_store
from pending_jobs.store.limited import _candidates

from .databases import LABELS, fill, reachable, throwaway
from .measures import ROOT, _env, _finish, _runner_command, _scalar, _seconds_between, _start_run

CONFIGS = {
    "no limits": "",
    "task limit elsewhere": "[task.other]\nconcurrency_limit = 2\n",
    "queue cap not reached": "[queue.default]\nmax_running = 100000\n",
}
KEYS = 20
KEY_LIMIT = 2


def drain(backend: str, jobs: int, config: str, keyed: bool = False, concurrency: int = 4) -> float:
    """Jobs/s of one `pending-jobs run` draining `jobs` no-op jobs under `config` (database clock)."""
    with throwaway(backend, "flow") as url, tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "limits.toml"
        path.write_text(config)
        engine = create_engine(url)
        try:
            enqueue_many(engine, ({"task": "bench.noop", "concurrency_key": f"k{n % KEYS}" if keyed else None}
                                  for n in range(jobs)))
            _finish(_start_run(url, "--config", str(path), "--concurrency", str(concurrency)))
            done = int(_scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status = 'succeeded'"))
            if done != jobs:
                raise RuntimeError(f"drain left {jobs - done} of {jobs} jobs unfinished")
            return jobs / _seconds_between(engine, "started_at", "finished_at", "status = 'succeeded'")
        finally:
            engine.dispose()


def claim_times(backend: str, rounds: int = 40) -> dict[str, tuple[float, float]]:
    """Median seconds of a claim of 100 (outcomes recorded between claims), on the clock and of this process's
    CPU (the runner's side of a claim: driver and Python, not the server's), by the plain claim and by the
    limited claim under each CONFIGS entry (nothing binds), and with 20 keys binding at 2 (admits 40)."""
    with throwaway(backend, "flowclaim") as url:
        engine = create_engine(url)
        try:
            enqueue_many(engine, ({"task": "bench.noop"} for _ in range(20_000)))
            enqueue_many(engine, ({"task": "bench.keyed", "queue": "keyed", "concurrency_key": f"k{n % KEYS}"}
                                  for n in range(10_000)))
            stores = {
                "no limits": open_store(engine),
                "task limit elsewhere": LimitedStore(open_store(engine),
                                                     parse({}, {"other": {"concurrency_limit": 2}})),
                "queue cap not reached": LimitedStore(open_store(engine),
                                                      parse({"default": {"max_running": 100000}}, {})),
            }
            binding = LimitedStore(open_store(engine), parse({}, {"bench.keyed": {"concurrency_limit": KEY_LIMIT}}))
            times: dict[str, list[float]] = {name: [] for name in [*stores, "keys binding"]}
            cpu: dict[str, list[float]] = {name: [] for name in times}
            for _ in range(rounds):  # alternating, so a moment of load costs each the same
                for name, store in [*stores.items(), ("keys binding", binding)]:
                    queue = "keyed" if name == "keys binding" else "default"
                    started, used = time.perf_counter(), time.process_time()
                    claim = store.claim(queue, 100, "bench", 300)
                    cpu[name].append(time.process_time() - used)
                    if name == "keys binding" and len(claim.jobs) != KEY_LIMIT * KEYS:
                        raise RuntimeError(f"the binding claim admitted {len(claim.jobs)} jobs")
                    times[name].append(time.perf_counter() - started)
                    store.finish_many([_succeeded(claim)])
            return {name: (statistics.median(values[3:]), statistics.median(cpu[name][3:]))
                    for name, values in times.items()}
        finally:
            engine.dispose()


def rate_across_runners(backend: str, limit: str, runners: int, seconds: int) -> tuple[int, float, float, int]:
    """Jobs started, over how many seconds, the rate achieved and the busiest 1-second window, of `runners`
    runs (2 threads each, as the flow test's) sharing the queue's `rate_limit = limit` for `seconds`."""
    rate = parse_rate(limit)
    with throwaway(backend, "flowrate") as url, tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "limits.toml"
        path.write_text(f'[queue.default]\nrate_limit = "{limit}"\n')
        engine = create_engine(url)
        try:  # more jobs than the runs may start, so the rate, not the supply, is what binds
            enqueue_many(engine, ({"task": "bench.noop"} for _ in range(int(rate.per_second * seconds * 1.5) + 100)))
            env = _env(url) | {"PENDING_JOBS_POLL": "0.2"}  # serving, as cron's runs do (not draining)
            runs = [subprocess.Popen([*_runner_command(), "run", "--config", str(path), "--concurrency", "2",
                                      "--max-runtime", str(seconds)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True) for _ in range(runners)]
            for run in runs:
                _finish(run)
            with engine.connect() as conn:  # every start, by the database clock
                starts = sorted(_epoch(value) for value in conn.execute(sa.text(
                    "SELECT started_at FROM pending_jobs WHERE started_at IS NOT NULL")).scalars())
        finally:
            engine.dispose()
    busiest, right = 0, 0
    for left, start in enumerate(starts):
        while right < len(starts) and starts[right] < start + 1.0:
            right += 1
        busiest = max(busiest, right - left)
    span = starts[-1] - starts[0] if len(starts) > 1 else 0.0
    return len(starts), span, (len(starts) - 1) / span if span else 0.0, busiest


def _epoch(value: Any) -> float:
    moment = utc(value)
    assert moment is not None
    return moment.timestamp()


def _succeeded(claim: Any) -> Any:
    from pending_jobs.models import Completion

    return Completion(claim.token, succeeded=[(job.id, None) for job in claim.jobs])


def explain(backend: str, rows: int) -> list[tuple[str, str, bool]]:
    """(statement, plan summary, index-served without a sort) of the limited claim at `rows` pending rows."""
    with throwaway(backend, "flowexplain") as url:
        engine = create_engine(url)
        try:
            fill(engine, rows)
            with engine.begin() as conn:  # a key on every row: the worst case for the per-key reads
                key = "CONCAT('k', id % 20)" if backend == "mysql" else "'k' || (id % 20)"
                conn.execute(sa.text(f"UPDATE pending_jobs SET concurrency_key = {key}"))
            fill(engine, 0)  # fresh statistics
            store = LimitedStore(open_store(engine), parse({}, {"bench.noop": {"concurrency_limit": KEY_LIMIT}}))
            scope = store.limits.scopes("default", "bench.noop", "k7")[0]
            statements: dict[str, Any] = {
                "candidates": _candidates("default", {scope}, 100),
                "running per key": sa.text(
                    "SELECT queue, task, concurrency_key FROM pending_jobs WHERE concurrency_key IS NOT NULL"
                    " AND concurrency_key IN ('k1', 'k2') AND status = 'running'"),
                "first due of a key": sa.text(
                    "SELECT id FROM pending_jobs WHERE concurrency_key = 'k7' AND status = 'pending' AND task = "
                    "'bench.noop' ORDER BY priority DESC, run_at, id LIMIT 2"),
            }
            found = []
            with engine.connect() as conn:
                for name, stmt in statements.items():
                    text = stmt.text if isinstance(stmt, sa.TextClause) else str(
                        stmt.compile(engine, compile_kwargs={"literal_binds": True}))
                    result = conn.execute(sa.text(f"EXPLAIN {text}")).mappings().all()
                    if backend == "mysql":  # the jobs table's rows (the paused-queues lookup is its own)
                        plan = [f"{r['table']}: type {r['type']}, key {r['key']}, {r['Extra']}" for r in result
                                if r["table"] == "pending_jobs"]
                        sorted_ = any("filesort" in line.lower() for line in plan)
                        scanned = any("type ALL" in line for line in plan)
                    else:
                        plan = [str(next(iter(r.values()))) for r in result]
                        sorted_ = any(line.strip().startswith("->  Sort") or line.startswith("Sort") for line in plan)
                        scanned = any("Seq Scan on pending_jobs " in line + " " for line in plan)
                    found.append((name, " | ".join(plan)[:400], not sorted_ and not scanned))
            return found
        finally:
            engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.flow", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="mysql,postgresql")
    p.add_argument("--jobs", type=int, default=20_000, help="jobs per drain (default 20,000)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds, best of each (default 3)")
    p.add_argument("--explain-rows", type=int, default=1_000_000, help="pending rows for EXPLAIN (default 1M)")
    p.add_argument("--only", choices=("all", "drain", "claims", "rate"), default="all",
                   help="drain: part 1 alone; claims: the claim times of part 2 alone; rate: part 4 alone")
    p.add_argument("--claim-rounds", type=int, default=40, help="claims of each kind, alternating (default 40)")
    p.add_argument("--rate", default="50/s", help="the rate limit of part 4 (default 50/s)")
    p.add_argument("--rate-runners", type=int, default=4, help="runners sharing it (default 4)")
    p.add_argument("--rate-seconds", type=int, default=30, help="for how long (default 30)")
    args = p.parse_args(argv)
    failed = False
    for backend in args.backends.split(","):
        problem = reachable(backend)
        if problem:
            print(f"{LABELS[backend]}: not reachable ({problem})")
            failed = True
            continue
        if args.only == "rate":
            failed = not _print_rate(backend, args) or failed
            continue
        if args.only == "claims":
            print(f"\n{LABELS[backend]}:")
            _print_claims(claim_times(backend, args.claim_rounds), args.claim_rounds)
            continue
        _print_drains(backend, args)
        if args.only == "drain":
            continue
        binding = max(drain(backend, args.jobs // 4, f'[task."bench.noop"]\nconcurrency_limit = {KEY_LIMIT}\n',
                            keyed=True, concurrency=KEY_LIMIT * KEYS) for _ in range(args.rounds))
        claims = claim_times(backend, args.claim_rounds)
        print(f"  per-key limit {KEY_LIMIT} binding on {KEYS} keys ({args.jobs // 4} jobs, --concurrency "
              f"{KEY_LIMIT * KEYS}): {binding:,.0f} jobs/s")
        _print_claims(claims, args.claim_rounds)
        for name, plan, served in explain(backend, args.explain_rows):
            failed = failed or not served
            verdict = "index-served, no sort" if served else "SORT/SCAN"
            print(f"  EXPLAIN at {args.explain_rows:,} rows, {name}: {verdict}"
                  f"\n      {plan}")
        failed = not _print_rate(backend, args) or failed
    return 1 if failed else 0


def _print_claims(claims: dict[str, tuple[float, float]], rounds: int) -> None:
    print(f"  claim of 100, median of {rounds - 3} alternating (the keys binding one in its own queue): time, and the "
          "runner's CPU (this process: driver and Python)")
    base_wall, base_cpu = claims["no limits"]
    for name, (wall, cpu) in claims.items():
        print(f"    {name:24} {wall * 1000:7.2f} ms {wall / base_wall:7.1%}   CPU {cpu * 1000:5.2f} ms "
              f"({(cpu - base_cpu) * 1000:+.2f})" + (f"  (admits {KEY_LIMIT * KEYS} of 100)"
                                                    if name == "keys binding" else ""))


def _print_drains(backend: str, args: argparse.Namespace) -> None:
    """Part 1 on one backend: each configuration's best drain, and its per-round ratios to no limits."""
    rates: dict[str, list[float]] = {name: [] for name in CONFIGS}
    configs = list(CONFIGS.items())
    for number in range(args.rounds):
        # Reversed every other round: what a drain leaves behind falls on each configuration alike.
        for name, config in configs if number % 2 == 0 else configs[::-1]:
            rates[name].append(drain(backend, args.jobs, config))
    best = {name: max(found) for name, found in rates.items()}
    print(f"\n{LABELS[backend]}: drain of {args.jobs} no-op jobs, best of {args.rounds} alternating rounds")
    for name, rate in best.items():
        paired = [this / base for this, base in zip(rates[name], rates["no limits"], strict=True)]
        rounds = "" if name == "no limits" else (
            f"; per round {', '.join(f'{r:.1%}' for r in paired)}, median {statistics.median(paired):.1%}")
        print(f"  {name:24} {rate:9,.0f} jobs/s  {rate / best['no limits']:6.1%} of no limits{rounds}")


def _print_rate(backend: str, args: argparse.Namespace) -> bool:
    """Part 4 on one backend; whether the rate achieved is within 10 % of the limit and under the ceiling."""
    rate = parse_rate(args.rate)
    jobs, span, achieved, busiest = rate_across_runners(backend, args.rate, args.rate_runners, args.rate_seconds)
    ok = achieved >= 0.9 * rate.per_second and busiest <= rate.per_second + rate.burst
    print(f"  {LABELS[backend]}: rate limit {args.rate} across {args.rate_runners} runners (--concurrency 2) for "
          f"{args.rate_seconds} s: {jobs:,} jobs started over {span:.1f} s = {achieved:.1f}/s, "
          f"{achieved / rate.per_second:.1%} of the limit {rate.per_second:g}/s (target: within 10 %); busiest "
          f"1-second window {busiest} (ceiling {rate.per_second + rate.burst:g}){'' if ok else '  OFF TARGET'}")
    return ok


if __name__ == "__main__":
    sys.exit(main())
