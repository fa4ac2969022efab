"""What an error of a declared SQL task means: fail now (the statement or the data is wrong) or retry.

Failing at once: integrity errors (duplicate key, foreign key, NOT NULL, CHECK), data errors (a value of
the wrong type or out of range), and statements the database cannot run (syntax, unknown table or
column, no privilege) — another attempt would meet the same error. Retried with the task's backoff:
deadlocks, lock-wait and statement timeouts, a lost connection, a read-only or restarting server,
and anything not recognised (retrying loses nothing; max_attempts bounds it).
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import exc

from ..store import Dialect
from ..validation import clean_text

Verdict = Literal["fail", "retry"]
MESSAGE_LIMIT = 600

def classify(error: exc.DBAPIError, dialect: Dialect) -> tuple[Verdict, str]:
    """('fail' or 'retry', a reason naming what happened and, for integrity errors, the constraint)."""
    message = driver_message(error.orig)
    if dialect.integrity(error):
        return "fail", f"integrity error on {dialect.constraint_of(error) or 'a constraint'}: {message}"
    if dialect.retryable(error) or dialect.timed_out(error):
        return "retry", f"lock conflict or timeout: {message}"
    if dialect.permanent(error):
        kind = "data error" if isinstance(error, exc.DataError) else "the statement cannot run"
        return "fail", f"{kind}: {message}"
    if dialect.connection_lost(error) or dialect.unavailable(error):
        return "retry", f"database connection lost or unavailable: {message}"
    return "retry", f"database error: {message}"


def driver_message(orig: BaseException | None) -> str:
    """The driver's own message (without the SQL and parameters SQLAlchemy appends), on one line."""
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    if len(args) >= 2 and isinstance(args[0], int):  # PyMySQL: (number, message)
        text = f"({args[0]}) {args[1]}"
    else:
        text = str(orig)
    text = " ".join(text.split())
    return clean_text(text[:MESSAGE_LIMIT] + (" …" if len(text) > MESSAGE_LIMIT else ""), MESSAGE_LIMIT + 2)
