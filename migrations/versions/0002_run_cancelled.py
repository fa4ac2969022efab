"""Runs count cancellations as an outcome of their own.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pending_job_runs") as batch:
        batch.add_column(sa.Column("cancelled", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("pending_job_runs") as batch:
        batch.drop_column("cancelled")
