"""An index leading with task, for the console's and `list --task`'s job filter.

A filter on a task (with or without a status) walked the whole primary key when few rows matched: 1.1 s on
MariaDB with 1,000,000 jobs. `(task, id)` serves `WHERE task = ? ORDER BY id DESC` in the list's order.
On MariaDB the runner pays nothing for it after the INSERT: neither column changes while a job lives. On
PostgreSQL it does: every status change writes a new row version and an entry in each index
(docs/performance.md).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

from pending_jobs.migrations import steps

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    steps.create_index("ix_pending_jobs_task", "pending_jobs", ["task", "id"])


def downgrade() -> None:
    op.drop_index("ix_pending_jobs_task", table_name="pending_jobs")
