"""The storage layer: all SQL lives below this package; dialect differences in mysql.py, postgres.py, sqlite.py."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc

from .. import db
from ..errors import ConfigError, DatabaseUnavailable
from ..schema import VERSION_TABLE, schema_version
from . import hang
from .base import Store
from .callbacks import CallbackStore
from .dialect import Dialect
from .hang import HangWatch
from .limited import LimitedStore
from .mysql import MySQL
from .ops import JobFilter, OpsStore, PausedQueue
from .postgres import Postgres
from .runs import Health, RunStore
from .schedules import Fired, ScheduleRow, ScheduleStore
from .sqlite import SQLite

__all__ = ["CallbackStore", "Dialect", "Fired", "HangWatch", "Health", "JobFilter", "LimitedStore", "OpsStore",
           "PausedQueue", "RunStore", "ScheduleRow", "ScheduleStore", "Store",
           "create_engine", "dialect_for", "dialect_of_error", "dialect_of_url", "insert_jobs", "open_store", "ours",
           "schema_revision"]

_DIALECTS: dict[str, Dialect] = {dialect.name: dialect for dialect in (MySQL(), Postgres(), SQLite())}
_DRIVERS = {"pymysql": _DIALECTS["mysql"], "psycopg": _DIALECTS["postgresql"], "sqlite3": _DIALECTS["sqlite"]}


def dialect_for(bind: sa.Engine | sa.Connection) -> Dialect:
    """The dialect of this engine or connection (one per database, shared: it holds built statements)."""
    name = bind.dialect.name
    return _DIALECTS["mysql" if name == "mariadb" else name]


def dialect_of_url(url: str) -> Dialect | None:
    """The dialect of a database URL (its engine need not exist), or None for one that is not valid."""
    try:
        name = sa.make_url(url).get_backend_name()
    except (sa.exc.ArgumentError, ValueError):
        return None
    return _DIALECTS.get("mysql" if name == "mariadb" else name)


def open_store(engine: sa.Engine) -> Store:
    """The store for this engine."""
    return Store(engine, dialect_for(engine))


def schema_revision(engine: sa.Engine) -> str | None:
    """The schema revision the database is at (Alembic's version table), or None when it was never migrated."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(VERSION_TABLE):
            return None
        revision = conn.execute(sa.select(schema_version.c.version_num)).scalar()
        return None if revision is None else str(revision)


def insert_jobs(conn: sa.Connection, rows: list[dict[str, Any]]) -> list[int]:
    """Insert validated job rows inside the caller's transaction; ids in order (the producer API's SQL)."""
    return dialect_for(conn).insert_jobs(conn, rows)


def create_engine(url: str, pool_size: int = 5, create: bool = True, **options: Any) -> sa.Engine:
    """An engine set up for job work on the database `url` names (see Dialect.engine). `create=False`: the
    database must exist; connecting never creates a server's, but would create an empty SQLite file."""
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:  # a byte of another encoding in the variable: the driver's traceback, exit 1
        raise ConfigError("database_url is not valid UTF-8 (a byte of another encoding: a Latin-1 password?)") from None
    try:
        parsed = sa.make_url(url)
    except (exc.ArgumentError, ValueError) as error:  # ValueError: a port that is not a number
        raise ConfigError(f"database_url is not a valid SQLAlchemy URL: {error}") from None
    backend = parsed.get_backend_name()
    dialect = _DIALECTS.get("mysql" if backend == "mariadb" else backend)
    if dialect is None:
        raise ConfigError(f"unsupported database {backend!r}: use mysql, mariadb, postgresql or sqlite")
    try:
        engine = dialect.engine(parsed, pool_size, create=create, **options)
    except exc.NoSuchModuleError:  # a misspelt driver (`mysql+pymsql://`): a setting to fix, not a traceback
        raise ConfigError(f"database_url names a driver SQLAlchemy does not know: {parsed.drivername!r} (leave it "
                          f"out, {backend}://…, for the one pending-jobs uses)") from None
    except (ValueError, TypeError) as error:  # a parameter SQLAlchemy converts for the driver: `?connect_timeout=ten`
        raise ConfigError(f"database_url: the driver refuses its parameters: {type(error).__name__}: {error}") from None
    db.refuse_bad_parameters(engine)
    hang.track(engine)  # once per connection opened: a run's watch may have to shut them down (hang.py)
    return engine


def dialect_of_error(error: BaseException) -> Dialect | None:
    """The dialect whose driver raised `error` (by the driver's module), or None for another error."""
    module = type(getattr(error, "orig", None) or error).__module__.split(".")[0]
    return _DRIVERS.get(module)


def ours(error: BaseException) -> BaseException:
    """A driver error raised outside a store verb (e.g. while migrating), as the store would have raised
    it: ConfigError for refused credentials, DatabaseUnavailable for a database that is not there."""
    dialect = dialect_of_error(error)
    if dialect is None:
        return error
    problem = dialect.config_problem(error)
    if problem is not None:
        return ConfigError(problem)
    if dialect.unavailable(error):
        return DatabaseUnavailable(db.describe(error))
    return error
