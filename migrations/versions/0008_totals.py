"""Monotone /metrics counters: totals of ended jobs and callback outcomes that left the rows.

`pending_job_totals` holds, per (kind, queue, task, outcome), how many ended jobs (kind `job`) and
callback outcomes (kind `callback`) a purge deleted or a retry reopened; /metrics adds the rows' own
counts, so its counters only grow. It starts empty: what earlier purges deleted is not recovered, and the
counters start from the rows kept.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pending_jobs.migrations import steps

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    steps.create_table(
        "pending_job_totals",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("queue", sa.String(64), primary_key=True),
        sa.Column("task", sa.String(191), primary_key=True),
        sa.Column("outcome", sa.String(16), primary_key=True),
        sa.Column("total", sa.BigInteger, nullable=False, server_default="0"),
        **MYSQL,
    )


def downgrade() -> None:
    op.drop_table("pending_job_totals")
