"""Fault-suite fixtures: a throwaway MariaDB, runner subprocesses, and the invariant every scenario ends with.

The throwaway server has its own data directory, port and socket, so a test may stop, restart or
reconfigure it (read_only, wait_timeout, lock wait timeout) without touching the shared server on 3306.
Runners connect as `runner`, a user without SUPER or READ ONLY ADMIN, so `read_only=1` applies to them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import migrate
from pending_jobs.store import create_engine
from tests import jobs
from tests.conftest import ROOT, free_port

MARIADBD = "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
TERMINAL = ("succeeded", "failed", "cancelled")


def wait_for(predicate: Callable[[], Any], timeout: float = 30, what: str = "condition",
             interval: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy; fail the test (never hang) after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class MariaServer:
    """A MariaDB server of the suite's own, started as root on a free port."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.datadir = base / "data"
        self.socket = base / "mysqld.sock"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def install(self) -> None:
        subprocess.run([INSTALL_DB, "--no-defaults", "--auth-root-authentication-method=normal", "--user=root",
                        f"--datadir={self.datadir}", "--skip-test-db"], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        log = open(self.base / "server.log", "ab")
        self.proc = subprocess.Popen(
            [MARIADBD, "--no-defaults", f"--datadir={self.datadir}", "--user=root", f"--port={self.port}",
             "--bind-address=127.0.0.1", f"--socket={self.socket}", f"--pid-file={self.base / 'mysqld.pid'}",
             "--skip-log-bin", "--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=2",
             "--max-connections=300", "--character-set-server=utf8mb4"],
            stdout=log, stderr=log,
        )
        wait_for(self._answers, 60, "the throwaway MariaDB to accept connections")

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"mariadbd exited with {self.proc.returncode}; see {self.base / 'server.log'}")
        try:
            with self.admin().connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except sa.exc.OperationalError:
            return False

    def stop(self) -> None:
        """A clean shutdown (what a restart does); waits for the process to end."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.proc = None

    def url(self, database: str = "", user: str = "runner") -> str:
        return f"mysql+pymysql://{user}@127.0.0.1:{self.port}/{database}"

    def admin(self, database: str = "") -> sa.Engine:
        """Root, autocommit, no pooling: for SET GLOBAL, KILL and inspection."""
        return sa.create_engine(self.url(database, "root"), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)

    def locker(self, database: str) -> sa.Engine:
        """Root with real transactions (autocommit would drop a row lock at once): for holding locks."""
        return sa.create_engine(self.url(database, "root"), poolclass=sa.pool.NullPool)

    def sql(self, statement: str, **params: Any) -> list[Any]:
        """Run one statement as root and return its rows (empty for statements without any)."""
        with self.admin().connect() as conn:
            result = conn.execute(sa.text(statement), params)
            return list(result) if result.returns_rows else []


@pytest.fixture(scope="session")
def maria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaServer]:
    """The throwaway server, shared by the fault tests of one session."""
    if not (os.path.exists(MARIADBD) and os.path.exists(INSTALL_DB)):
        pytest.skip("mariadbd / mariadb-install-db not installed")
    server = MariaServer(tmp_path_factory.mktemp("mariadb"))
    server.install()
    server.start()
    for host in ("localhost", "127.0.0.1"):
        # Privileges on the test databases only: no SUPER, no READ ONLY ADMIN (read_only binds it).
        server.sql(f"CREATE USER 'runner'@'{host}'")
        server.sql(f"GRANT ALL PRIVILEGES ON `pj\\_%`.* TO 'runner'@'{host}'")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh(maria: MariaServer) -> Iterator[str]:
    """A new database on the throwaway server, migrated, with the ledger table; yields the runner's URL."""
    if maria.proc is None:
        maria.start()  # a failed test may have left it stopped
    maria.sql("SET GLOBAL read_only = 0")
    name = f"pj_{uuid.uuid4().hex[:10]}"
    maria.sql(f"CREATE DATABASE {name}")
    url = maria.url(name)
    engine = create_engine(url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(jobs.LEDGER_DDL)
    engine.dispose()
    try:
        yield url
    finally:
        if maria.proc is None:
            maria.start()
        maria.sql("SET GLOBAL read_only = 0")
        maria.sql(f"DROP DATABASE IF EXISTS {name}")


# -- runners as subprocesses ------------------------------------------------------------------------------


class RunnerProcess:
    """`python -m pending_jobs run ...` in the background, its output kept in files."""

    def __init__(self, url: str, args: list[str], logdir: Path) -> None:
        self.name = uuid.uuid4().hex[:6]
        self.out = logdir / f"runner-{self.name}.out"
        self.err = logdir / f"runner-{self.name}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "pending_jobs", "run", *args],
                                         env=runner_env(url), cwd=ROOT, stdout=out, stderr=err)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no cleanup, no release, leases simply expire."""
        self.proc.kill()
        self.proc.wait(30)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")


def runner_env(url: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PENDING_JOBS_TASKS": "tests.jobs",
            "PENDING_JOBS_DATABASE_URL": url, "PENDING_JOBS_POLL": "0"}


@pytest.fixture
def runners(tmp_path: Path) -> Iterator[Callable[..., RunnerProcess]]:
    """`runners(url, *args)` starts a runner; every runner still alive at the end is killed."""
    started: list[RunnerProcess] = []

    def start(url: str, *args: str) -> RunnerProcess:
        runner = RunnerProcess(url, list(args), tmp_path)
        started.append(runner)
        return runner

    yield start
    for runner in started:
        if runner.proc.poll() is None:
            runner.kill()


def run_once(url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """One `pending-jobs run` to completion."""
    return subprocess.run([sys.executable, "-m", "pending_jobs", "run", *args], env=runner_env(url), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# -- data ---------------------------------------------------------------------------------------------------


def insert_jobs(engine: sa.Engine, task: str, payloads: list[dict[str, Any]], **columns: Any) -> list[int]:
    """Insert rows with plain SQL, as a producer in any language would; returns their ids in order."""
    ids = []
    names = ", ".join(["task", "payload", *columns])
    marks = ", ".join([":task", ":payload", *(f":{c}" for c in columns)])
    with engine.begin() as conn:
        for payload in payloads:
            params = {"task": task, "payload": json.dumps(payload), **columns}
            ids.append(int(conn.execute(sa.text(f"INSERT INTO pending_jobs ({names}) VALUES ({marks})"), params)
                           .lastrowid))
    return ids


def statuses(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT status, COUNT(*) FROM pending_jobs GROUP BY status"))
        return {status: int(n) for status, n in found}


def job(engine: sa.Engine, job_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT * FROM pending_jobs WHERE id = :id"), {"id": job_id}).mappings().one()


def wait_leases_expired(engine: sa.Engine, timeout: float = 30) -> None:
    """Wait, by the database clock, until no running job holds a live lease."""
    sql = sa.text("SELECT COUNT(*) FROM pending_jobs"
                  " WHERE status = 'running' AND lease_expires_at >= UTC_TIMESTAMP(6)")

    def expired() -> bool:
        with engine.connect() as conn:
            return int(conn.execute(sql).scalar_one()) == 0

    wait_for(expired, timeout, "leases to expire")


def drain(url: str, engine: sa.Engine, *args: str, timeout: float = 90, exits: tuple[int, ...] = (0,)) -> None:
    """Faults off: run until every job is terminal (waiting out leases and retry delays).

    `exits`: the exit codes a run may end with (a handler that kills its runner makes it 3)."""
    end = time.monotonic() + timeout
    while True:
        counts = statuses(engine)
        if not counts.get("pending") and not counts.get("running"):
            return
        if time.monotonic() > end:
            pytest.fail(f"jobs not drained after {timeout}s: {counts}")
        wait_leases_expired(engine)
        done = run_once(url, "--lease", "5", *args)
        assert done.returncode in exits, done.stderr
        time.sleep(0.2)


def check_invariant(engine: sa.Engine, effect_tasks: tuple[str, ...] = ("ledger", "stall_first")) -> list[Any]:
    """Every job terminal; attempts within bounds; no running job with an expired lease; each succeeded
    job of a ledger-writing task has exactly one ledger row, and every ledger row belongs to a succeeded job.
    Returns the rows for further checks."""
    with engine.connect() as conn:
        jobs_ = list(conn.execute(sa.text(
            "SELECT id, task, status, attempts, max_attempts, payload, lease_expires_at, last_error"
            " FROM pending_jobs ORDER BY id")).mappings())
        ledger = {int(r[0]): int(r[1]) for r in conn.execute(
            sa.text("SELECT job_id, COUNT(*) FROM ledger GROUP BY job_id"))}
    not_terminal = [(r["id"], r["status"]) for r in jobs_ if r["status"] not in TERMINAL]
    assert not not_terminal, f"jobs not terminal: {not_terminal[:20]}"
    over = [(r["id"], r["attempts"], r["max_attempts"]) for r in jobs_
            if r["attempts"] > max(r["max_attempts"], 1)]
    assert not over, f"attempts over max_attempts: {over[:20]}"
    held = [r["id"] for r in jobs_ if r["lease_expires_at"] is not None]
    assert not held, f"terminal jobs still holding a lease: {held[:20]}"
    by_id = {r["id"]: r for r in jobs_}
    for row in jobs_:
        if row["task"] not in effect_tasks:
            continue
        writes = payload_of(row).get("ledger", row["task"] == "ledger")
        expected = 1 if (row["status"] == "succeeded" and writes) else 0
        assert ledger.get(row["id"], 0) == expected, f"job {row['id']} ({row['status']}): {ledger.get(row['id'])} rows"
    strays = [job_id for job_id in ledger if job_id not in by_id]
    assert not strays, f"ledger rows for unknown jobs: {strays[:20]}"
    return jobs_


def payload_of(row: Any) -> dict[str, Any]:
    value = row["payload"]
    parsed = json.loads(value) if isinstance(value, str) else value
    return parsed if isinstance(parsed, dict) else {}


@pytest.fixture
def engine_on(request: pytest.FixtureRequest) -> Iterator[Callable[[str], sa.Engine]]:
    """`engine_on(url)`: an engine the test inspects with (disposed afterwards)."""
    made: list[sa.Engine] = []

    def make(url: str) -> sa.Engine:
        engine = create_engine(url, pool_size=4)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.dispose()
