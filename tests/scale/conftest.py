"""Scale-suite fixtures: a Galera cluster, PostgreSQL primary + standby, runner hosts in network namespaces,
runner subprocesses, the exactly-once check, and the figures each scenario reports.

Every server and namespace is started by the suite and removed by it, also when a test fails.
`PENDING_JOBS_SOAK=1` runs the scenarios with ten times the jobs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue_many, migrate
from pending_jobs.schema import db_now, pending_jobs
from pending_jobs.store import create_engine
from tests import jobs
from tests.conftest import ROOT
from tests.faults.conftest import INSTALL_DB, MARIADBD, TERMINAL, wait_for

from . import netlab
from .servers import GALERA, PG_BIN, GaleraCluster, NetMaria, PgPair

SOAK = os.environ.get("PENDING_JOBS_SOAK") == "1"
FIGURES: list[str] = []


def scaled(jobs_: int) -> int:
    """A scenario's job count: small for CI, ten times that with PENDING_JOBS_SOAK=1."""
    return jobs_ * 10 if SOAK else jobs_


def report(line: str) -> None:
    """A figure for the closing summary of the run (timing figures are printed, never asserted)."""
    FIGURES.append(line)
    print(line)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("scale figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


def require_tools(*paths: str) -> None:
    """Skip (fail under CI=true) when a server program this scenario starts is not installed."""
    missing = [path for path in paths if not (os.path.exists(path) or shutil.which(path))]
    if missing:
        reason = f"not installed: {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


# -- servers --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def galera() -> Iterator[GaleraCluster]:
    """Three Galera nodes on 127.0.0.1, for the tests of one module."""
    require_tools(MARIADBD, INSTALL_DB, GALERA, "rsync")
    cluster = GaleraCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def galera_db(galera: GaleraCluster) -> Iterator[str]:
    """A new migrated database with the ledger table on the cluster; yields its name."""
    for node in galera.nodes:
        if node.proc is None:
            node.start()  # a test that failed midway may have left one stopped
    name = f"pj_{uuid.uuid4().hex[:10]}"
    first = galera.nodes[0]
    first.sql(f"CREATE DATABASE {name}")
    engine = create_engine(first.url(name))
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(jobs.LEDGER_DDL)
    engine.dispose()
    try:
        yield name
    finally:
        galera.alive()[0].sql(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
def pg_pair(request: pytest.FixtureRequest) -> Iterator[PgPair]:
    """A PostgreSQL primary and a streaming standby (synchronous when the test is parametrized so)."""
    require_tools(str(PG_BIN / "postgres"), str(PG_BIN / "pg_basebackup"), "runuser")
    pair = PgPair(synchronous=bool(getattr(request, "param", False)))
    try:
        pair.start()
        pair.primary.sql("CREATE DATABASE pj_failover OWNER runner")
        engine = create_engine(pair.primary.url("pj_failover", "runner"))
        migrate.upgrade(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql(jobs.LEDGER_DDL)
        engine.dispose()
        yield pair
    finally:
        pair.stop()


@pytest.fixture
def lab() -> Iterator[netlab.NetLab]:
    """A virtual network for runner hosts; skipped, with the reason, where namespaces cannot be made."""
    reason = netlab.unavailable()
    if reason:
        pytest.skip(f"needs network namespaces: {reason}")
    network = netlab.NetLab()
    try:
        yield network
    finally:
        network.close()
        wait_for(lambda: not network.leftovers(), 10, f"namespaces and links to go: {network.leftovers()}")


@pytest.fixture
def net_maria(lab: netlab.NetLab) -> Iterator[NetMaria]:
    """A MariaDB listening only on the virtual network's database address."""
    require_tools(MARIADBD, INSTALL_DB)
    server = NetMaria(lab.address)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def new_database(server: NetMaria) -> str:
    """A new migrated database with the ledger table on `server`; returns its name."""
    name = f"pj_{uuid.uuid4().hex[:10]}"
    server.sql(f"CREATE DATABASE {name}")
    engine = create_engine(server.url(name))
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(jobs.LEDGER_DDL)
    engine.dispose()
    return name


# -- runners --------------------------------------------------------------------------------------------


class RunnerProcess:
    """`python -m pending_jobs run ARGS` in the background, in a network namespace when given one."""

    def __init__(self, url: str, args: list[str], logdir: Path, runlog: Path | None, netns: str | None) -> None:
        self.name = uuid.uuid4().hex[:6]
        self.netns = netns
        self.err = logdir / f"runner-{self.name}.err"
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(runner_command(args, netns), env=runner_env(url, runlog), cwd=ROOT,
                                         stdout=subprocess.DEVNULL, stderr=err)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")


def runner_command(args: list[str], netns: str | None) -> list[str]:
    command = [sys.executable, "-m", "pending_jobs", "run", *args]
    return ["ip", "netns", "exec", netns, *command] if netns else command


def runner_env(url: str, runlog: Path | None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PENDING_JOBS_TASKS": "tests.jobs",
           "PENDING_JOBS_POLL": "0",
           # Each runner plays a host of its own, but they share this machine's temp directory, where
           # the per-host serving lock lives: only one would serve. Real hosts each have their own.
           "PENDING_JOBS_LOCK_FILE": "none",
           "PENDING_JOBS_DATABASE_URL": url}
    if runlog is not None:
        env[jobs.RUNLOG_ENV] = str(runlog)
    return env


@pytest.fixture
def runlog(tmp_path: Path) -> Path:
    """The file every execution of `scale_ledger` appends "job_id pid" to."""
    path = tmp_path / "runlog"
    path.touch()
    return path


@pytest.fixture
def runners(tmp_path: Path, runlog: Path) -> Iterator[Callable[..., RunnerProcess]]:
    """`runners(url, *args, netns=None)` starts a runner; every one still alive at the end is killed."""
    started: list[RunnerProcess] = []

    def start(url: str, *args: str, netns: str | None = None) -> RunnerProcess:
        runner = RunnerProcess(url, list(args), tmp_path, runlog, netns)
        started.append(runner)
        return runner

    yield start
    for runner in started:
        if runner.proc.poll() is None:
            runner.kill()


def run_once(url: str, runlog: Path, *args: str, netns: str | None = None,
             timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """One `pending-jobs run` to completion (a cron tick)."""
    return subprocess.run(runner_command(list(args), netns), env=runner_env(url, runlog), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# -- data and checks ------------------------------------------------------------------------------------


def insert_jobs(engine: sa.Engine, count: int, priority: int = 0, **payload: Any) -> list[int]:
    """`count` scale_ledger jobs with this payload, through the Python producer API; their ids."""
    return enqueue_many(engine, [{"task": "scale_ledger", "payload": payload, "priority": priority}
                                 for _ in range(count)])


def statuses(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT status, COUNT(*) FROM pending_jobs GROUP BY status"))
        return {status: int(n) for status, n in found}


def drain_seconds(engine: sa.Engine, ids: list[int]) -> float:
    """Seconds from the first claim to the last completion of these jobs (ids in order), by the database
    clock: the drain itself, without the runners' start-up."""
    with engine.connect() as conn:
        first, last = conn.execute(sa.text("SELECT MIN(started_at), MAX(finished_at) FROM pending_jobs"
                                           " WHERE id BETWEEN :lo AND :hi"), {"lo": ids[0], "hi": ids[-1]}).one()
    return max(1e-6, float((last - first).total_seconds()))


def live_leases(engine: sa.Engine) -> int:
    """Running jobs whose lease has not expired yet, by the database clock."""
    J = pending_jobs
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).where(J.c.status == "running",
                                                                 J.c.lease_expires_at >= db_now())).scalar_one())


def cron_until_done(url: str, engine: sa.Engine, runlog: Path, *args: str, timeout: float = 120) -> int:
    """Faults over: cron ticks (waiting out leases between them) until every job is terminal; returns ticks."""
    end = time.monotonic() + timeout
    ticks = 0
    while True:
        counts = statuses(engine)
        if not counts.get("pending") and not counts.get("running"):
            return ticks
        if time.monotonic() > end:
            pytest.fail(f"jobs not drained after {timeout}s: {counts}")
        wait_for(lambda: live_leases(engine) == 0, 60, "leases to expire", interval=0.25)
        done = run_once(url, runlog, "--poll", "0", "--lease", "5", "--batch-size", "20", *args)
        assert done.returncode == 0, done.stderr
        ticks += 1
        time.sleep(0.5)  # retries may be due only later: cron would wait a minute


def executions(runlog: Path) -> Counter[int]:
    """How many times each job's handler ran (from the run log)."""
    return Counter(int(line.split()[0]) for line in runlog.read_text().splitlines() if line.strip())


def check_exactly_once(engine: sa.Engine, runlog: Path, lost_claims: frozenset[int] = frozenset()) -> dict[str, Any]:
    """Every job succeeded; its ledger row exists exactly once (ctx.connection committed once); every
    execution of its handler was counted as an attempt (none ran unclaimed), except that a job in
    `lost_claims` may have run once more: a claim lost with an asynchronous primary took its attempt with it."""
    with engine.connect() as conn:
        rows = list(conn.execute(sa.text(
            "SELECT id, status, attempts, lease_expires_at, last_error FROM pending_jobs ORDER BY id")).mappings())
        ledger = Counter(int(r[0]) for r in conn.execute(sa.text("SELECT job_id FROM ledger")))
    ran = executions(runlog)
    not_done = [(r["id"], r["status"], r["last_error"]) for r in rows if r["status"] != "succeeded"]
    assert not not_done, f"jobs not succeeded: {not_done[:10]}"
    assert all(r["status"] in TERMINAL and r["lease_expires_at"] is None for r in rows)
    ids = {int(r["id"]) for r in rows}
    wrong = {job_id: ledger.get(job_id, 0) for job_id in ids if ledger.get(job_id, 0) != 1}
    assert not wrong, f"ledger rows per job not 1: {dict(list(wrong.items())[:10])}"
    assert set(ledger) <= ids, f"ledger rows of unknown jobs: {sorted(set(ledger) - ids)[:10]}"
    unclaimed = [(r["id"], ran[int(r["id"])], r["attempts"]) for r in rows
                 if ran[int(r["id"])] > r["attempts"] + (1 if int(r["id"]) in lost_claims else 0)]
    assert not unclaimed, f"handler ran more often than attempts were counted (job, runs, attempts): {unclaimed[:10]}"
    never = [r["id"] for r in rows if ran[int(r["id"])] == 0]
    assert not never, f"succeeded without its handler running: {never[:10]}"
    return {
        "jobs": len(rows),
        "ran_twice": sorted(job_id for job_id, n in ran.items() if n > 1),
        "attempts_over_1": sum(1 for r in rows if r["attempts"] > 1),
        "ledger_rows": sum(ledger.values()),
    }


def pid_notes(engine: sa.Engine) -> dict[int, str]:
    """job id -> pid of the process whose ledger write committed."""
    with engine.connect() as conn:
        return {int(job_id): str(note) for job_id, note in conn.execute(sa.text("SELECT job_id, note FROM ledger"))}
