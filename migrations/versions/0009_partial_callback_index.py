"""PostgreSQL: the callback index holds only rows that have a callback to deliver or delivered.

On PostgreSQL an UPDATE that changes an indexed column (every claim and outcome changes `status`)
writes a new row version and an entry for it in every index of the table whose condition it meets.
`ix_pending_jobs_callback (callback_status, callback_next_at)` took one for every such version, though
`callback_status` is NULL until a job with a callback ends. Restricted to `callback_status IS NOT NULL`,
a claim no longer writes to it, nor does the outcome of a job without a callback. Every query that uses
it asks for one callback status, which implies the condition. MariaDB writes a secondary index only
when its own columns change, and SQLite likewise: nothing changes there.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

COLUMNS = ["callback_status", "callback_next_at"]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_pending_jobs_callback", table_name="pending_jobs")
    op.create_index("ix_pending_jobs_callback", "pending_jobs", COLUMNS,
                    postgresql_where=sa.text("callback_status IS NOT NULL"))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_pending_jobs_callback", table_name="pending_jobs")
    op.create_index("ix_pending_jobs_callback", "pending_jobs", COLUMNS)
