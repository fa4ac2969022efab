"""Time and flow: a concurrency key per job, limit scopes (semaphores and rate buckets), recurring schedules.

`pending_jobs.concurrency_key` is what a producer sets to limit how many jobs of one key run at once
(`[task.NAME] concurrency_limit`); its index serves the limited claim's per-key reads and is partial
where the database can make it so (rows without a key cost nothing there). `pending_job_limits` holds a
row per limit scope, locked by the claim that admits jobs under it, and a rate limit's token bucket.
`pending_job_schedules` holds a row per recurring schedule: the last slot it handled.

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from pending_jobs.migrations import steps
from pending_jobs.schema import now_default

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None

# Frozen copies of this revision's types.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
KEYED = "concurrency_key IS NOT NULL"


def upgrade() -> None:
    # A plain ADD COLUMN on every database (SQLite too: no table rebuild, the summary view stays).
    # Each step asks first: a failed run of this migration on MariaDB kept the steps before it (steps.py).
    steps.add_column("pending_jobs", sa.Column("concurrency_key", sa.String(191), nullable=True))
    steps.create_index("ix_pending_jobs_concurrency", "pending_jobs",
                       ["concurrency_key", "status", sa.desc("priority"), "run_at", "id"],
                       postgresql_where=sa.text(KEYED), sqlite_where=sa.text(KEYED))
    steps.create_table(
        "pending_job_limits",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("tokens", sa.Float, nullable=True),
        sa.Column("refilled_at", Time, nullable=True),
        **MYSQL,
    )
    steps.create_table(
        "pending_job_schedules",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("last_slot", Time, nullable=True),
        sa.Column("last_job_id", Id, nullable=True),
        sa.Column("last_enqueued_at", Time, nullable=True),
        sa.Column("enqueued", sa.Integer, nullable=False, server_default="0"),
        sa.Column("skipped", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_at", Time, nullable=False, server_default=now_default()),
        **MYSQL,
    )


def downgrade() -> None:
    op.drop_table("pending_job_schedules")
    op.drop_table("pending_job_limits")
    op.drop_index("ix_pending_jobs_concurrency", table_name="pending_jobs")
    if op.get_bind().dialect.name == "sqlite":  # SQLite 3.35+ drops a column in place (no rebuild)
        op.execute("ALTER TABLE pending_jobs DROP COLUMN concurrency_key")
    else:
        op.drop_column("pending_jobs", "concurrency_key")
