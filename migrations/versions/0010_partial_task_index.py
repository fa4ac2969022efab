"""PostgreSQL: the task index leaves out `running` row versions.

On PostgreSQL every claim (`pending` → `running`) and every outcome writes a new row version and an entry
for it in each index whose condition it meets. `ix_pending_jobs_task (task, id)` (0007) took one for
both; a no-op drain lost 8-10 % of its rate to it (docs/performance.md). Restricted to
`status <> 'running'`, a claim writes no entry. A task filter that may match running jobs asks
`(task = ? AND status <> 'running') OR (task = ? AND status = 'running')` (`Dialect.task_is`): the
planner reads the first arm from this index and the second from the claim index, where running jobs
are few. MariaDB and SQLite write the index at INSERT only: nothing changes there.

CREATE INDEX (not CONCURRENTLY, which cannot run in Alembic's transaction) blocks writes to
`pending_jobs` while it builds: about a second a million rows here.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

COLUMNS = ["task", "id"]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_pending_jobs_task", table_name="pending_jobs")
    op.create_index("ix_pending_jobs_task", "pending_jobs", COLUMNS, postgresql_where=sa.text("status <> 'running'"))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_pending_jobs_task", table_name="pending_jobs")
    op.create_index("ix_pending_jobs_task", "pending_jobs", COLUMNS)
