"""Throwaway databases for the benchmarks: one per measure, dropped afterwards."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import sqlalchemy as sa

from pending_jobs import enqueue_many, migrate
from pending_jobs.store import create_engine, dialect_for

ADMIN_URLS = {
    "mysql": os.environ.get("PENDING_JOBS_BENCH_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test"),
    "postgresql": os.environ.get("PENDING_JOBS_BENCH_POSTGRESQL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
}
LABELS = {"sqlite": "SQLite", "mysql": "MariaDB/MySQL", "postgresql": "PostgreSQL"}


def _admin(backend: str) -> sa.Engine:
    return sa.create_engine(ADMIN_URLS[backend], isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def reachable(backend: str) -> str | None:
    """None when the backend can be used, else why not."""
    if backend == "sqlite":
        return None
    try:
        with _admin(backend).connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as error:
        return f"{type(error).__name__}: {' '.join(str(error).split())[:120]}"
    return None


def usable(backends: str) -> tuple[list[str], bool]:
    """The backends of a comma-separated list that can be reached, and whether any could not (each one
    that cannot is printed with the reason)."""
    found, missing = [], False
    for backend in [b.strip() for b in backends.split(",") if b.strip()]:
        problem = reachable(backend)
        if problem:
            print(f"{LABELS[backend]}: not reachable ({problem})")
            missing = True
        else:
            found.append(backend)
    return found, missing


def server_version(backend: str) -> str:
    """The server's own version string (SQLite: the library's)."""
    if backend == "sqlite":
        return f"SQLite {sqlite3.sqlite_version}"
    with _admin(backend).connect() as conn:
        version = str(conn.exec_driver_sql("SELECT VERSION()").scalar())
    if backend == "postgresql":
        return " ".join(version.split()[:2])
    return ("MariaDB " if "mariadb" in version.lower() else "MySQL ") + version


@contextlib.contextmanager
def throwaway(backend: str, name: str, migrated: bool = True) -> Iterator[str]:
    """A new database (a temp file on SQLite), migrated to head unless `migrated` is False; yields its URL,
    then drops it."""
    if backend == "sqlite":
        folder = tempfile.mkdtemp(prefix=f"pj_bench_{name}_")
        url = f"sqlite:///{Path(folder) / 'jobs.sqlite3'}"

        def drop() -> None:
            shutil.rmtree(folder, ignore_errors=True)

    else:
        database = f"pj_bench_{name}_{uuid.uuid4().hex[:8]}"
        admin = _admin(backend)
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {database}")
        url = sa.make_url(ADMIN_URLS[backend]).set(database=database).render_as_string(hide_password=False)

        def drop() -> None:
            with admin.connect() as conn:
                force = " WITH (FORCE)" if backend == "postgresql" else ""
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {database}{force}")
            admin.dispose()

    try:
        if migrated:
            engine = create_engine(url)
            migrate.upgrade(engine)
            engine.dispose()
        yield url
    finally:
        drop()


def drop_indexes(engine: sa.Engine, backend: str, names: Sequence[str]) -> None:
    """Drop these indexes of pending_jobs (to measure what they cost); on PostgreSQL a UNIQUE constraint's
    index goes with its constraint."""
    with engine.begin() as conn:
        constraints = {c["name"] for c in sa.inspect(conn).get_unique_constraints("pending_jobs")}
        for name in names:
            if backend == "mysql":
                conn.exec_driver_sql(f"DROP INDEX {name} ON pending_jobs")
            elif name in constraints:
                conn.exec_driver_sql(f"ALTER TABLE pending_jobs DROP CONSTRAINT {name}")
            else:
                conn.exec_driver_sql(f"DROP INDEX {name}")


def fill(engine: sa.Engine, count: int, task: str = "bench.noop", run_at: dt.datetime | None = None,
         analyze: bool = True) -> None:
    """Insert `count` pending jobs server-side (INSERT ... SELECT over a generated series): fast at 1M rows,
    visible at one commit. With `run_at` (timezone-aware), every job is due then (jobs scheduled ahead);
    else at once. `analyze=False`: no VACUUM ANALYZE after it on PostgreSQL (a runner is already serving)."""
    backend = dialect_for(engine).name
    with engine.connect() as conn:  # the dialect knows MariaDB from MySQL once it has connected
        mariadb = bool(getattr(conn.dialect, "is_mariadb", False))
    stored = run_at.astimezone(dt.UTC).replace(tzinfo=None) if run_at else None  # the columns hold UTC
    columns = "(task, payload, run_at)" if run_at else "(task, payload)"
    when = ", :run_at" if run_at else ""
    if backend == "postgresql":
        source = f"SELECT '{task}', '{{}}'::jsonb{when} FROM generate_series(1, :n)"
    elif backend == "mysql" and not mariadb:
        for start in range(0, count, 50_000):  # MySQL has no SEQUENCE engine
            enqueue_many(engine, ({"task": task, "run_at": run_at} for _ in range(min(50_000, count - start))))
        source = ""
    elif backend == "mysql":
        source = f"SELECT '{task}', '{{}}'{when} FROM seq_1_to_{count}"  # MariaDB's SEQUENCE engine
    else:
        source = (f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :n) "
                  f"SELECT '{task}', '{{}}'{when} FROM s")
    if source:
        with engine.begin() as conn:
            conn.execute(sa.text(f"INSERT INTO pending_jobs {columns} {source}"), {"n": count, "run_at": stored})
    if analyze or backend != "postgresql":
        analyzed(engine, vacuum=True)


def analyzed(engine: sa.Engine, vacuum: bool = False) -> None:
    """The job table's statistics brought up to date, as autovacuum (or InnoDB's own) would have in production:
    the runner's statements planned as they would be there, like the raw floor's (floor.setup, which is not
    vacuumed either: fresh jobs are claimed before a vacuum comes). `vacuum`: VACUUM too on PostgreSQL."""
    backend = dialect_for(engine).name
    if backend == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE pending_jobs" if vacuum else "ANALYZE pending_jobs")
    elif backend == "mysql":
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE TABLE pending_jobs")
    else:
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")


SERVER_PROCESSES = {"mysql": ("mariadbd", "mysqld"), "postgresql": ("postgres",)}


def server_cpu(backend: str) -> float | None:
    """CPU seconds the local database server has used so far, or None where it cannot be read (another host,
    no /proc). PostgreSQL's ended backends count through the postmaster's children's time. A steadier measure
    than a rate on a machine whose speed moves between rounds: the server's work a job."""
    names = SERVER_PROCESSES.get(backend, ())
    ticks, found = 0, False
    for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else ()):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:  # ended meanwhile, or not ours to read
            continue
        if comm in names:
            fields = stat[stat.rindex(")") + 2:].split()  # utime, stime, cutime, cstime are fields 14-17
            ticks += sum(int(value) for value in fields[11:15])
            found = True
    return ticks / os.sysconf("SC_CLK_TCK") if found else None
