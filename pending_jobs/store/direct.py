"""Write statements of a declared sql task run on the driver's own cursor, inside a shared transaction.

In a shared transaction (shared.py) a job's INSERT is most of its CPU, and `Connection.execute` of a
text() costs twice what the driver's cursor does: ≈ 160 against 80 µs per statement with PyMySQL,
≈ 200 against 87 µs with psycopg (measured on the development machine, one connection, 2,000 INSERTs).
Only for statements that return no rows — their verb writes and they say no RETURNING — so the result
is the row count and the driver's last insert id, exactly what the statement run through
`Connection.execute` reports. Parameters go to the driver as SQLAlchemy hands a text()'s untyped
parameters over: as they are. Any error is raised as the driver raised it; the caller (a shared
transaction) then runs the job alone, through SQLAlchemy, where the error gets its verdict.

Where the driver can pipeline (psycopg's pipeline mode on PostgreSQL), the statements of all the jobs
given at once are sent without waiting for each answer: one round trip for a whole group instead of
one per statement, each statement still with its own cursor and so its own row count. An error aborts
the pipeline and is raised for the whole call; the caller then runs the jobs one at a time to find
whose statement it was.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from . import dialect_for

WRITES = ("insert", "update", "delete", "replace")
_RETURNING = re.compile(r"\breturning\b", re.IGNORECASE)


def direct(statement: str, verb: str) -> bool:
    """Whether `statement` (first keyword `verb`) may run on the driver's cursor: it writes, returns no rows."""
    return verb in WRITES and not _RETURNING.search(statement)


@dataclasses.dataclass(frozen=True)
class Written:
    """What a statement that returns no rows did."""

    rowcount: int
    inserted_id: int | None


@dataclasses.dataclass(frozen=True)
class _Compiled:
    sql: str
    positional: tuple[str, ...] | None
    """Parameter names in order, for a driver whose placeholders are positional (sqlite3's `?`)."""

    def execute(self, cursor: Any, params: Mapping[str, Any]) -> None:
        if self.positional is None:
            cursor.execute(self.sql, dict(params))
        else:
            cursor.execute(self.sql, tuple(params[name] for name in self.positional))


class DirectStatements:
    """Statements compiled once per database dialect, run on a connection's driver cursor."""

    def __init__(self, clauses: Sequence[sa.TextClause]) -> None:
        self._clauses = list(clauses)
        self._compiled: dict[int, list[_Compiled]] = {}  # by id of the SQLAlchemy dialect (one engine each)

    def run(self, conn: sa.Connection, jobs: Sequence[Sequence[Mapping[str, Any]]]) -> list[list[Written]]:
        """For each job, each statement with that job's values, in order, in `conn`'s transaction."""
        compiled = self._compiled.get(id(conn.dialect))
        if compiled is None:
            compiled = self._compiled[id(conn.dialect)] = [self._compile(clause, conn) for clause in self._clauses]
        dialect = dialect_for(conn)
        pipeline = dialect.pipeline(conn.connection.dbapi_connection) if len(jobs) * len(compiled) > 1 else None
        if pipeline is None:
            cursor = conn.connection.cursor()
            try:
                done: list[list[Written]] = []
                for values in jobs:
                    done.append([])
                    for statement, params in zip(compiled, values, strict=True):
                        statement.execute(cursor, params)
                        done[-1].append(_written(cursor, dialect.last_id))
                return done
            finally:
                cursor.close()
        cursors: list[list[Any]] = []
        try:
            with pipeline:
                for values in jobs:
                    cursors.append([])
                    for statement, params in zip(compiled, values, strict=True):
                        cursors[-1].append(conn.connection.cursor())
                        statement.execute(cursors[-1][-1], params)
            return [[_written(cursor, dialect.last_id) for cursor in own] for own in cursors]
        finally:
            for own in cursors:
                for cursor in own:
                    cursor.close()

    @staticmethod
    def _compile(clause: sa.TextClause, conn: sa.Connection) -> _Compiled:
        compiled = clause.compile(dialect=conn.dialect)
        positional = tuple(compiled.positiontup or ()) if compiled.positional else None
        return _Compiled(compiled.string, positional)


def _written(cursor: Any, last_id: Callable[[int, Any], int | None]) -> Written:
    """What the statement the cursor ran did."""
    if cursor.description is not None:
        raise RuntimeError("a statement taken for a write returned rows")
    rowcount = int(cursor.rowcount)
    return Written(rowcount, last_id(rowcount, getattr(cursor, "lastrowid", None)))
