"""A connection pooler between runners and PostgreSQL: PgBouncer in transaction mode (docs/scaling.md).

pending-jobs holds no session state a pooler could lose: no LISTEN/NOTIFY, no advisory locks, no
temporary tables, every claim and completion its own transaction. Two things still meet PgBouncer:
the `options` startup parameter that sets the session's time zone (refused unless PgBouncer is told
to ignore it; PostgreSQL compares timestamptz values the same in any time zone), and psycopg's
server-side prepared statements, which transaction pooling hands to the wrong server connection
unless they are turned off (`?prepare_threshold=none`) or PgBouncer 1.21+ tracks them.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs import migrate
from pending_jobs.store import create_engine
from tests import jobs
from tests.conftest import create_database, free_port
from tests.faults.conftest import wait_for

from .conftest import check_exactly_once, cron_until_done, insert_jobs, report, require_tools, run_once, scaled
from .servers import private_dir

pytestmark = pytest.mark.slow
PGBOUNCER = "/usr/sbin/pgbouncer"


class PgBouncer:
    """A PgBouncer of the test's own in front of the shared PostgreSQL, in transaction pooling mode."""

    def __init__(self) -> None:
        self.base = private_dir("pj-pgbouncer-", "postgres")
        self.port = free_port()
        self.ini = self.base / "pgbouncer.ini"
        self.proc: subprocess.Popen[bytes] | None = None

    def configure(self, ignore_options: bool) -> None:
        lines = [
            "[databases]", "* = host=127.0.0.1 port=5432 user=postgres", "[pgbouncer]", "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}", "unix_socket_dir =", "auth_type = any", "pool_mode = transaction",
            "default_pool_size = 4", "max_client_conn = 200", f"logfile = {self.base / 'pgbouncer.log'}",
        ]
        if ignore_options:
            lines.append("ignore_startup_parameters = options")
        self.ini.write_text("\n".join(lines) + "\n")
        shutil.chown(self.ini, "postgres", "postgres")

    def start(self) -> None:
        """Start (as root, dropping to postgres itself) and wait until it listens."""
        (self.base / "pgbouncer.log").unlink(missing_ok=True)
        self.proc = subprocess.Popen([PGBOUNCER, "-u", "postgres", str(self.ini)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: "listening on 127.0.0.1" in self._log(), 30, "PgBouncer to listen")

    def restart(self) -> None:
        self._stop()
        self.start()

    def _log(self) -> str:
        path = self.base / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def url(self, database: str, query: str = "") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}{query}"

    def _stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
            self.proc = None

    def stop(self) -> None:
        self._stop()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def pgbouncer() -> Iterator[PgBouncer]:
    require_tools(PGBOUNCER, "runuser")
    bouncer = PgBouncer()
    try:
        bouncer.configure(ignore_options=False)
        bouncer.start()
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def two_databases(tmp_path: Path) -> Iterator[list[str]]:
    """Two migrated databases with the ledger table on the shared PostgreSQL; yields their names."""
    made = [create_database("postgresql", tmp_path) for _ in range(2)]
    try:
        for url, _drop in made:
            engine = create_engine(url)
            migrate.upgrade(engine)
            with engine.begin() as conn:
                conn.exec_driver_sql(jobs.LEDGER_DDL)
            engine.dispose()
        yield [sa.make_url(url).database or "" for url, _drop in made]
    finally:
        for _url, drop in made:
            drop()


def _prepared_statement_errors(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT COUNT(*) FROM pending_jobs WHERE last_error LIKE '%prepared statement%'"
                                        " OR last_error LIKE '%ProtocolViolation%'")).scalar_one())


def test_transaction_pooling_needs_two_settings(
    pgbouncer: PgBouncer, two_databases: list[str], runlog: Any,
) -> None:
    tuned, as_is = two_databases
    count = scaled(300)

    refused = run_once(pgbouncer.url(tuned), runlog, "--poll", "0")
    assert refused.returncode == 75 and "unsupported startup parameter: options" in refused.stderr, refused.stderr

    pgbouncer.configure(ignore_options=True)
    pgbouncer.restart()
    direct = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{tuned}")
    raw = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{as_is}")
    try:
        insert_jobs(direct, count)
        url = pgbouncer.url(tuned, "?prepare_threshold=none")
        cron_until_done(url, direct, runlog, "--concurrency", "4", "--batch-size", "10")
        result = check_exactly_once(direct, runlog)
        assert result["attempts_over_1"] == 0 and _prepared_statement_errors(direct) == 0

        # The same without prepare_threshold=none: psycopg prepares a statement on its 5th run and later
        # finds it missing, or a different statement under its name, on the server connection PgBouncer
        # gives the next transaction. A handler's transaction that meets it fails and its job is retried;
        # the runner's own statement that meets it stops the run with what to set (exit 2, not 75).
        runlog.write_text("")  # the second database's jobs have the first one's ids
        insert_jobs(raw, count)
        plain = run_once(pgbouncer.url(as_is), runlog, "--poll", "0", "--lease", "5",
                         "--concurrency", "4", "--batch-size", "10")
        broken = _prepared_statement_errors(raw)
        assert plain.returncode in (0, 2), plain.stderr
        if plain.returncode == 2:
            assert "prepare_threshold=none" in plain.stderr and "Traceback" not in plain.stderr, plain.stderr
        assert broken or plain.returncode, "no handler and no runner statement met a prepared statement elsewhere"
        # Nothing is lost: with the setting, later runs finish every job exactly once.
        cron_until_done(pgbouncer.url(as_is, "?prepare_threshold=none"), raw, runlog,
                        "--concurrency", "4", "--batch-size", "10")
        check_exactly_once(raw, runlog)
    finally:
        direct.dispose()
        raw.dispose()
    report(f"pgbouncer 1.18, transaction pooling: refused until ignore_startup_parameters = options; with "
           f"?prepare_threshold=none {count} jobs exactly once, no errors; without it {broken} of {count} handler "
           "transactions failed on a prepared statement missing or mismatched on the server connection"
           f"{' and the run stopped (exit 2) naming the setting' if plain.returncode else ''}; none lost")
