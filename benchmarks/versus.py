"""`python -m benchmarks.versus OTHER_CHECKOUT`: this checkout's drain against another checkout's, with the
raw-SQL floor, in one invocation.

How "no slower than before" is measured: per round and database, for each checkout a fresh database
migrated by that checkout's own `pending-jobs migrate`, N no-op jobs inserted server-side (the same SQL
for both), then one `pending-jobs run` (poll 0) from that checkout's own virtualenv (`.venv` inside it:
run `make install` there first); its rate by the database clock (first started_at to last
finished_at) and its CPU per job (wait4). Then the floor (benchmarks/floor.py, batch 100, one process)
in a fresh database. Every other round runs the drains in reverse order; the best of each is reported,
and the median of the per-round ratios (each round's drains ran back to back, on the same machine
state). Both checkouts need `benchmarks/noop.py` (the no-op task, `bench.noop`). `--without ix_a,ix_b`
adds a third drain of this checkout on its schema less those indexes, to tell what a newer index costs
the drain (with its per-round ratios too).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa

from pending_jobs.store import create_engine

from .databases import LABELS, drop_indexes, fill, throwaway, usable
from .measures import raw_floor

ROOT = Path(__file__).resolve().parent.parent


def _env(checkout: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENDING_JOBS_")}
    env.update(PYTHONPATH=str(checkout), PENDING_JOBS_DATABASE_URL=url, PENDING_JOBS_TASKS="benchmarks.noop",
               PENDING_JOBS_MAX_RUNTIME="900", PENDING_JOBS_POLL="0", PENDING_JOBS_LOCK_FILE="none")
    return env


def drain(backend: str, checkout: Path, jobs: int, without: Sequence[str] = ()) -> tuple[float, float]:
    """(jobs/s by the database clock, CPU µs per job) of one `pending-jobs run` of `checkout`, on its
    schema less the indexes named in `without` (what each one costs the drain)."""
    command = str(checkout / ".venv" / "bin" / "pending-jobs")
    with throwaway(backend, "versus", migrated=False) as url:  # the checkout's own migrations make it
        env = _env(checkout, url)
        subprocess.run([command, "migrate"], env=env, cwd=checkout, check=True, capture_output=True)
        engine = create_engine(url)
        try:
            drop_indexes(engine, backend, without)
            fill(engine, jobs)
            proc = subprocess.Popen([command, "run"], env=env, cwd=checkout, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
            _, status, usage = os.wait4(proc.pid, 0)
            err = proc.stderr.read().decode() if proc.stderr else ""
            if os.waitstatus_to_exitcode(status) != 0:
                raise RuntimeError(f"{checkout}: pending-jobs run failed: {err[-800:]}")
            with engine.connect() as conn:
                done, first, last = conn.execute(sa.text(
                    "SELECT COUNT(*), MIN(started_at), MAX(finished_at) FROM pending_jobs "
                    "WHERE status = 'succeeded'")).one()
        finally:
            engine.dispose()
    if done != jobs:
        raise RuntimeError(f"{checkout}: {done} of {jobs} jobs succeeded")
    return jobs / max(1e-6, (last - first).total_seconds()), (usage.ru_utime + usage.ru_stime) / jobs * 1e6


def _paired(these: Sequence[float], others: Sequence[float]) -> list[float]:
    """Each round's ratio: its two drains ran back to back, on the same machine state."""
    return [this / other for this, other in zip(these, others, strict=True)]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.versus", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("other", type=Path, help="the other checkout (with its own .venv)")
    p.add_argument("--backends", default="mysql,postgresql")
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--without", default="", metavar="INDEX,…",
                   help="also drain this checkout with these indexes of pending_jobs dropped (what they cost)")
    args = p.parse_args(argv)
    checkouts = {"other": args.other.resolve(), "this": ROOT}
    without = [name.strip() for name in args.without.split(",") if name.strip()]
    variants = [(name, checkout, ()) for name, checkout in checkouts.items()]
    if without:
        variants.append(("this-without", ROOT, tuple(without)))
    backends, failed = usable(args.backends)
    for backend in backends:
        best = {name: 0.0 for name, _, _ in variants} | {"floor": 0.0}
        cpu: dict[str, list[float]] = {name: [] for name, _, _ in variants}
        rates: dict[str, list[float]] = {name: [] for name, _, _ in variants}
        for number in range(1, args.rounds + 1):
            # Every other round runs the drains in reverse order: whatever the drain before leaves behind
            # (the server's purge, a warm or a cold cache) falls on each checkout alike.
            for name, checkout, dropped in variants if number % 2 else variants[::-1]:
                started = time.perf_counter()
                rate, micros = drain(backend, checkout, args.jobs, dropped)
                best[name] = max(best[name], rate)
                rates[name].append(rate)
                cpu[name].append(micros)
                print(f"{LABELS[backend]} round {number} {name}: {rate:,.0f} jobs/s (database clock), "
                      f"CPU {micros:.1f} µs/job, {time.perf_counter() - started:.1f} s in all", flush=True)
            floor = raw_floor(backend, args.jobs, 1) or 0.0
            best["floor"] = max(best["floor"], floor)
            print(f"{LABELS[backend]} round {number} floor: {floor:,.0f} jobs/s", flush=True)
        share = {name: best[name] / best["floor"] if best["floor"] else 0.0 for name in checkouts}
        print(f"{LABELS[backend]}: best of {args.rounds}: other {best['other']:,.0f}/s = {share['other']:.0%} of "
              f"the floor, this {best['this']:,.0f}/s = {share['this']:.0%}, floor {best['floor']:,.0f}/s; "
              f"this / other = {best['this'] / best['other']:.2f}; CPU µs/job other "
              f"{', '.join(f'{c:.1f}' for c in sorted(cpu['other']))}, this "
              f"{', '.join(f'{c:.1f}' for c in sorted(cpu['this']))}", flush=True)
        # Rounds run the checkouts back to back, so one round's ratio shares that moment's machine: the
        # median of the per-round ratios is steadier than a ratio of two best-ofs picked from different rounds.
        paired = _paired(rates["this"], rates["other"])
        print(f"{LABELS[backend]}: this / other per round {', '.join(f'{r:.2f}' for r in paired)}; "
              f"median {statistics.median(paired):.2f}", flush=True)
        if without:
            paired = _paired(rates["this-without"], rates["other"])
            print(f"{LABELS[backend]}: without {', '.join(without)}: {best['this-without']:,.0f}/s = "
                  f"{best['this-without'] / best['floor']:.0%} of the floor; this-without / other = "
                  f"{best['this-without'] / best['other']:.2f}; per round {', '.join(f'{r:.2f}' for r in paired)}, "
                  f"median {statistics.median(paired):.2f}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
