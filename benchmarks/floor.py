"""The raw-SQL floor of a SKIP LOCKED job table: the fewest round trips any runner can make.

Per batch: `SELECT id … FOR UPDATE SKIP LOCKED`, one UPDATE to running, COMMIT; then one UPDATE of
the whole batch to succeeded, COMMIT. No handler, no validation, no SQLAlchemy: the bare DB-API
driver on a table of its own. A runner does more than this, so its rate divided by this one's,
measured in the same invocation on the same machine, says how close it comes to what the database
allows. One process per worker, as one `pending-jobs run` per worker.

`python -m benchmarks.floor URL JOBS BATCH [PROCESSES]` prints `done=<n> <rate> jobs/s`.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from typing import Any

import sqlalchemy as sa

TABLE = "floor_jobs"
DDL = {
    "mysql": [
        f"CREATE TABLE {TABLE} (id BIGINT AUTO_INCREMENT PRIMARY KEY, queue VARCHAR(64) NOT NULL DEFAULT 'default',"
        " task VARCHAR(191) NOT NULL, payload JSON NOT NULL, status VARCHAR(16) NOT NULL DEFAULT 'pending',"
        " priority SMALLINT NOT NULL DEFAULT 0, run_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),"
        " attempts INT NOT NULL DEFAULT 0, locked_by VARCHAR(128) NULL, locked_until DATETIME(6) NULL,"
        " finished_at DATETIME(6) NULL, KEY claim (status, queue, run_at, id)) ENGINE=InnoDB",
    ],
    "postgresql": [
        f"CREATE TABLE {TABLE} (id BIGSERIAL PRIMARY KEY, queue VARCHAR(64) NOT NULL DEFAULT 'default',"
        " task VARCHAR(191) NOT NULL, payload JSONB NOT NULL, status VARCHAR(16) NOT NULL DEFAULT 'pending',"
        " priority SMALLINT NOT NULL DEFAULT 0, run_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
        " attempts INT NOT NULL DEFAULT 0, locked_by VARCHAR(128) NULL, locked_until TIMESTAMPTZ NULL,"
        " finished_at TIMESTAMPTZ NULL)",
        f"CREATE INDEX floor_claim ON {TABLE} (status, queue, run_at, id)",
    ],
}
NOW = {"mysql": "NOW(6)", "postgresql": "now()"}


def _kind(url: str) -> str:
    name = sa.make_url(url).get_backend_name()
    return "mysql" if name in ("mysql", "mariadb") else name


def connect(url: str) -> Any:
    """A bare DB-API connection (autocommit off; READ COMMITTED on MySQL, as the runner's claims)."""
    parsed = sa.make_url(url)
    if _kind(url) == "mysql":
        import pymysql

        conn = pymysql.connect(host=parsed.host or "127.0.0.1", port=parsed.port or 3306, user=parsed.username or "",
                               password=parsed.password or "", database=parsed.database, autocommit=False)
        conn.cursor().execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        return conn
    import psycopg

    return psycopg.connect(host=parsed.host or "127.0.0.1", port=parsed.port or 5432, user=parsed.username or "",
                           dbname=parsed.database or "")


def setup(url: str, jobs: int) -> None:
    """A fresh floor table holding `jobs` pending rows, analyzed as autovacuum would have in production.

    Not analyzed, PostgreSQL plans the UPDATE by id as a sequential scan of a table under ≈ 40,000 rows
    (no statistics yet): 3.5 ms instead of 1.4 ms a batch of 100, a floor 30-50 % lower at 20,000 jobs
    than at 50,000 (measured 2026-12-06), which made a runner look closer to it than it is."""
    kind = _kind(url)
    conn = connect(url)
    cur = conn.cursor()
    cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
    for statement in DDL[kind]:
        cur.execute(statement)
    rows = [("noop", "{}")] * jobs
    for start in range(0, jobs, 5000):
        cur.executemany(f"INSERT INTO {TABLE} (task, payload) VALUES (%s, %s)", rows[start:start + 5000])
    conn.commit()
    cur.execute(f"ANALYZE TABLE {TABLE}" if kind == "mysql" else f"ANALYZE {TABLE}")
    cur.fetchall() if kind == "mysql" else None  # MySQL answers with a result set
    conn.commit()
    conn.close()


def drain(url: str, batch: int, out: Any) -> None:
    """One worker: claim and finish batches until none is left; puts the number done on `out`."""
    now = NOW[_kind(url)]
    conn = connect(url)
    cur = conn.cursor()
    done = 0
    while True:
        cur.execute(f"SELECT id FROM {TABLE} WHERE status = 'pending' AND queue = 'default' AND run_at <= {now} "
                    f"ORDER BY run_at, id LIMIT {int(batch)} FOR UPDATE SKIP LOCKED")
        ids = [row[0] for row in cur.fetchall()]
        if not ids:
            conn.commit()
            break
        marks = ",".join(["%s"] * len(ids))
        cur.execute(f"UPDATE {TABLE} SET status = 'running', attempts = attempts + 1, locked_by = 'floor', "
                    f"locked_until = {now} WHERE id IN ({marks})", ids)
        conn.commit()
        cur.execute(f"UPDATE {TABLE} SET status = 'succeeded', finished_at = {now}, locked_by = NULL "
                    f"WHERE id IN ({marks})", ids)
        conn.commit()
        done += len(ids)
    conn.close()
    out.put(done)


def measure(url: str, jobs: int, batch: int, processes: int = 1) -> tuple[int, float]:
    """(jobs done, jobs/s) of `processes` workers draining `jobs` rows, timed from their start to the last one's end."""
    setup(url, jobs)
    context = multiprocessing.get_context("fork")  # as cheap to start as the old floor; no threads yet
    results: Any = context.Queue()
    workers = [context.Process(target=drain, args=(url, batch, results)) for _ in range(processes)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    total = sum(int(results.get()) for _ in workers)
    for worker in workers:
        worker.join()
    return total, total / (time.perf_counter() - started)


def main(argv: list[str]) -> int:
    """`URL JOBS BATCH [PROCESSES]`: measure and print one line."""
    if len(argv) not in (3, 4) or _kind(argv[0]) not in DDL:
        print("usage: python -m benchmarks.floor mysql://…|postgresql://… JOBS BATCH [PROCESSES]", file=sys.stderr)
        return 2
    processes = int(argv[3]) if len(argv) == 4 else 1
    done, rate = measure(argv[0], int(argv[1]), int(argv[2]), processes)
    print(f"{_kind(argv[0])} n={argv[1]} batch={argv[2]} workers={processes} done={done} {rate:.0f} jobs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
