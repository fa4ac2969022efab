"""What an error of a declared SQL task means: fail now (the statement or the data is wrong) or retry.

Failing at once: integrity errors (duplicate key, foreign key, NOT NULL, CHECK), data errors (a value of
the wrong type or out of range), and statements the database cannot run (syntax, unknown table or
column, no privilege) — another attempt would meet the same error. Retried with the task's backoff:
deadlocks, lock-wait and statement timeouts, a lost connection, a read-only or restarting server,
and anything not recognised (retrying loses nothing; max_attempts bounds it).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from sqlalchemy import exc

from .. import db
from ..validation import clean_text

Verdict = Literal["fail", "retry"]
MESSAGE_LIMIT = 600

# MySQL/MariaDB errors that another attempt cannot fix. PyMySQL raises several of them as
# OperationalError (any number it does not map, such as 1054 unknown column), so the number decides.
MYSQL_PERMANENT = {
    1048,  # column cannot be null
    1054,  # unknown column
    1062,  # duplicate entry
    1064,  # syntax error
    1136,  # column count does not match value count
    1142, 1143,  # command / column denied to user
    1146,  # table does not exist
    1242,  # subquery returns more than one row
    1264,  # out of range value
    1292,  # incorrect (truncated) value
    1305,  # function does not exist
    1364,  # field has no default value
    1366,  # incorrect value for the column's type
    1406,  # data too long
    1451, 1452,  # foreign key constraint fails
    3819,  # MySQL: check constraint violated
    4025,  # MariaDB: CONSTRAINT failed
}
MYSQL_STATEMENT_TIMEOUT = (1969, 3024)  # MariaDB max_statement_time / MySQL max_execution_time
PG_PERMANENT_CLASSES = ("22", "23", "42")  # data exception, integrity constraint, syntax or access rule
PG_TIMEOUTS = ("57014", "55P03")  # query_canceled (statement_timeout), lock_not_available (lock_timeout)
SQLITE_PERMANENT = ("no such table", "no such column", "syntax error", "has no column named", "no such function",
                    "values for", "incomplete input", "unrecognized token", "near \"")


def classify(error: exc.DBAPIError) -> tuple[Verdict, str]:
    """('fail' or 'retry', a reason naming what happened and, for integrity errors, the constraint)."""
    message = driver_message(error.orig)
    if isinstance(error, exc.IntegrityError) or _mysql_code(error) in (1062, 1048, 1451, 1452, 3819, 4025):
        return "fail", f"integrity error on {constraint_of(error, message)}: {message}"
    if db.is_retryable(error) or _pg_code(error) in PG_TIMEOUTS or _mysql_code(error) in MYSQL_STATEMENT_TIMEOUT:
        return "retry", f"lock conflict or timeout, will retry: {message}"
    # Before the connection checks: those match words in messages ("Unknown column 'connection'").
    if _permanent(error, message):
        kind = "data error" if isinstance(error, exc.DataError) else "the statement cannot run"
        return "fail", f"{kind}: {message}"
    if db.is_connection_lost(error) or db.is_unavailable(error):
        return "retry", f"database connection lost or unavailable, will retry: {message}"
    return "retry", f"database error, will retry: {message}"


def _permanent(error: exc.DBAPIError, message: str) -> bool:
    if error.connection_invalidated:
        return False
    if isinstance(error, exc.DataError | exc.ProgrammingError):
        return True
    code = _mysql_code(error)
    if code is not None:
        return code in MYSQL_PERMANENT
    pg = _pg_code(error)
    if pg is not None:
        return pg.startswith(PG_PERMANENT_CLASSES)
    lowered = message.lower()
    return any(marker in lowered for marker in SQLITE_PERMANENT)


def constraint_of(error: exc.DBAPIError, message: str) -> str:
    """The constraint an integrity error names, as each database reports it."""
    diag = getattr(error.orig, "diag", None)
    name = getattr(diag, "constraint_name", None)  # PostgreSQL says exactly
    if name:
        return f"constraint {name}"
    patterns = (
        (r"for key '([^']+)'", "constraint {}"),  # MySQL/MariaDB 1062: the unique key (MySQL 8: table.key)
        (r"CONSTRAINT `([^`]+)`", "constraint {}"),  # MySQL/MariaDB foreign key, MariaDB CHECK
        (r"[Cc]heck constraint '([^']+)'", "constraint {}"),  # MySQL 8 CHECK
        (r"Column '([^']+)' cannot be null", "NOT NULL on column {}"),
        (r"(UNIQUE|NOT NULL|CHECK|PRIMARY KEY) constraint failed: (.+)", "{} constraint on {}"),  # SQLite
        (r"FOREIGN KEY constraint failed", "a FOREIGN KEY constraint"),
    )
    for pattern, label in patterns:
        found = re.search(pattern, message)
        if found:
            return label.format(*(group.strip() for group in found.groups()))
    pg_null = getattr(diag, "column_name", None)
    return f"NOT NULL on column {pg_null}" if pg_null else "a constraint"


def driver_message(orig: BaseException | None) -> str:
    """The driver's own message (without the SQL and parameters SQLAlchemy appends), on one line."""
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    if len(args) >= 2 and isinstance(args[0], int):  # PyMySQL: (number, message)
        text = f"({args[0]}) {args[1]}"
    else:
        text = str(orig)
    text = " ".join(text.split())
    return clean_text(text[:MESSAGE_LIMIT] + (" …" if len(text) > MESSAGE_LIMIT else ""), MESSAGE_LIMIT + 2)


def _mysql_code(error: exc.DBAPIError) -> int | None:
    args = getattr(error.orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _pg_code(error: exc.DBAPIError) -> str | None:
    code = getattr(error.orig, "sqlstate", None)
    return str(code) if code else None
