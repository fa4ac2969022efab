"""Runs count cancellations as an outcome of their own.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pending_jobs.migrations import steps

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN on every database (SQLite adds one in place), unless a failed run left it there.
    steps.add_column("pending_job_runs", sa.Column("cancelled", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("pending_job_runs") as batch:
        batch.drop_column("cancelled")
