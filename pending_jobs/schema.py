"""The tables, declared once in SQLAlchemy Core. Migrations must produce exactly this."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from .states import CallbackStatus, JobStatus

metadata = sa.MetaData()

# One type per kind of value, so every dialect stores the same thing:
# ids are BIGINT (INTEGER on SQLite so the rowid is reused), times are UTC with microseconds,
# JSON is JSONB on PostgreSQL and JSON (a checked LONGTEXT on MariaDB) elsewhere.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


class _Now(FunctionElement[sa.DateTime]):
    """The database's own UTC clock, with microseconds where the database has them."""

    type = sa.DateTime()  # type: ignore[assignment]
    inherit_cache = True


@compiles(_Now)
def _now_default(element: _Now, compiler: SQLCompiler, **kw: object) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(_Now, "postgresql")
def _now_pg(element: _Now, compiler: SQLCompiler, **kw: object) -> str:
    return "now()"


@compiles(_Now, "mysql")
@compiles(_Now, "mariadb")
def _now_mysql(element: _Now, compiler: SQLCompiler, **kw: object) -> str:
    # UTC_TIMESTAMP, not NOW(): a producer's session time zone must not shift run_at.
    return "UTC_TIMESTAMP(6)"


@compiles(_Now, "sqlite")
def _now_sqlite(element: _Now, compiler: SQLCompiler, **kw: object) -> str:
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"


def db_now() -> sa.ColumnElement[sa.DateTime]:
    """The database clock as an SQL expression; every due/lease comparison uses it."""
    return _Now()


class _StatementNow(_Now):
    """`db_now()` as the statement starts: PostgreSQL's now() is its transaction's start."""

    inherit_cache = True


@compiles(_StatementNow, "postgresql")
def _statement_now_pg(element: _StatementNow, compiler: SQLCompiler, **kw: object) -> str:
    return "statement_timestamp()"


def statement_now() -> sa.ColumnElement[sa.DateTime]:
    """The database clock when the statement starts (a job's end, written by the transaction that began it)."""
    return _StatementNow()


class _NowDefault(FunctionElement[sa.DateTime]):
    """The database clock as a column's server default: every dialect but PostgreSQL needs an
    expression default in parentheses. Compiled by this class alone, so a host application's own
    tables (its `DEFAULT CURRENT_TIMESTAMP`) compile exactly as they would without pending-jobs."""

    type = sa.DateTime()  # type: ignore[assignment]
    inherit_cache = True


@compiles(_NowDefault)
def _now_default_generic(element: _NowDefault, compiler: SQLCompiler, **kw: object) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(_NowDefault, "postgresql")
def _now_default_pg(element: _NowDefault, compiler: SQLCompiler, **kw: object) -> str:
    return "now()"


@compiles(_NowDefault, "mysql")
@compiles(_NowDefault, "mariadb")
def _now_default_mysql(element: _NowDefault, compiler: SQLCompiler, **kw: object) -> str:
    return "(UTC_TIMESTAMP(6))"


@compiles(_NowDefault, "sqlite")
def _now_default_sqlite(element: _NowDefault, compiler: SQLCompiler, **kw: object) -> str:
    return "(strftime('%Y-%m-%d %H:%M:%f', 'now'))"


def now_default() -> sa.DefaultClause:
    """Server-side default of a time column: the database's UTC clock with microseconds, so producers
    in any language may omit the column."""
    return sa.DefaultClause(_NowDefault())


