"""`python -m benchmarks.scaling`: drain rate with 1, 2, 4 and 8 `pending-jobs run` processes against one
database, and who spends the CPU: the database server or the runners.

The runners start first and poll the empty queue, so their start-up is not measured; the jobs then
arrive in one INSERT, the rate is taken from the first claim to the last completion by the database's
clock, and SIGTERM ends the runs. CPU comes from /proc: the server's processes (MariaDB's one, or
PostgreSQL's postmaster and its children) and the runners'. Prints a Markdown table for docs/scaling.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pending_jobs import Context, enqueue_many, task
from pending_jobs.store import create_engine, dialect_for

from .databases import LABELS, reachable, server_version, throwaway

ROOT = Path(__file__).resolve().parent.parent
LEDGER_DDL = "CREATE TABLE IF NOT EXISTS bench_ledger (job_id BIGINT PRIMARY KEY)"


@task("bench.ledger")
def ledger(payload: dict[str, Any], ctx: Context) -> None:
    """One row through ctx.connection: a transaction of the handler's own per job, as real handlers have."""
    ctx.connection.execute(sa.text("INSERT INTO bench_ledger (job_id) VALUES (:id)"), {"id": ctx.job_id})


@dataclasses.dataclass(frozen=True)
class Point:
    """One runner count's drain."""

    runners: int
    jobs: int
    seconds: float
    database_cpu: float
    runner_cpu: float
    machine_busy: float  # fraction of all cores busy during the drain (anything on the machine)

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds


def _cpu(pid: int) -> float:
    """CPU seconds of a live process to the nanosecond: the run time of its threads, from schedstat.

    /proc/<pid>/stat counts whole clock ticks (10 ms), and PostgreSQL's backends can spend less than one
    on a tiny run: a 60-job run once read 0.0. A thread that ends between two readings drops out of the
    sum; MariaDB keeps its connection threads in its thread cache, so few do.
    """
    nanoseconds = 0
    for thread in Path(f"/proc/{pid}/task").iterdir():
        try:
            nanoseconds += int((thread / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return nanoseconds / 1e9


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def server_pid(engine: sa.Engine) -> int | None:
    """The database server's main process on this machine, from its pid file (None when it is elsewhere)."""
    with engine.connect() as conn:
        if dialect_for(engine).name == "mysql":
            pid_file = Path(str(conn.exec_driver_sql("SELECT @@pid_file").scalar()))
        else:
            pid_file = Path(str(conn.exec_driver_sql("SHOW data_directory").scalar())) / "postmaster.pid"
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _server_cpu(main: int | None) -> dict[int, float]:
    """CPU seconds of the server's process and its children (PostgreSQL's backends), by pid."""
    if main is None:
        return {}
    found = {}
    for pid in (main, *_children(main)):
        try:
            found[pid] = _cpu(pid)
        except OSError:
            continue  # a backend that ended meanwhile
    return found


def _spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two readings; a process born in between counts whole."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def _machine() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def _scalar(engine: sa.Engine, sql: str, **params: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql), params).scalar_one())


def _wait(check: object, timeout: float, what: str) -> None:
    assert callable(check)
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def drain(url: str, runners: int, jobs: int, task_name: str) -> Point:
    """`jobs` jobs drained by `runners` processes that were already polling."""
    engine = create_engine(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENDING_JOBS_")}
    env.update(PYTHONPATH=str(ROOT), PENDING_JOBS_DATABASE_URL=url,
               PENDING_JOBS_TASKS="benchmarks.scaling,benchmarks.noop")
    flags = ["--poll", "0.1", "--lock-file", "none", "--max-runtime", "900", "--lease", "120", "--batch-size", "100",
             "--concurrency", "4"]
    procs = [subprocess.Popen([sys.executable, "-m", "pending_jobs", "run", *flags], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(runners)]
    try:
        pids = [proc.pid for proc in procs]
        _wait(lambda: _scalar(engine, "SELECT COUNT(*) FROM pending_job_runs") == runners, 120, "the runners")
        server = server_pid(engine)
        before = (_server_cpu(server), sum(_cpu(pid) for pid in pids), _machine())
        first = _scalar(engine, "SELECT COUNT(*) FROM pending_jobs") + 1
        enqueue_many(engine, ({"task": task_name} for _ in range(jobs)))
        _wait(lambda: _scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE status = 'succeeded'") == jobs,
              900, "the jobs to be done")
        busy, total = _machine()
        database_cpu = _spent(before[0], _server_cpu(server))
        runner_cpu = sum(_cpu(pid) for pid in pids) - before[1]
        with engine.connect() as conn:
            start, end = conn.execute(sa.text("SELECT MIN(started_at), MAX(finished_at) FROM pending_jobs"
                                              " WHERE id >= :first"), {"first": first}).one()
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            if proc.returncode != 0:
                raise RuntimeError(f"pending-jobs run exited {proc.returncode}: {err.strip()[-800:]}")
        engine.dispose()
    seconds = max(1e-6, float((end - start).total_seconds()))
    machine = (busy - before[2][0]) / max(1, total - before[2][1])
    return Point(runners, jobs, seconds, database_cpu, runner_cpu, machine)


def measure(backend: str, counts: Sequence[int], jobs: int, task_name: str) -> list[Point]:
    """One throwaway database per runner count, so every count starts from the same table."""
    points = []
    for count in counts:
        with throwaway(backend, "scaling") as url:
            engine = create_engine(url)
            with engine.begin() as conn:
                conn.exec_driver_sql(LEDGER_DDL)
            engine.dispose()
            points.append(drain(url, count, jobs, task_name))
    return points


def table(points: Sequence[Point]) -> str:
    """The Markdown table for docs/scaling.md."""
    lines = ["| runner processes | jobs/s | database CPU per 1,000 jobs | runners' CPU per 1,000 jobs |"
             " database busy (of one core) | machine busy (all cores) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for p in points:
        lines.append(f"| {p.runners} | {p.rate:,.0f} | {1000 * p.database_cpu / p.jobs:.2f} s |"
                     f" {1000 * p.runner_cpu / p.jobs:.2f} s | {p.database_cpu / p.seconds:.0%} |"
                     f" {p.machine_busy:.0%} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print one table per database."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="mysql,postgresql", help="comma-separated: mysql, postgresql")
    p.add_argument("--jobs", type=int, default=5_000, help="jobs per drain (default 5,000)")
    p.add_argument("--runners", default="1,2,4,8", help="runner process counts (default 1,2,4,8)")
    p.add_argument("--task", choices=("noop", "ledger"), default="ledger",
                   help="ledger: one ctx.connection write per job (default); noop: the queue alone")
    args = p.parse_args(argv)
    counts = [int(c) for c in args.runners.split(",")]
    task_name = "bench.ledger" if args.task == "ledger" else "bench.noop"
    print(f"`python -m benchmarks.scaling {' '.join(shlex.quote(a) for a in (argv or sys.argv[1:]))}`".rstrip())
    print(f"{os.cpu_count()} cores, load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} before the run\n")
    for backend in args.backends.split(","):
        problem = reachable(backend)
        if problem:
            print(f"{LABELS[backend]}: skipped ({problem})\n")
            continue
        print(f"{server_version(backend)}, {args.jobs:,} {task_name} jobs:\n")
        print(table(measure(backend, counts, args.jobs, task_name)) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
