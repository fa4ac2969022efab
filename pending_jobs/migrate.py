"""Schema versions through Alembic, with our own version table so a host application's is untouched.

Alembic (with Mako and Pygments, ≈ 50 ms of imports) is imported only to migrate: every other command,
a cron tick's `run` first of all, checks the schema with one SELECT against the constant HEAD.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from .errors import ConfigError, SchemaNotCurrent
from .schema import SUMMARY_VIEW, VERSION_TABLE, metadata
from .store import dialect_for, schema_revision

if TYPE_CHECKING:
    from alembic.config import Config

HEAD = "0009"
"""The newest revision in migrations/versions (tests/migrations holds the two equal: a new migration
bumps it)."""


def _script_location() -> str:
    # Installed: pending_jobs/migrations. From a source checkout: the top-level migrations/.
    installed = Path(__file__).parent / "migrations"
    if (installed / "env.py").exists():
        return str(installed)
    return str(Path(__file__).parent.parent / "migrations")


def alembic_config(url: str | None = None, connection: sa.Connection | None = None,
                   output: io.StringIO | None = None) -> Config:
    """An Alembic Config built in code, so `migrate` works from any directory."""
    from alembic.config import Config

    config = Config(output_buffer=output) if output is not None else Config()
    config.set_main_option("script_location", _script_location())
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision this code knows."""
    return HEAD


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Apply migrations up to `revision`. A table lock waited for past db.MIGRATE_LOCK_WAIT raises the
    driver's error (the dialect's `timed_out` or `retryable` says which); run it again."""
    from alembic import command
    from alembic.util import CommandError

    at = current(engine)
    if at is not None and at not in known():
        require_head(engine)  # "newer than this pending-jobs knows": Alembic's traceback said "Can't locate revision"
    with engine.connect() as conn, dialect_for(conn).migrating(conn), conn.begin():
        try:
            command.upgrade(alembic_config(connection=conn), revision)
        except CommandError as error:  # `--revision 0O09`: a setting to fix, one line and exit 2
            raise ConfigError(f"cannot migrate to revision {revision!r}: {error}") from None


def downgrade(engine: sa.Engine, revision: str = "base") -> None:
    """Revert migrations down to `revision`."""
    from alembic import command

    with engine.begin() as conn:
        command.downgrade(alembic_config(connection=conn), revision)


def upgrade_sql(url: str, revision: str = "head") -> str:
    """The DDL `upgrade` would run, for DBAs who apply it themselves (`migrate --sql`)."""
    from alembic import command
    from alembic.util import CommandError

    buffer = io.StringIO()
    url = sa.make_url(url).render_as_string(hide_password=False)
    if url.startswith(("mysql://", "mariadb://")):
        url = url.replace("://", "+pymysql://", 1)
    try:
        command.upgrade(alembic_config(url=url, output=buffer), revision, sql=True)
    except CommandError as error:
        raise ConfigError(f"cannot print the DDL of revision {revision!r}: {error}") from None
    return buffer.getvalue()


def current(engine: sa.Engine) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    return schema_revision(engine)


def known() -> list[str]:
    """Every revision this code ships, oldest first (the revision is its file's number: 0001_initial.py)."""
    return sorted(path.name[:4] for path in (Path(_script_location()) / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))


def require_head(engine: sa.Engine) -> None:
    """Raise SchemaNotCurrent unless the database is at the newest revision."""
    at, wanted = current(engine), head()
    if at == wanted:
        return
    if at is not None and at not in known():
        # A host upgraded before this one and migrated: `migrate` here would not know that revision either.
        raise SchemaNotCurrent(
            f"database schema is at {at}, newer than this pending-jobs knows (it needs {wanted}): another host "
            f"upgraded pending-jobs and migrated; upgrade pending-jobs here too"
        )
    # The URL too: a typo in it (another SQLite file, another database) reads as "not migrated", and
    # `migrate` would then create the typo'd database beside the real one.
    raise SchemaNotCurrent(
        f"database schema is {f'at {at}' if at else 'not migrated'}, this pending-jobs needs {wanted}: "
        f"run `pending-jobs migrate` (database_url: {engine.url.set(query={}).render_as_string(hide_password=True)})"
    )


def require_tables(engine: sa.Engine) -> None:
    """Raise SchemaNotCurrent naming the tables of head this database lacks, in one query. The version table says
    which migrations ran, not that their tables are still there (a dump restored without one): a run claimed jobs,
    then could not record them (a traceback, exit 1, the jobs `running` until their lease expired, every tick).
    `check` (missing_objects) names columns, indexes and constraints too."""
    tables = set(sa.inspect(engine).get_table_names())
    missing = [table.name for table in metadata.sorted_tables if table.name not in tables]
    if missing:
        raise SchemaNotCurrent(
            f"database schema is at {head()}, but this database has no table {', '.join(missing)}: restore them (the "
            "DDL of `pending-jobs migrate --sql` names each) or migrate a new database; `pending-jobs check` lists "
            "anything else missing"
        )


def missing_objects(engine: sa.Engine) -> list[str]:
    """What the schema at head should hold and this database lacks (tables, columns, indexes, CHECKs, the view),
    by name: the version table alone says which migrations ran, not that their objects are all still there (DDL
    a DBA applied by hand in part, an index dropped, a dump restored without a table). For `check`."""
    inspector = sa.inspect(engine)
    tables = set(inspector.get_table_names())
    missing = [] if SUMMARY_VIEW in inspector.get_view_names() else [f"view {SUMMARY_VIEW}"]
    for table in metadata.sorted_tables:
        if table.name not in tables:
            missing.append(f"table {table.name}")
            continue
        columns = {column["name"] for column in inspector.get_columns(table.name)}
        missing += [f"column {table.name}.{column.name}" for column in table.columns if column.name not in columns]
        indexes = {index["name"] for index in inspector.get_indexes(table.name)}
        missing += [f"index {index.name}" for index in sorted(table.indexes, key=lambda i: str(i.name))
                    if index.name not in indexes]
        checks = {check["name"] for check in inspector.get_check_constraints(table.name)}
        missing += [f"constraint {constraint.name}" for constraint in table.constraints
                    if isinstance(constraint, sa.CheckConstraint) and constraint.name not in checks]
    return missing


__all__ = ["VERSION_TABLE", "current", "downgrade", "head", "known", "missing_objects", "require_head",
           "require_tables", "upgrade", "upgrade_sql"]
