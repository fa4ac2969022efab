"""Fixtures: a fresh, migrated database per test on SQLite, MariaDB and PostgreSQL.

Select backends with PENDING_JOBS_TEST_BACKENDS (default: sqlite,mysql,postgresql). A backend that
cannot be reached is skipped locally and fails the run when CI=true.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import config, migrate
from pending_jobs.models import Completion, Finished, RunReport
from pending_jobs.run import run_once
from pending_jobs.store import Store, create_engine, open_store

from . import jobs

ROOT = Path(__file__).resolve().parent.parent
MYSQL_ADMIN = os.environ.get("PENDING_JOBS_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")
PG_ADMIN = os.environ.get("PENDING_JOBS_TEST_POSTGRESQL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = [b.strip() for b in os.environ.get("PENDING_JOBS_TEST_BACKENDS", "sqlite,mysql,postgresql").split(",")]
ALL = ["sqlite", "mysql", "postgresql"]
SERVERS = ["mysql", "postgresql"]


FIRST_PORT = 20_000  # free_port() picks from here to the kernel's ephemeral range
_GIVEN: set[int] = set()  # ports free_port() handed out: a test may take several before its servers bind them


def free_port() -> int:
    """A loopback TCP port nothing listens on now, for a server a test starts (once the test has it).

    Not a port the kernel hands out (bind to port 0, or any outgoing connection's own end): the suite opens
    hundreds of database connections, and one of them could take such a port between this check and the
    server's bind. Below the ephemeral range only a test's choice takes a port; tests run one at a time, and
    none is handed out twice.
    """
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32_768  # Linux's default
    ports = [port for port in range(FIRST_PORT, max(ephemeral, FIRST_PORT + 1_000)) if port not in _GIVEN]
    for port in random.sample(ports, min(200, len(ports))):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))  # no SO_REUSEADDR: a port in TIME_WAIT is passed over too
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise RuntimeError(f"no free loopback port found between {FIRST_PORT} and {ephemeral}")


def _admin(backend: str) -> sa.Engine:
    return sa.create_engine(MYSQL_ADMIN if backend == "mysql" else PG_ADMIN, isolation_level="AUTOCOMMIT",
                            poolclass=sa.pool.NullPool)


_reachable: dict[str, str | None] = {}


def _require(backend: str) -> None:
    if backend not in BACKENDS:
        pytest.skip(f"{backend} not in PENDING_JOBS_TEST_BACKENDS")
    if backend == "sqlite":
        return
    if backend not in _reachable:
        try:
            with _admin(backend).connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            _reachable[backend] = None
        except Exception as error:
            _reachable[backend] = f"{backend} unreachable: {error}"
    reason = _reachable[backend]
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def create_database(backend: str, tmp_path: Path) -> tuple[str, Any]:
    """A new empty database; returns its URL and a function that drops it."""
    _require(backend)
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite3'}", lambda: None
    name = f"pj_{uuid.uuid4().hex[:12]}"
    admin = _admin(backend)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = sa.make_url(MYSQL_ADMIN if backend == "mysql" else PG_ADMIN).set(database=name)

    def drop() -> None:
        with admin.connect() as conn:
            force = " WITH (FORCE)" if backend == "postgresql" else ""
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
        admin.dispose()

    return url.render_as_string(hide_password=False), drop


@pytest.fixture(params=ALL)
def backend(request: pytest.FixtureRequest) -> str:
    """Each test that uses it runs once per database."""
    return str(request.param)


@pytest.fixture
def empty_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """URL of a new, empty database (not migrated)."""
    url, drop = create_database(backend, tmp_path)
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def db_url(empty_url: str) -> str:
    """URL of a new database migrated to head."""
    engine = create_engine(empty_url)
    migrate.upgrade(engine)
    engine.dispose()
    return empty_url


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """An engine on the test database, set up as the runner sets up its own."""
    eng = create_engine(db_url, pool_size=8)
    with eng.begin() as conn:
        conn.exec_driver_sql(jobs.LEDGER_DDL)
    yield eng
    eng.dispose()


@pytest.fixture
def store(engine: sa.Engine) -> Store:
    return open_store(engine)


def settings_for(url: str, **overrides: Any) -> config.Settings:
    """Settings for tests: defaults, the test database, the test handlers, and any overrides."""
    base = config.load({}, environ={})
    overrides.setdefault("poll", 0.0)  # drain: stop when nothing is due
    return base.replace(database_url=url, tasks=["tests.jobs"], **overrides)


@pytest.fixture
def run(store: Store, db_url: str) -> Any:
    """`run(**settings)` runs the runner in-process once and returns its report."""

    def _run(job_id: int | None = None, **overrides: Any) -> RunReport:
        from pending_jobs import registry

        settings = settings_for(db_url, **overrides)
        return run_once(store, registry.load(settings.tasks), settings, job_id=job_id)

    return _run


def finish(store: Store, token: str, **outcomes: Any) -> Finished:
    """Record one claim's outcomes (succeeded=[(id, result)], retried=[(id, delay, error)], failed=[(id, error)])."""
    return store.finish_many([Completion(token, **outcomes)])[0]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
        cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m pending_jobs ARGS` in a subprocess with the test handlers importable."""
    # Drain (poll 0) unless a test asks to serve: `run` would otherwise serve until the next cron tick's run.
    full_env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PENDING_JOBS_TASKS": "tests.jobs",
                "PENDING_JOBS_POLL": "0"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "pending_jobs", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd or ROOT, input=stdin)


def rows(engine: sa.Engine, sql: str, **params: Any) -> list[Any]:
    """Rows of a query, for assertions."""
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql), params))


def fill_needles(engine: sa.Engine, count: int, needles: tuple[int, ...]) -> None:
    """`count` echo jobs in one server-side statement, n = 1..count in id order, each with the payload
    {"n": n, "note": "needle"} when n is one of `needles`, else {"n": n, "note": "hay"}."""
    listed = ", ".join(map(str, needles))
    statement = {
        "mysql": f"""INSERT INTO pending_jobs (task, payload) SELECT 'echo', JSON_OBJECT('n', seq, 'note',
                     IF(seq IN ({listed}), 'needle', 'hay')) FROM seq_1_to_{count}""",
        "postgresql": f"""INSERT INTO pending_jobs (task, payload) SELECT 'echo', jsonb_build_object('n', n,
                          'note', CASE WHEN n IN ({listed}) THEN 'needle' ELSE 'hay' END)
                          FROM generate_series(1, {count}) AS n""",
        "sqlite": f"""WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {count})
                      INSERT INTO pending_jobs (task, payload) SELECT 'echo', json_object('n', n, 'note',
                      CASE WHEN n IN ({listed}) THEN 'needle' ELSE 'hay' END) FROM s""",
    }[engine.dialect.name if engine.dialect.name != "mariadb" else "mysql"]
    with engine.begin() as conn:
        conn.exec_driver_sql(statement)


def scalar(engine: sa.Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()
