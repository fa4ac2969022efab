"""The pending_jobs table, callback attempts, runs, and the summary view.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

from pending_jobs.migrations import steps

# Each dialect's UTC clock with microseconds (the DDL of this revision is unchanged by using it).
from pending_jobs.schema import now_default

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies of the types in pending_jobs.schema as of this revision.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

SUMMARY_SQL = (
    "SELECT queue, status, COUNT(*) AS jobs, MIN(run_at) AS oldest_run_at, "
    "MIN(created_at) AS oldest_created_at FROM pending_jobs GROUP BY queue, status"
)


def upgrade() -> None:
    # Each step asks first: a failed run of this migration on MariaDB kept the steps before it (steps.py).
    steps.create_table(
        "pending_jobs",
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
        sa.UniqueConstraint("idempotency_key", name="uq_pending_jobs_idempotency_key"),
        **MYSQL,
    )
    steps.create_index(
        "ix_pending_jobs_claim", "pending_jobs", ["status", "queue", sa.text("priority DESC"), "run_at", "id"]
    )
    steps.create_index("ix_pending_jobs_callback", "pending_jobs", ["callback_status", "callback_next_at"])
    steps.create_table(
        "pending_job_callback_attempts",
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
        **MYSQL,
    )
    steps.create_index(
        "ix_pending_job_callback_attempts_job", "pending_job_callback_attempts", ["job_id", "attempt"]
    )
    steps.create_table(
        "pending_job_runs",
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
        **MYSQL,
    )
    steps.create_index("ix_pending_job_runs_started", "pending_job_runs", ["started_at"])
    if steps.missing_view("pending_jobs_summary"):
        op.execute(f"CREATE VIEW pending_jobs_summary AS {SUMMARY_SQL}")


def downgrade() -> None:
    op.execute("DROP VIEW pending_jobs_summary")
    op.drop_table("pending_job_runs")
    op.drop_table("pending_job_callback_attempts")
    op.drop_table("pending_jobs")
