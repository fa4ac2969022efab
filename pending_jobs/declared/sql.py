"""`sql` tasks: statements with the payload's values bound by name, in the job's own transaction.

On the job database the statements run on `ctx.connection`, so their writes commit together with the
job's `succeeded` and are rolled back with a failure or a lost lease: exactly once. With
`database_url` they run in a transaction of their own on that database, committed before the job's
outcome is recorded: a runner killed in between runs them again (at least once).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import json
import math
import re
import threading
import types
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc

from ..errors import ConfigError, Fail
from ..registry import Backoff, Task
from ..schedules import SCHEDULE_KEY
from ..store import Dialect, create_engine, dialect_for
from ..store.direct import DirectStatements, Written, direct
from .base import backoff_of, effective_limit, retry, task_of
from .spec import SqlSpec
from .sqlerrors import classify

BACKSTOP_MARGIN = 5.0  # seconds past the task's timeout before the runner abandons the worker thread
RESULT_OVERHEAD = 64  # bytes of a result's keys and brackets, beside its rows
READS = ("select", "with", "values", "show", "explain", "table", "pragma")
"""First words of statements whose rows are the result (no `rowcount`)."""
SHARED = types.SimpleNamespace(attempt=1)
"""The context of a job in a shared transaction: only a verdict's backoff reads it, and a job that errs
there is run again alone, where its own context gives the verdict that is recorded."""
_VERB = re.compile(r"^\s*(?:(?:--[^\n]*(?:\n|$)|/\*.*?\*/)\s*)*(\w+)", re.DOTALL)
ENDS_TRANSACTION = frozenset({"begin", "start", "commit", "rollback", "savepoint", "release", "end", "abort", "xa"})
CHANGES_SESSION = frozenset({"use", "reset", "discard", "listen", "unlisten", "prepare", "deallocate", "attach",
                             "detach", "handler"})
_SAFE_SET = re.compile(r"\s*set\s+(?:local\b|constraints\b|@(?!@))", re.IGNORECASE)
_SET_STATEMENT = re.compile(r"\s*set\s+statement\b.*?\bfor\b(.*)", re.IGNORECASE | re.DOTALL)
_SET_MORE = re.compile(r",\s*(?:@@|(?:global|session|local|persist)\b|[a-z_]\w*\s*:?=)", re.IGNORECASE)
_BIND = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")  # a :name as SQLAlchemy's text() finds it (not \:name or ::cast)
_CAST_BIND = re.compile(r"(?<![:\w\\]):(\w+)::(\w*)")  # :name::type, where text() sees no :name
_RUN_COMMENT = re.compile(r"/\*M?!")  # /*! … */ and /*M! … */: MariaDB and MySQL run what they hold
_PRAGMA_CALL = re.compile(r"\s*pragma\s+(?:\w+\s*\.\s*)?(\w+)\s*\(", re.IGNORECASE)
READ_PRAGMAS = frozenset({"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
                          "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check"})
"""PRAGMAs that take an argument in parentheses and only read: any other `PRAGMA name(value)` sets it."""
_SET_CONFIG = re.compile(r"\bset_config\s*\(", re.IGNORECASE)


def _quoted(backslash: bool) -> re.Pattern[str]:
    """What text() binds a :name in although the database would not read one there: quoted text and
    comments, found in one pass, left to right, so that a quote inside a comment (-- don't) starts no
    string. `backslash`: whether \\' inside a string is a quote (MySQL's strings) or the string's end."""
    escaped = r"|\\." if backslash else ""
    single, double = (r"[^'\\]", r'[^"\\]') if backslash else ("[^']", '[^"]')
    return re.compile(
        r"(?<![\w$])\$((?:[a-z_]\w*)?)\$.*?\$\1\$"  # a PostgreSQL dollar-quoted string
        r"|(?P<comment>--(?=\s|$)[^\n]*|/\*.*?\*/)"  # a comment: -- needs a space after it on MySQL
        r"|\be'(?:[^'\\]|''|\\.)*'"  # a PostgreSQL escape string, \' inside
        rf"|'(?:{single}|''{escaped})*'"  # a string literal
        rf'|"(?:{double}|""{escaped})*"'  # a quoted identifier (a string on MySQL)
        r"|`(?:[^`]|``)*`",  # a MySQL identifier
        re.DOTALL | re.IGNORECASE)


_QUOTED = {backslash: _quoted(backslash) for backslash in (False, True)}


