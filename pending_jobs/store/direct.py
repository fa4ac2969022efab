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

Fewer statements still: a task whose one statement is a plain one-row `INSERT INTO t (…) VALUES (…)`
goes as one INSERT of many rows for all the jobs given at once: on MariaDB 10.5+ ending `RETURNING`
the table's generated id (its rows come back in the order of the VALUES, so each job still gets its
own id), on PostgreSQL as it is (a job's result there is its row count alone); on MySQL, which has no
RETURNING, one by one. Each job's row binds that job's values; an error raises for the whole call, as
above, and a row count other than one a job is an error too. Only a shape that leaves no doubt goes
together: a table named plainly, one row of values with no quote, comment or `;` in it, nothing after
it (no ON DUPLICATE KEY or ON CONFLICT, whose counts differ; no IGNORE, which would drop rows).
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from . import dialect_for
from .dialect import Dialect

WRITES = ("insert", "update", "delete", "replace")
_RETURNING = re.compile(r"\breturning\b", re.IGNORECASE)
_INSERT_HEAD = re.compile(r"\s*insert\s+into\s+(`?)(\w+)\1\s*(?:\([^()'\"`;#-]*\)\s*)?values\s*", re.IGNORECASE)
STATEMENT_CHARS = 1_000_000
"""Characters of values beyond which rows go in another INSERT: far below MariaDB's max_allowed_packet
(16 MiB by default), whose breach would end the connection, whatever the payload limit allows a job."""
STATEMENT_ROWS = 1_000  # and rows: PostgreSQL binds at most 65,535 parameters a statement
_PLACEHOLDER = re.compile(r"%%|%\((\w+)\)s")  # pyformat, as SQLAlchemy compiles a text() for PyMySQL and psycopg
_UNPARSED = ("'", '"', "`", "\\", ";", "#", "--", "/*")  # quotes, comments, a second statement: sent as written


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


@dataclasses.dataclass(frozen=True)
class _Rows:
    """A one-row INSERT sent as one INSERT of many rows: `head`, each job's `row` (its values bound in the
    order of `names`), then `suffix`; cut in several where the values grow long (STATEMENT_CHARS)."""

    head: str
    row: str  # with positional placeholders (%s): each job's values bound in turn, no name can collide
    names: tuple[str, ...]
    suffix: str  # RETURNING the generated id, or ''

    @classmethod
    def of(cls, head: str, row: str, suffix: str) -> _Rows:
        names: list[str] = []

        def positional(found: re.Match[str]) -> str:
            if found.group(1) is None:
                return found.group(0)  # %%: a literal percent sign, as the driver reads it
            names.append(found.group(1))
            return "%s"

        return cls(head, _PLACEHOLDER.sub(positional, row), tuple(names), suffix)

    def run(self, cursor: Any, jobs: Sequence[Sequence[Mapping[str, Any]]]) -> list[list[Written]]:
        done: list[list[Written]] = []
        values: list[Any] = []
        rows = size = 0
        for number, job in enumerate(jobs, 1):
            params = job[0]
            for name in self.names:
                values.append(params[name])
                size += len(params[name]) if isinstance(params[name], str) else 8
            rows += 1
            if size > STATEMENT_CHARS or rows == STATEMENT_ROWS or number == len(jobs):
                done += self._insert(cursor, rows, values)
                values, rows, size = [], 0, 0
        return done

    def _insert(self, cursor: Any, rows: int, values: list[Any]) -> list[list[Written]]:
        cursor.execute(self.head + ", ".join([self.row] * rows) + self.suffix, values)
        if not self.suffix:
            if cursor.rowcount != rows:
                raise RuntimeError(f"an INSERT of {rows} rows reported {cursor.rowcount}")
            return [[Written(1, None)] for _ in range(rows)]
        ids = [row[0] for row in cursor.fetchall()]
        if len(ids) != rows:
            raise RuntimeError(f"an INSERT of {rows} rows returned {len(ids)}")
        return [[Written(1, int(new) if new else None)] for new in ids]


class DirectStatements:
    """Statements compiled once per database dialect, run on a connection's driver cursor."""

    def __init__(self, clauses: Sequence[sa.TextClause]) -> None:
        self._clauses = list(clauses)
        self._compiled: dict[int, list[_Compiled]] = {}  # by id of the SQLAlchemy dialect (one engine each)
        self._rows: dict[int, _Rows | None] = {}  # the same, where the statement goes as one INSERT of many rows
        self._looking = threading.Lock()  # a run's workers start together: one of them looks the table up

    def run(self, conn: sa.Connection, jobs: Sequence[Sequence[Mapping[str, Any]]]) -> list[list[Written]]:
        """For each job, each statement with that job's values, in order, in `conn`'s transaction."""
        compiled = self._compiled.get(id(conn.dialect))
        if compiled is None:
            compiled = self._compiled[id(conn.dialect)] = [self._compile(clause, conn) for clause in self._clauses]
        dialect = dialect_for(conn)
        if len(jobs) > 1 and (rows := self._many_rows(conn, dialect, compiled)) is not None:
            cursor = conn.connection.cursor()
            try:
                return rows.run(cursor, jobs)
            finally:
                cursor.close()
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

    def _many_rows(self, conn: sa.Connection, dialect: Dialect, compiled: Sequence[_Compiled]) -> _Rows | None:
        """The statement as one INSERT of many rows, where its shape and the database allow (see the module)."""
        if id(conn.dialect) in self._rows:
            return self._rows[id(conn.dialect)]
        with self._looking:
            if id(conn.dialect) in self._rows:  # another worker looked while this one waited
                return self._rows[id(conn.dialect)]
            shape = one_row_insert(compiled[0].sql) if len(compiled) == 1 and compiled[0].positional is None else None
            # Decided once per process: a table created after the first group only goes together after a restart.
            suffix = None if shape is None else dialect.insert_rows_suffix(conn, shape[1])
            rows = self._rows[id(conn.dialect)] = None if shape is None or suffix is None else _Rows.of(
                shape[0], shape[2], suffix)
            return rows

    @staticmethod
    def _compile(clause: sa.TextClause, conn: sa.Connection) -> _Compiled:
        compiled = clause.compile(dialect=conn.dialect)
        positional = tuple(compiled.positiontup or ()) if compiled.positional else None
        return _Compiled(compiled.string, positional)


def one_row_insert(sql: str) -> tuple[str, str, str] | None:
    """(`INSERT INTO t (…) VALUES `, t, the row) of a compiled one-row INSERT that may go with others as one
    INSERT of many rows, or None (see the module for the shapes that may)."""
    head = _INSERT_HEAD.match(sql)
    row = sql[head.end():].rstrip() if head else ""
    if not row.startswith("(") or any(mark in row for mark in _UNPARSED):
        return None
    depth = 0
    for at, char in enumerate(row):
        depth += (char == "(") - (char == ")")
        if depth == 0:  # the row's closing parenthesis: nothing may follow it
            return (head.group(0), head.group(2), row) if head and at == len(row) - 1 else None
    return None


def _written(cursor: Any, last_id: Callable[[int, Any], int | None]) -> Written:
    """What the statement the cursor ran did."""
    if cursor.description is not None:
        raise RuntimeError("a statement taken for a write returned rows")
    rowcount = int(cursor.rowcount)
    return Written(rowcount, last_id(rowcount, getattr(cursor, "lastrowid", None)))
