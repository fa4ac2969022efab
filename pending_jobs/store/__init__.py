"""The storage layer: all SQL lives below this package."""

from __future__ import annotations

import sqlalchemy as sa

from .. import db
from .base import Store
from .inserts import insert_jobs
from .models import Claim, ClaimedJob, Finished, Job, utc
from .mysql import MySQLStore
from .postgres import PostgresStore
from .sqlite import SQLiteStore

__all__ = ["Claim", "ClaimedJob", "Finished", "Job", "Store", "insert_jobs", "open_store", "store_for", "utc"]

_STORES: dict[str, type[Store]] = {"mysql": MySQLStore, "postgresql": PostgresStore, "sqlite": SQLiteStore}


def open_store(engine: sa.Engine) -> Store:
    """The store for this engine's dialect."""
    return _STORES[db.dialect_name(engine)](engine)


def store_for(conn: sa.Connection) -> Store:
    """The store for a connection's dialect (used for its SQL expressions)."""
    return _STORES[db.dialect_name(conn)](conn.engine)