def build(spec: SqlSpec, payload_limit: int, pool_size: int, dialect: Dialect | None) -> Task:
    """The registry entry of a declared SQL task; ConfigError for a statement it may not run (`refused`)
    on its database, of `dialect`."""
    for number, statement in enumerate(spec.statements, 1):
        problem = refused(statement, dialect)
        if problem is not None:
            where = f"statement {number} of {len(spec.statements)}: " if len(spec.statements) > 1 else ""
            raise ConfigError(f"[task.{spec.name}] sql: {where}{problem}")
    runner = SqlTask(spec, payload_limit, pool_size)
    backstop = None if spec.policy.timeout is None else spec.policy.timeout + BACKSTOP_MARGIN
    task = task_of(spec.name, runner, spec.policy, backstop)
    if spec.database_url is None and spec.policy.timeout is None and "call" not in runner.verbs:
        # On the job database, jobs of one claim may share a transaction (one COMMIT for all of them).
        # Not with a timeout: the runner's watchdog gives up on one job, not on a shared transaction. Nor a
        # CALL: a procedure may COMMIT where nothing here sees it, and then only its own job is at stake.
        task = dataclasses.replace(task, shared=runner.shared)
    return task


def refused(statement: str, dialect: Dialect | None) -> str | None:
    """Why `statement` may not be one of an sql task's (they run inside the job's transaction, on a pooled
    connection) on the task's database, of `dialect` (None: a URL of no known database), or None."""
    implicit_commits = dialect.implicit_commits if dialect is not None else frozenset()
    code, comments = _code(statement, dialect)
    if any(_RUN_COMMENT.match(comment) for comment in comments):
        return ("a /*! … */ comment is run by MariaDB/MySQL, past these checks (a COMMIT or a CREATE in it would "
                "end the job's transaction): write its SQL out")
    if ";" in code.rstrip().rstrip(";"):  # PostgreSQL runs each of them, `check`'s PREPARE too
        return "one statement per entry: this one holds several (a ';' outside quotes); list each in sql = [...]"
    first = verb(statement)
    shown = first.upper()
    if first in ENDS_TRANSACTION:
        return (f"{shown} would end the job's transaction: pending-jobs begins it and commits the statements "
                "together with the job's outcome (exactly-once)")
    if first in implicit_commits:
        instead = "DELETE FROM" if first == "truncate" else 'a command task (["mariadb", "-e", "…"])'
        return (f"{shown} commits the open transaction on MariaDB/MySQL (an implicit commit), so the job's "
                f"writes would no longer commit with its outcome; use {instead} instead")
    if first in CHANGES_SESSION:
        return f"{shown} changes the session of a pooled connection that later jobs and the runner share"
    if first == "set":
        inner = _SET_STATEMENT.match(statement)
        if inner is not None:  # MariaDB: SET STATEMENT var = … FOR <statement>, for that statement alone
            return refused(inner.group(1), dialect)
        if _SAFE_SET.match(code) is None or _SET_MORE.search(code) is not None:  # SET @a=1,/**/autocommit=0
            return ("SET changes the session of a pooled connection that later jobs and the runner share "
                    "(allowed: SET @variable; SET LOCAL and SET CONSTRAINTS on PostgreSQL; SET STATEMENT … FOR "
                    "on MariaDB)")
    called = _PRAGMA_CALL.match(code) if first == "pragma" else None
    if first == "pragma" and ("=" in code or (called is not None and called.group(1).lower() not in READ_PRAGMAS)):
        return "PRAGMA … = or PRAGMA name(value) changes the SQLite connection that later jobs and the runner share"
    if _SET_CONFIG.search(code):
        return ("set_config() can change the session of a pooled connection that later jobs and the runner share "
                "(its search_path, say); use SET LOCAL")
    cast = _CAST_BIND.search(code)
    if cast is not None:
        name, kind = cast.groups()
        return (f":{name}::{kind} is no parameter: SQLAlchemy reads no :name right before '::', so :{name} would "
                f"reach the database as it is; write :{name} ::{kind} or CAST(:{name} AS {kind or 'type'})")
    for quoted in _QUOTED[dialect is None or dialect.backslash_escapes].finditer(statement):
        if (inside := _BIND.search(quoted.group())) is None:
            continue
        name = inside.group(1)
        if quoted.group("comment") is not None:  # PostgreSQL and SQLite refuse the unread parameter
            return (f"the comment {quoted.group()[:60]!r} holds :{name}, which would be bound there too, as a "
                    f"parameter the database does not read; write \\:{name} or leave it out")
        return (f"the string {quoted.group()[:60]!r} holds :{name}, which would be bound there too, "
                f"breaking the string; write \\:{name} for a literal colon")
    return None