pending_jobs = sa.Table(
    "pending_jobs",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("queue", sa.String(64), nullable=False, server_default="default"),
    sa.Column("task", sa.String(191), nullable=False),
    sa.Column("payload", Json, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("run_at", Time, nullable=False, server_default=now_default()),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False, server_default="5"),
    sa.Column("result", Json, nullable=True),
    sa.Column("last_error", LongText, nullable=True),
    sa.Column("callback_url", sa.String(2048), nullable=True),
    sa.Column("callback_status", sa.String(16), nullable=True),
    sa.Column("callback_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("callback_next_at", Time, nullable=True),
    sa.Column("callback_token", sa.String(32), nullable=True),
    sa.Column("callback_last_error", sa.Text, nullable=True),
    sa.Column("idempotency_key", sa.String(191), nullable=True),
    sa.Column("lease_owner", sa.String(128), nullable=True),
    sa.Column("lease_token", sa.String(32), nullable=True),
    sa.Column("lease_expires_at", Time, nullable=True),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", Time, nullable=False, server_default=now_default()),
    sa.Column("updated_at", Time, nullable=False, server_default=now_default()),
    sa.Column("started_at", Time, nullable=True),
    sa.Column("finished_at", Time, nullable=True),
    sa.Column("concurrency_key", sa.String(191), nullable=True),
    sa.UniqueConstraint("idempotency_key", name="uq_pending_jobs_idempotency_key"),
    # A status no run would ever pick up ('RUNNING', '') is refused at INSERT.
    sa.CheckConstraint(f"status IN ({', '.join(repr(s.value) for s in JobStatus)})", name="ck_pending_jobs_status"),
    sa.CheckConstraint(f"callback_status IS NULL OR callback_status IN "
                       f"({', '.join(repr(s.value) for s in CallbackStatus)})", name="ck_pending_jobs_callback_status"),
    # Serves the claim exactly: equality on status and queue, then the ORDER BY.
    sa.Index(
        "ix_pending_jobs_claim",
        "status",
        "queue",
        sa.desc("priority"),
        "run_at",
        "id",
    ),
    # Partial on PostgreSQL (migration 0009): there every status change writes an entry in each index whose
    # condition the new row version meets, and callback_status is NULL until a job with a callback ends.
    sa.Index("ix_pending_jobs_callback", "callback_status", "callback_next_at",
             postgresql_where=sa.text("callback_status IS NOT NULL")),
    # Serves a job list filtered by task, newest first (console, `list --task`). MariaDB and SQLite write it
    # at INSERT only; PostgreSQL with every status change too (a new row version: see docs/performance.md).
    sa.Index("ix_pending_jobs_task", "task", "id"),
    # Serves the limited claim's per-key reads (running count, first due jobs of a key) in claim order.
    # Partial where the database can: rows without a key (most) cost no index write on PostgreSQL/SQLite.
    sa.Index(
        "ix_pending_jobs_concurrency",
        "concurrency_key",
        "status",
        sa.desc("priority"),
        "run_at",
        "id",
        postgresql_where=sa.text("concurrency_key IS NOT NULL"),
        sqlite_where=sa.text("concurrency_key IS NOT NULL"),
    ),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

callback_attempts = sa.Table(
    "pending_job_callback_attempts",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("job_id", Id, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("webhook_id", sa.String(64), nullable=False),
    sa.Column("attempted_at", Time, nullable=False, server_default=now_default()),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("duration_ms", sa.Integer, nullable=False),
    sa.Column("response_excerpt", sa.Text, nullable=True),
    sa.Index("ix_pending_job_callback_attempts_job", "job_id", "attempt"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

runs = sa.Table(
    "pending_job_runs",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", Time, nullable=False, server_default=now_default()),
    sa.Column("finished_at", Time, nullable=True),
    sa.Column("claimed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("succeeded", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("retried", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rescued", sa.Integer, nullable=False, server_default="0"),
    sa.Column("callbacks_delivered", sa.Integer, nullable=False, server_default="0"),
    sa.Column("callbacks_failed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("cancelled", sa.Integer, nullable=False, server_default="0"),
    sa.Index("ix_pending_job_runs_started", "started_at"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

paused_queues = sa.Table(
    "pending_job_paused_queues",
    metadata,
    sa.Column("queue", sa.String(64), primary_key=True),
    sa.Column("paused_at", Time, nullable=False, server_default=now_default()),
    sa.Column("paused_by", sa.String(128), nullable=True),
    sa.Column("reason", sa.String(255), nullable=True),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)
"""A row per paused queue: no runner claims its jobs until the row is gone (`pending-jobs resume`)."""

limits = sa.Table(
    "pending_job_limits",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("tokens", sa.Float, nullable=True),
    sa.Column("refilled_at", Time, nullable=True),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)
"""A row per limit scope (`key:task:report:user-7`, `queue:mail`, `rate:queue:mail`): locked by the claim
that admits jobs under that limit, so two runners never count the same slots; a rate limit's row keeps
its token bucket (tokens left, when last refilled by the database clock)."""

schedules = sa.Table(
    "pending_job_schedules",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("last_slot", Time, nullable=True),
    sa.Column("last_job_id", Id, nullable=True),
    sa.Column("last_enqueued_at", Time, nullable=True),
    sa.Column("enqueued", sa.Integer, nullable=False, server_default="0"),
    sa.Column("skipped", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_at", Time, nullable=False, server_default=now_default()),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)
"""A row per recurring schedule: the last slot handled (enqueued or skipped), so each slot is looked at once
across every host (the row is locked while a run enqueues), and what it enqueued last."""

job_errors = sa.Table(
    "pending_job_errors",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("job_id", Id, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("at", Time, nullable=False, server_default=now_default()),
    sa.Column("error", LongText, nullable=False),
    sa.Index("ix_pending_job_errors_job", "job_id", "attempt"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)
"""Every failed attempt's error (the row's last_error keeps only the newest): written by the store on failure
paths only, in the outcome's transaction; at most ERRORS_KEPT per job."""

audit = sa.Table(
    "pending_job_audit",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("at", Time, nullable=False, server_default=now_default()),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("queue", sa.String(64), nullable=True),
    sa.Column("job_id", Id, nullable=True),
    sa.Column("detail", sa.Text, nullable=True),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)
"""What an operator did from the console (retry, cancel, pause, purge...), who and when."""

totals = sa.Table(
    "pending_job_totals",
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("queue", sa.String(64), primary_key=True),
    sa.Column("task", sa.String(191), primary_key=True),
    sa.Column("outcome", sa.String(16), primary_key=True),
    sa.Column("total", sa.BigInteger, nullable=False, server_default="0"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)
"""Ended jobs (kind `job`: outcome succeeded, failed, cancelled) and callback outcomes (kind `callback`:
delivered, failed) no longer counted from the rows: a purge that deleted them, or a retry that moved
them out of that outcome, added them here in its own transaction (store/totals.py). /metrics exports
these totals plus the rows' counts, so its counters never go down."""

VERSION_TABLE = "pending_jobs_alembic_version"
"""Alembic's version table under a name of our own, so a host application's alembic_version is untouched."""
schema_version = sa.table(VERSION_TABLE, sa.column("version_num"))
"""Read by `store.schema_revision` (not part of `metadata`: Alembic makes and writes it)."""

FINISHED_CHANNEL = "pending_jobs_finished"
"""PostgreSQL NOTIFY channel of migration 0006's trigger: one notification per UPDATE statement that ended a
job (succeeded, failed or cancelled); the push endpoint listens on it."""

SUMMARY_VIEW = "pending_jobs_summary"
SUMMARY_VIEW_SQL = (
    "SELECT queue, status, COUNT(*) AS jobs, MIN(run_at) AS oldest_run_at, "
    "MIN(created_at) AS oldest_created_at FROM pending_jobs GROUP BY queue, status"
)
"""Counts per queue and status, for a status page. Created by migration 0001."""


def create_all(conn: sa.Connection) -> None:
    """Create tables and views from this module (tests and the drift check; users run migrations)."""
    metadata.create_all(conn)
    conn.execute(sa.text(f"CREATE VIEW {SUMMARY_VIEW} AS {SUMMARY_VIEW_SQL}"))
