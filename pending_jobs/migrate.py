"""Schema versions through Alembic, with our own version table so a host application's is untouched."""

from __future__ import annotations

import io
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from .errors import SchemaNotCurrent

VERSION_TABLE = "pending_jobs_alembic_version"


def _script_location() -> str:
    # Installed: pending_jobs/migrations. From a source checkout: the top-level migrations/.
    installed = Path(__file__).parent / "migrations"
    if (installed / "env.py").exists():
        return str(installed)
    return str(Path(__file__).parent.parent / "migrations")


def alembic_config(url: str | None = None, connection: sa.Connection | None = None,
                   output: io.StringIO | None = None) -> Config:
    """An Alembic Config built in code, so `migrate` works from any directory."""
    config = Config(output_buffer=output) if output is not None else Config()
    config.set_main_option("script_location", _script_location())
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision this code knows."""
    current = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert current is not None
    return current


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Apply migrations up to `revision`."""
    with engine.begin() as conn:
        command.upgrade(alembic_config(connection=conn), revision)


def downgrade(engine: sa.Engine, revision: str = "base") -> None:
    """Revert migrations down to `revision`."""
    with engine.begin() as conn:
        command.downgrade(alembic_config(connection=conn), revision)


def upgrade_sql(url: str, revision: str = "head") -> str:
    """The DDL `upgrade` would run, for DBAs who apply it themselves (`migrate --sql`)."""
    buffer = io.StringIO()
    url = sa.make_url(url).render_as_string(hide_password=False)
    if url.startswith(("mysql://", "mariadb://")):
        url = url.replace("://", "+pymysql://", 1)
    command.upgrade(alembic_config(url=url, output=buffer), revision, sql=True)
    return buffer.getvalue()


def current(engine: sa.Engine) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def require_head(engine: sa.Engine) -> None:
    """Raise SchemaNotCurrent unless the database is at the newest revision."""
    at, wanted = current(engine), head()
    if at != wanted:
        shown = at or "not migrated"
        raise SchemaNotCurrent(
            f"database schema is at {shown}, this pending-jobs needs {wanted}: run `pending-jobs migrate`"
        )


__all__ = ["VERSION_TABLE", "current", "downgrade", "head", "require_head", "upgrade", "upgrade_sql"]