def _code(statement: str, dialect: Dialect | None) -> tuple[str, list[str]]:
    """`statement` with its quoted text and comments blanked out (what the database reads as SQL), and its
    comments."""
    comments: list[str] = []

    def blank(quoted: re.Match[str]) -> str:
        if quoted.group("comment") is None:
            return "''"
        comments.append(quoted.group())
        return " "

    return _QUOTED[dialect is None or dialect.backslash_escapes].sub(blank, statement), comments


def parameters(statement: str) -> tuple[str, ...]:
    """The `:name` parameters of one statement, as SQLAlchemy's text() finds them (`\\:` escapes a colon)."""
    return tuple(sa.text(statement).compile().params)


def verb(statement: str) -> str:
    """The statement's first keyword, lower case ('' when there is none)."""
    found = _VERB.match(statement)
    return found.group(1).lower() if found else ""


class SqlTask:
    """Runs one declared task's statements; one instance serves every worker thread."""

    def __init__(self, spec: SqlSpec, payload_limit: int, pool_size: int) -> None:
        self.spec = spec
        self.clauses = [sa.text(statement) for statement in spec.statements]
        self.names = [parameters(statement) for statement in spec.statements]
        self.needed = frozenset(name for names in self.names for name in names)
        self.verbs = [verb(statement) for statement in spec.statements]
        self.limit = effective_limit(spec.policy, payload_limit)
        self.backoff: Backoff = backoff_of(spec.policy)
        self.pool_size = pool_size
        self._engine: sa.Engine | None = None
        self._lock = threading.Lock()
        self._bounded_clauses: list[sa.TextClause] | None = None
        writes = all(direct(statement, first) for statement, first in zip(spec.statements, self.verbs, strict=True))
        self.direct = DirectStatements(self.clauses) if writes else None
        """For a shared transaction, when every statement only writes (no rows to read back)."""

    def __call__(self, payload: dict[str, Any], ctx: Any) -> Any:
        params = self.bind(payload)
        if self.spec.database_url is None:
            return self.run(ctx.connection, params, ctx)
        try:
            with self.engine().begin() as conn:  # its own transaction, committed here: not exactly-once
                return self.run(conn, params, ctx)
        except exc.DBAPIError as error:  # connecting or committing
            raise self._verdict(error, ctx, "", dialect_for(self.engine())) from None

    def shared(self, payloads: Sequence[dict[str, Any]], conn: sa.Connection,
               stopping: Callable[[], bool] = lambda: False) -> list[Any]:
        """The statements of several jobs on `conn`, in a transaction other jobs share; any error is raised
        as it is (the runner then runs them one at a time, and the one that errs alone, through `__call__`,
        which gives it its verdict). Statements that only write run on the driver's cursor, all of these
        jobs' together (store/direct.py), with the same result. Others run job by job, and stop before a job
        once `stopping()` (the run stops): the results of the jobs run so far."""
        bound = [self.bind(payload) for payload in payloads]
        if self.direct is None:
            results: list[Any] = []
            for params in bound:
                if stopping():
                    break
                results.append(self.run(conn, params, SHARED))
            return results
        written = self.direct.run(conn, [[{key: params[key] for key in names} for names in self.names]
                                         for params in bound])
        return [self._written(done) for done in written]

    def _written(self, written: Sequence[Written]) -> Any:
        results = []
        for done, first in zip(written, self.verbs, strict=True):
            out: dict[str, Any] = {"rowcount": done.rowcount}
            if done.inserted_id is not None and first in ("insert", "replace"):
                out["inserted_id"] = done.inserted_id
            results.append(out)
        return results[0] if len(results) == 1 else {"statements": results}

    def bind(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The payload as parameters; Fail when one is missing, unused, or not a scalar."""
        name = self.spec.name
        if isinstance(payload.get(SCHEDULE_KEY), dict):
            payload = self._scheduled(payload)
        missing = sorted(self.needed - payload.keys())
        if missing:
            more = f" (and {len(missing) - 1} more: {', '.join(missing[1:])})" if len(missing) > 1 else ""
            raise Fail(f"payload has no parameter {missing[0]!r} (needed by task {name}){more}")
        extra = sorted(payload.keys() - self.needed)
        if extra:
            raise Fail(f"payload has key {extra[0]!r}, which no statement of task {name} uses "
                       f"(extra keys are refused: a misspelt key would otherwise be lost silently)")
        for key in sorted(self.needed):
            value = payload[key]
            if isinstance(value, dict | list):
                kind = "an object" if isinstance(value, dict) else "an array"
                raise Fail(f"parameter {key!r} of task {name} is {kind}: only strings, numbers, booleans and "
                           f"null can be bound (send JSON as a string)")
        return payload

    def _scheduled(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A schedule's job: its `_schedule` object ({"name", "slot"}, schedules.py) could be neither bound nor
        left unused, so it becomes `:_schedule_name` and `:_schedule_slot`, for the statements that use them."""
        schedule = payload[SCHEDULE_KEY]
        params = {key: value for key, value in payload.items() if key != SCHEDULE_KEY}
        for part in ("name", "slot"):
            key = f"{SCHEDULE_KEY}_{part}"
            if key in self.needed and key not in params:
                params[key] = schedule.get(part)
        return params

    def engine(self) -> sa.Engine:
        """The other database's engine, created on first use."""
        with self._lock:
            if self._engine is None:
                # create=False: a typo in an SQLite path fails the job, not creates an empty database to run in.
                self._engine = create_engine(str(self.spec.database_url), pool_size=self.pool_size, create=False)
            return self._engine

    def run(self, conn: sa.Connection, params: dict[str, Any], ctx: Any) -> Any:
        """Execute every statement in order on `conn`; the result of one, or of each under "statements"."""
        clauses = self._with_timeout(conn, ctx)
        budget = [self.limit - RESULT_OVERHEAD * len(clauses)]
        results = []
        for number, (clause, names, first) in enumerate(zip(clauses, self.names, self.verbs, strict=True), 1):
            where = f"statement {number} of {len(clauses)}: " if len(clauses) > 1 else ""
            values = {key: params[key] for key in names}
            options = {"stream_results": True, "max_row_buffer": self.spec.max_rows + 1} if first in READS else {}
            try:
                result = conn.execute(clause, values, execution_options=options)
                results.append(self._result(result, first, conn, budget))
            except exc.DBAPIError as error:
                raise self._verdict(error, ctx, where, dialect_for(conn)) from None
            except exc.StatementError as error:  # raised before the database saw it, e.g. binding a value
                raise Fail(f"{where}{type(error.orig).__name__}: {error.orig}") from None
            except OverflowError as error:  # sqlite3 binds no integer past 64 bits (the others refuse it in SQL)
                raise Fail(f"{where}a number too large for the database: {error}") from None
        return results[0] if len(results) == 1 else {"statements": results}

    def _verdict(self, error: exc.DBAPIError, ctx: Any, where: str, dialect: Dialect) -> Exception:
        verdict, reason = classify(error, dialect)
        if verdict == "fail":
            return Fail(f"{where}{reason}")
        return retry(self.backoff, ctx, f"{where}{reason}")

    def _with_timeout(self, conn: sa.Connection, ctx: Any) -> Sequence[sa.TextClause]:
        """The statements, bounded by the task's timeout where the database can cancel a statement itself.

        PostgreSQL: SET LOCAL statement_timeout (this transaction only); MariaDB: SET STATEMENT
        max_statement_time FOR each statement; SQLite: a progress handler until the transaction ends. On
        MySQL 8 the runner's backstop abandons the thread.
        """
        timeout = self.spec.policy.timeout
        if timeout is None:
            return self.clauses
        bounded = dialect_for(conn).with_timeout(conn, self.spec.statements, timeout)
        if bounded is None:
            return self.clauses
        if self._bounded_clauses is None:
            self._bounded_clauses = [sa.text(statement) for statement in bounded]
        return self._bounded_clauses

    def _result(self, result: sa.CursorResult[Any], first: str, conn: sa.Connection, budget: list[int]) -> Any:
        if not result.returns_rows:
            out: dict[str, Any] = {"rowcount": result.rowcount}
            # PostgreSQL has no last insert id: `INSERT … RETURNING id` returns it as a row. SQLite's is the
            # connection's last one, stale when this INSERT added no row (INSERT OR IGNORE).
            inserted = dialect_for(conn).inserted_id(result) if first in ("insert", "replace") else None
            if inserted is not None:
                out["inserted_id"] = inserted
            return out
        keys = list(result.keys())
        count = result.rowcount  # before the result is closed
        rows: list[dict[str, Any]] = []
        truncated = False
        try:
            for row in result:
                if len(rows) >= self.spec.max_rows:
                    truncated = True
                    break
                item = {key: jsonable(value) for key, value in zip(keys, row, strict=False)}
                size = len(json.dumps(item, ensure_ascii=False, default=str).encode()) + 1
                if size > budget[0]:
                    truncated = True
                    break
                budget[0] -= size
                rows.append(item)
        finally:
            result.close()
        out = {"rows": rows} if first in READS else {"rowcount": max(count, len(rows)), "rows": rows}
        if truncated:
            out["truncated"] = True
        return out


def jsonable(value: Any) -> Any:
    """A column value as JSON: times ISO 8601, DECIMAL as an exact string, bytes as base64."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict | list):
        return json.loads(json.dumps(value, default=str))  # PostgreSQL json/jsonb, already parsed
    return str(value)
