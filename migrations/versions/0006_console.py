"""The console: every attempt's error, an audit table, and a NOTIFY when jobs finish (PostgreSQL).

`pending_job_errors` keeps each failed attempt's error (the job row's last_error keeps only the newest);
the store writes it on failure paths only, in the outcome's transaction, and keeps the last 20 per job.
`pending_job_audit` records what an operator did from the console, who and when.

On PostgreSQL a statement-level trigger sends one NOTIFY pending_jobs_finished per UPDATE statement that
left at least one job succeeded, failed or cancelled (whatever wrote it: a runner, an operator, psql), so
the push endpoint tells a browser at once instead of at its next poll.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from pending_jobs.migrations import steps
from pending_jobs.schema import now_default

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Frozen copies of this revision's types.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
NOTIFY_FUNCTION = (
    "CREATE OR REPLACE FUNCTION pending_jobs_notify_finished() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF EXISTS (SELECT 1 FROM n WHERE n.status IN ('succeeded', 'failed', 'cancelled')) THEN "
    "PERFORM pg_notify('pending_jobs_finished', ''); END IF; RETURN NULL; END $$"
)
NOTIFY_TRIGGER = (
    "CREATE TRIGGER pending_jobs_notify_finished AFTER UPDATE ON pending_jobs REFERENCING NEW TABLE AS n "
    "FOR EACH STATEMENT EXECUTE FUNCTION pending_jobs_notify_finished()"
)


def upgrade() -> None:
    steps.create_table(  # a failed run of this migration on MariaDB may have made it already (steps.py)
        "pending_job_errors",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("job_id", Id, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("at", Time, nullable=False, server_default=now_default()),
        sa.Column("error", LongText, nullable=False),
        sa.Index("ix_pending_job_errors_job", "job_id", "attempt"),
        **MYSQL,
    )
    steps.create_table(
        "pending_job_audit",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("at", Time, nullable=False, server_default=now_default()),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("queue", sa.String(64), nullable=True),
        sa.Column("job_id", Id, nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
        **MYSQL,
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(NOTIFY_FUNCTION)
        op.execute("DROP TRIGGER IF EXISTS pending_jobs_notify_finished ON pending_jobs")
        op.execute(NOTIFY_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER pending_jobs_notify_finished ON pending_jobs")
        op.execute("DROP FUNCTION pending_jobs_notify_finished()")
    op.drop_table("pending_job_audit")
    op.drop_table("pending_job_errors")
