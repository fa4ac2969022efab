"""Statuses constrained on every database; a row per paused queue; PostgreSQL notifies on INSERT.

A producer's INSERT with a status no run would ever pick up ('RUNNING', '', 'done') is refused from now
on. Rows already holding one are ended here as failed, with the reason, so nothing is left invisible.

On PostgreSQL a statement-level trigger sends one NOTIFY pending_jobs per INSERT statement (however many
rows it inserts, and whatever inserted them: PHP, psql, the Python API), so serving runners claim at
once instead of at their next poll.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import mysql, postgresql

from pending_jobs.migrations import steps
from pending_jobs.schema import now_default

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Frozen copies of this revision's values.
STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")
CALLBACK_STATUSES = ("pending", "delivered", "failed")
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
SUMMARY_SQL = (
    "SELECT queue, status, COUNT(*) AS jobs, MIN(run_at) AS oldest_run_at, "
    "MIN(created_at) AS oldest_created_at FROM pending_jobs GROUP BY queue, status"
)


def _jobs_as_of_0002() -> sa.Table:
    """pending_jobs as revisions 0001-0002 left it: SQLite's table rebuild copies from this (so `migrate
    --sql` needs no live database to reflect it)."""
    return sa.Table(
        "pending_jobs", sa.MetaData(),
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
        sa.Index("ix_pending_jobs_claim", "status", "queue", sa.desc("priority"), "run_at", "id"),
        sa.Index("ix_pending_jobs_callback", "callback_status", "callback_next_at"),
    )


def _views_triggers_and_indexes() -> list[tuple[str, str, str]]:
    """SQLite: every view and trigger but ours, and the application's own indexes on pending_jobs (type, name,
    CREATE statement), in the order they were made."""
    if context.is_offline_mode():
        return []
    rows = op.get_bind().execute(sa.text(
        "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name <> 'pending_jobs_summary' AND "
        "(type IN ('view', 'trigger') OR (type = 'index' AND tbl_name = 'pending_jobs' AND name NOT IN "
        "('ix_pending_jobs_claim', 'ix_pending_jobs_callback'))) ORDER BY rowid"))
    return [(str(kind), str(name), str(sql)) for kind, name, sql in rows]


def _with_added_columns(table: sa.Table) -> sa.Table:
    """0002's table plus any column the application added to it (reflected), so the rebuild copies its data too.
    `migrate --sql` has no database to ask: 0002's table alone."""
    if context.is_offline_mode():
        return table
    for column in sa.inspect(op.get_bind()).get_columns("pending_jobs"):
        if column["name"] not in table.c:
            default = column.get("default")
            table.append_column(sa.Column(column["name"], column["type"], nullable=column["nullable"],
                                          server_default=None if default is None else sa.text(default)))
    return table


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.execute(sa.text(
        f"UPDATE pending_jobs SET last_error = 'status ' || status || ' is not a status pending-jobs knows; "
        f"ended as failed by migration 0003', status = 'failed' WHERE NOT ({_in('status', STATUSES)})"
    ) if op.get_bind().dialect.name != "mysql" and op.get_bind().dialect.name != "mariadb" else sa.text(
        f"UPDATE pending_jobs SET last_error = CONCAT('status ', status, ' is not a status pending-jobs knows; "
        f"ended as failed by migration 0003'), status = 'failed' WHERE NOT ({_in('status', STATUSES)})"))
    op.execute(sa.text(f"UPDATE pending_jobs SET callback_status = 'failed' WHERE callback_status IS NOT NULL "
                       f"AND NOT ({_in('callback_status', CALLBACK_STATUSES)})"))
    sqlite = op.get_bind().dialect.name == "sqlite"
    # The application's own views and triggers: the rebuild drops every trigger on pending_jobs with the old
    # table, and its last step (RENAME) fails on any view or trigger that names pending_jobs ("error in view
    # …: no such table"). They are dropped first and made again after, as SQLite's procedure for altering a
    # table says (sqlite.org/lang_altertable.html#otheralter).
    kept = _views_triggers_and_indexes() if sqlite else []
    for kind, name, _ in kept:
        if kind != "index":  # the application's indexes on pending_jobs go with the old table
            # IF EXISTS: dropping a view drops its INSTEAD OF triggers with it (listed after it).
            quoted = name.replace('"', '""')
            op.execute(f'DROP {kind.upper()} IF EXISTS "{quoted}"')
    if sqlite:  # the table is rebuilt; its view is recreated around that
        op.execute("DROP VIEW pending_jobs_summary")
    checks = [(name, condition) for name, condition in (
        ("ck_pending_jobs_status", _in("status", STATUSES)),
        ("ck_pending_jobs_callback_status", f"callback_status IS NULL OR {_in('callback_status', CALLBACK_STATUSES)}"),
    ) if steps.missing_check("pending_jobs", name)]  # a failed run kept the first (steps.py)
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        # MariaDB and MySQL copy the whole table to add a CHECK (ALGORITHM=COPY), INSERTs blocked meanwhile:
        # one ALTER copies it once (two took 18 s and then 16 s with 1,000,000 jobs).
        if checks:
            op.execute("ALTER TABLE pending_jobs " + ", ".join(f"ADD CONSTRAINT {name} CHECK ({condition})"
                                                              for name, condition in checks))
    else:
        with op.batch_alter_table("pending_jobs", copy_from=_with_added_columns(_jobs_as_of_0002())) as batch:
            for name, condition in checks:
                batch.create_check_constraint(name, condition)
    if sqlite:
        op.execute(f"CREATE VIEW pending_jobs_summary AS {SUMMARY_SQL}")
    for _, _, sql in kept:
        op.execute(sql)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE OR REPLACE FUNCTION pending_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$ BEGIN PERFORM pg_notify('pending_jobs', ''); RETURN NULL; END $$")
        op.execute("DROP TRIGGER IF EXISTS pending_jobs_notify ON pending_jobs")
        op.execute("CREATE TRIGGER pending_jobs_notify AFTER INSERT ON pending_jobs "
                   "FOR EACH STATEMENT EXECUTE FUNCTION pending_jobs_notify()")
    steps.create_table(
        "pending_job_paused_queues",
        sa.Column("queue", sa.String(64), primary_key=True),
        sa.Column("paused_at", Time, nullable=False, server_default=now_default()),
        sa.Column("paused_by", sa.String(128), nullable=True),
        sa.Column("reason", sa.String(255), nullable=True),
        **MYSQL,
    )


def downgrade() -> None:
    op.drop_table("pending_job_paused_queues")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER pending_jobs_notify ON pending_jobs")
        op.execute("DROP FUNCTION pending_jobs_notify()")
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.execute("DROP VIEW pending_jobs_summary")
    with op.batch_alter_table("pending_jobs") as batch:
        batch.drop_constraint("ck_pending_jobs_callback_status", type_="check")
        batch.drop_constraint("ck_pending_jobs_status", type_="check")
    if sqlite:
        op.execute(f"CREATE VIEW pending_jobs_summary AS {SUMMARY_SQL}")
