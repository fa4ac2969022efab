"""PostgreSQL: what it does differently from the shared SQL (one UPDATE … RETURNING claims, as SQLite)."""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Row

from .. import db
from ..errors import ConfigError
from ..schema import callback_attempts, db_now
from ..schema import pending_jobs as J
from . import postgres_grants, postgres_probe
from .dialect import Dialect
from .hang import Probe
from .postgres_listen import CHANNEL, Listener

# Columns the bulk path binds as arrays, with the array type each is cast to.
_UNNEST_TYPES = {"task": "varchar[]", "payload": "jsonb[]", "queue": "varchar[]", "priority": "int[]",
                 "max_attempts": "int[]", "callback_url": "varchar[]", "concurrency_key": "varchar[]"}
ATTEMPT_TYPES = {"job_id": "BIGINT", "attempt": "INTEGER", "webhook_id": "TEXT", "url": "TEXT",
                 "status_code": "INTEGER", "error": "TEXT", "duration_ms": "INTEGER", "response_excerpt": "TEXT"}

SERIALIZATION = ("40001", "40P01")  # serialization failure, deadlock: run the transaction again
READ_ONLY = "25006"
SHUTDOWN = ("57P01", "57P02", "57P03")  # admin / crash shutdown, cannot connect now
REFUSED = ("28000", "28P01", "3D000", "42501")  # invalid authorization / password, unknown database, no privilege
PREPARED_GONE = ("26000", "42P05")  # invalid_sql_statement_name, duplicate_prepared_statement
PERMANENT_CLASSES = ("22", "23", "42")  # data exception, integrity constraint, syntax or access rule
TIMEOUTS = ("57014", "55P03")  # query_canceled (statement_timeout), lock_not_available (lock_timeout)
INDETERMINATE = "42P18"  # `SELECT $1`-like: the type comes from the value bound at run time
PREPARED = "pending_jobs_check"
# Statements PREPARE does not take (a syntax error there), though they run in a job: not checked, not failed.
# Any other first word, a typo too, is prepared and refused by the database.
UNPREPARABLE = re.compile(r"\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*(?:create|alter|drop|truncate|comment|grant|revoke"
                          r"|lock|do|call|refresh|reindex|vacuum|analyze|cluster|set|notify|copy|security|import)\b",
                          re.IGNORECASE | re.DOTALL)
ABANDON_WAIT = 0.5  # seconds `abandon` waits for a cancelled handler's thread to leave the driver


class Postgres(Dialect):
    """PostgreSQL 12+ (psycopg 3)."""

    name: ClassVar[str] = "postgresql"
    json_accepts_nul: ClassVar[bool] = False  # jsonb rejects \u0000
    hang_probe: ClassVar[Probe] = (postgres_probe.server_of, postgres_probe.answers)  # no read timeout: hang.py
    lock_wait: ClassVar[tuple[str, str] | None] = (
        f"SET lock_timeout = '{int(db.MIGRATE_LOCK_WAIT * 1000)}ms'", "RESET lock_timeout")

    def driver_url(self, url: sa.URL) -> sa.URL:
        return url if "+" in url.drivername else url.set(drivername="postgresql+psycopg")

    def engine(self, url: sa.URL, pool_size: int, create: bool = True, **options: Any) -> sa.Engine:
        # TCP keepalives end a read on a dead peer (libpq has no read timeout) in about a minute.
        connect: dict[str, Any] = {"options": "-c timezone=UTC", "connect_timeout": 10, "keepalives": 1,
                                   "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
        # connect_args override the URL's own parameters: `?options=-csearch_path%3Djobs` was dropped, and the
        # tables made in `public`. The URL's value wins; its libpq options keep UTC beside them.
        for key in [key for key in connect if key in url.query]:
            del connect[key]
        if "options" in url.query:
            given = url.query["options"]
            connect["options"] = f"{given if isinstance(given, str) else ' '.join(given)} -c timezone=UTC"
            url = url.difference_update_query(["options"])
        options.setdefault("connect_args", connect)
        return super().engine(_prepare_threshold(url, options), pool_size, create, **options)

    def in_transaction(self, dbapi_connection: Any) -> bool:
        status = getattr(getattr(dbapi_connection, "info", None), "transaction_status", None)
        return int(status) != 0 if status is not None else True  # psycopg: IDLE is 0

    def abandon(self, conn: sa.Connection) -> None:
        # psycopg holds `lock` while it is inside libpq, and a connection closed under a thread in there killed the
        # process (SIGSEGV). So cancel the statement the handler's thread runs (the protocol's cancel request, which
        # PgBouncer passes on), then close while holding the lock; the server rolls the transaction back.
        raw: Any = conn.connection.dbapi_connection
        with contextlib.suppress(Exception):  # nothing running, or the server unreachable: the close ends it
            raw.cancel_safe(timeout=ABANDON_WAIT * 4)
        if not raw.lock.acquire(timeout=ABANDON_WAIT):
            raise RuntimeError(f"its thread stayed inside the driver for {ABANDON_WAIT:g}s though its statement was "
                               "cancelled; its connection is closed when that call returns")
        try:
            conn.invalidate()
        finally:
            raw.lock.release()

    def retryable(self, error: BaseException) -> bool:
        return db.sqlstate(error) in SERIALIZATION

    def connection_lost(self, error: BaseException) -> bool:
        code = db.sqlstate(error)
        return super().connection_lost(error) or code in SHUTDOWN or code in ("08006", "08003") or (
            # libpq's own errors carry no SQLSTATE (and no data of ours): this one is an open socket closed.
            _libpq_error(error) and "server closed the connection" in str(getattr(error, "orig", "")))

    def prepare_problem(self, conn: sa.Connection, statement: str) -> str | None:
        if UNPREPARABLE.match(statement) is not None:
            return None
        sql = str(sa.text(statement).compile(dialect=_NUMBERED))
        cursor = conn.connection.cursor()
        try:  # no parameters given: psycopg sends the text as it is
            cursor.execute(f"PREPARE {PREPARED} AS {sql}")
            cursor.execute(f"DEALLOCATE {PREPARED}")
            return None
        except Exception as error:  # the driver's own classes (a raw cursor bypasses SQLAlchemy's)
            return None if getattr(error, "sqlstate", None) == INDETERMINATE else " ".join(str(error).split())
        finally:
            cursor.close()

    def with_timeout(self, conn: sa.Connection, statements: Sequence[str], timeout: float) -> list[str] | None:
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, int(timeout * 1000))}")  # this transaction
        return None

    def time_limit(self, conn: sa.Connection, seconds: float) -> contextlib.AbstractContextManager[None]:
        # LOCAL: until this transaction ends, even when the statement was cancelled.
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, round(seconds * 1000))}")
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def tolerant_reads(self, conn: sa.Connection) -> Iterator[None]:
        # psycopg fails the whole read on a time Python cannot hold (±infinity, BC, after year 9999): a person
        # reading is handed it as its text instead (models.utc reads that as no time). The driver's own
        # loaders are put back after, so the runner's reads keep their cost.
        adapters: Any = getattr(conn.connection.driver_connection, "adapters", None)  # psycopg 3's, not psycopg2's
        kept = {} if adapters is None else {name: adapters.get_loader(adapters.types[name].oid, TEXT)
                                           for name in _lenient_loaders()}
        try:
            for name in kept:
                adapters.register_loader(name, _lenient_loaders()[name])
            yield
        finally:
            for name, before in kept.items():  # the built-in loaders: psycopg always has one for these types
                if before is not None:
                    adapters.register_loader(name, before)

    def unreadable_time(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool] | None:
        # What PostgreSQL holds and Python cannot: ±infinity, and years before 1 or after 9999.
        return sa.or_(column < sa.literal_column("'0001-01-01 00:00:00+00'::timestamptz"),
                      column >= sa.literal_column("'10000-01-01 00:00:00+00'::timestamptz"))

    def never_due(self, run_at: sa.ColumnElement[Any]) -> sa.ColumnElement[bool] | None:
        # Before year 1 (-infinity, BC) is before now, so due: what never comes due is after 9999 (infinity
        # too). One range test the claim index answers from its own entries (the unreadable test of both ends
        # was a full table scan: 0.2 s at 1,000,000 pending jobs).
        return run_at >= sa.literal_column("'10000-01-01 00:00:00+00'::timestamptz")

    def pipeline(self, driver_connection: Any) -> contextlib.AbstractContextManager[Any] | None:
        # psycopg 3's pipeline mode (libpq 14+): a shared transaction's statements in one round trip.
        pipeline = getattr(driver_connection, "pipeline", None)  # none on psycopg2
        return pipeline() if pipeline is not None and _pipelines() else None

    def insert_rows_suffix(self, conn: sa.Connection, table: str) -> str | None:
        return ""  # no job gets an inserted id here (see inserted_id): the row count is each job's result

    def inserted_id(self, result: sa.CursorResult[Any]) -> int | None:
        return None  # PostgreSQL has no last insert id: `INSERT … RETURNING id` returns it as a row

    def last_id(self, rowcount: int, lastrowid: Any) -> int | None:
        return None

    def session_changed(self, error: BaseException) -> bool:
        return db.sqlstate(error) == READ_ONLY  # SET SESSION CHARACTERISTICS … READ ONLY (or a standby: fails again)

    def timed_out(self, error: BaseException) -> bool:
        return db.sqlstate(error) in TIMEOUTS

    def permanent(self, error: BaseException) -> bool:
        return str(db.sqlstate(error) or "").startswith(PERMANENT_CLASSES) or super().permanent(error)

    def constraint_of(self, error: BaseException) -> str | None:
        diag = getattr(getattr(error, "orig", None), "diag", None)
        name, column = getattr(diag, "constraint_name", None), getattr(diag, "column_name", None)
        return f"constraint {name}" if name else f"NOT NULL on column {column}" if column else None

    def config_problem(self, error: BaseException) -> str | None:
        code, text = db.sqlstate(error), str(getattr(error, "orig", ""))
        # libpq reports the server's refusal of a new connection as text only (no SQLSTATE); these are its
        # own fixed phrases, holding no data but the user's and database's names. So is its refusal of a URL
        # parameter's value (`?sslmode=requried`): "connection is bad" as for a server not there (exit 75).
        if code in REFUSED or (_libpq_error(error) and any(phrase in text for phrase in (
                "password authentication failed", "no pg_hba.conf entry", "does not exist", ' value: "',
                'for connection option "', "invalid port number", "could not match ", "SSL protocol version",
                "could not parse network address", "weak sslmode"))):
            return f"cannot use the database: {db.describe(error)}"
        # psycopg prepares a statement on the server after its 5th run and names it _pg3_N on that session.
        # Missing, already there, or taking other parameters: the session changed under the client, which
        # is a pooler in transaction mode. Waiting does not mend it, and a job must not fail for it.
        if code in PREPARED_GONE or (code == "08P01" and "prepared statement" in text):
            return (f"{db.describe(error)}: a connection pooler in transaction mode (PgBouncer) hands psycopg's "
                    "prepared statements to other sessions; add ?prepare_threshold=none to database_url, or "
                    "use PgBouncer 1.21+ with max_prepared_statements (docs/scaling.md)")
        return None

    def unavailable(self, error: BaseException) -> bool:
        code = db.sqlstate(error)
        # A libpq error without SQLSTATE is a connection that failed or broke: the server is not there.
        return (self.connection_lost(error) or code == READ_ONLY or str(code or "").startswith("08")
                or _libpq_error(error))

    def upsert(self) -> Any:
        return postgresql.insert(J)

    def insert_ignore(self, table: sa.Table) -> sa.Insert:
        return postgresql.insert(table).on_conflict_do_nothing()

    def upsert_add(self, table: sa.Table, column: str) -> sa.Insert:
        insert = postgresql.insert(table)
        return insert.on_conflict_do_update(index_elements=list(table.primary_key.columns),
                                           set_={column: table.c[column] + insert.excluded[column]})

    def capped_ids(self, locked: sa.ScalarSelect[Any]) -> sa.ColumnElement[bool]:
        # Not `IN (subquery)`: its LIMIT unknown, the planner takes a tenth of the queue's rows for the
        # subquery's size and joins them by a hash over a scan of the whole table (measured: 39 ms instead
        # of 1.6 ms at 300,000 pending rows). An array of ids is looked up by primary key.
        return J.c.id == sa.any_(sa.func.array(locked, type_=postgresql.ARRAY(sa.BigInteger)))

    def lock_mark_split(
        self,
        conn: sa.Connection,
        key: tuple[Any, ...],
        select: Callable[[Sequence[sa.ColumnElement[Any]]], sa.Select[Any]],
        mark: Callable[[], dict[str, Any]],
        columns: Sequence[sa.ColumnElement[Any]],
        params: dict[str, Any],
        free: Callable[[], sa.ColumnElement[bool]],
    ) -> tuple[Sequence[Row[Any]], Sequence[Row[Any]]] | None:
        # WITH c AS (SELECT id … FOR UPDATE SKIP LOCKED), m AS (UPDATE … FROM c WHERE free RETURNING …)
        # SELECT m UNION ALL the locked rows not marked: the plain claim's single round trip, where a task
        # limit exists but these jobs' tasks have none. Both parts read the statement's snapshot: the
        # unmarked rows are read as they were locked.
        def build() -> sa.CompoundSelect[Any]:
            locked = select([J.c.id]).with_for_update(skip_locked=True).cte("locked")
            marked = (sa.update(J).where(J.c.id == locked.c.id, free()).values(mark())
                      .returning(*columns, sa.literal(True).label("marked")).cte("marked"))
            rest = sa.select(*columns, sa.literal(False).label("marked")).where(
                J.c.id.in_(sa.select(locked.c.id)), sa.not_(free()))
            return sa.union_all(sa.select(marked), rest)

        rows = conn.execute(self.cached(key, build), params).all()
        return [row for row in rows if row[-1]], [row for row in rows if not row[-1]]

    def after(self, seconds: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        return db_now() + sa.literal_column("interval '1 microsecond'") * sa.func.round(seconds * 1_000_000)

    def id_in(self, column: sa.ColumnElement[Any] = J.c.id) -> sa.ColumnElement[bool]:
        # One array parameter instead of an expanded IN list: the SQL text is the same for every
        # batch size, so psycopg prepares it once and the server plans it once.
        return column == sa.any_(sa.bindparam("ids", type_=postgresql.ARRAY(sa.BigInteger)))

    def listener(self, engine: sa.Engine) -> Callable[[float], bool] | None:
        return Listener(engine)

    def notify(self, conn: sa.Connection) -> None:
        conn.execute(sa.text(f"SELECT pg_notify('{CHANNEL}', '')"))

    def estimate(self, conn: sa.Connection, stmt: sa.Select[Any], params: dict[str, Any]) -> int | None:
        # From the table's statistics (ANALYZE, autovacuum): as fresh as the last analyze.
        plan = self.explain(conn, "EXPLAIN (FORMAT JSON)", stmt, params).scalar_one()
        return int(plan[0]["Plan"]["Plan Rows"])

    def read_only(self, conn: sa.Connection) -> str | None:
        # The server's answer, not this session's: a handler that made its pooled session read-only (SET
        # SESSION CHARACTERISTICS) made SHOW transaction_read_only say on, and a run stopped as if the database
        # were. reset_val is what the server, database or role set; a standby is in recovery.
        standby, default = conn.execute(sa.text(
            "SELECT pg_is_in_recovery(), (SELECT reset_val FROM pg_settings "
            "WHERE name = 'default_transaction_read_only') = 'on'")).one()
        if standby:
            return "the database is read-only (a standby in recovery): nothing claimed"
        return "the database is read-only (default_transaction_read_only=on): nothing claimed" if default else None

    def sequence_problem(self, conn: sa.Connection, columns: Sequence[sa.Column[int]]) -> str | None:
        """Why the user may not draw the ids of `columns` from their sequences, with the GRANT that lets it, or None
        (`check` asks it where the dialect has it: MySQL's AUTO_INCREMENT and SQLite's rowid need no grant)."""
        return postgres_grants.sequence_problem(conn, columns)

    def _insert_many(self, conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> list[int]:
        """One INSERT … SELECT FROM unnest(one array per column), whatever the row count.

        The SQL text depends only on the columns, so psycopg parses and prepares it once; a multi-row
        VALUES list is a new, long statement for psycopg to scan on every chunk. ORDER BY the ordinality
        makes the sequence hand out ids in row order (what SQLAlchemy's insertmanyvalues relies on too),
        so the sorted RETURNING ids match the rows.
        """
        keys = rows[0].keys()
        if not set(keys) <= set(_UNNEST_TYPES) or any(row.keys() != keys for row in rows):
            return super()._insert_many(conn, rows)
        columns = list(keys)
        arrays = ", ".join(f"CAST(:{name} AS {_UNNEST_TYPES[name]})" for name in columns)
        names = ", ".join(columns)
        sql = sa.text(f"INSERT INTO pending_jobs ({names}) SELECT {names} FROM unnest({arrays}) WITH ORDINALITY "
                      f"AS u({names}, n) ORDER BY n RETURNING id")
        params: dict[str, list[Any]] = {name: [row[name] for row in rows] for name in columns}
        if "payload" in params:
            params["payload"] = [json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
                                 for payload in params["payload"]]
        return sorted(int(row[0]) for row in conn.execute(sql, params))

    def insert_attempts(self, conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
        # One INSERT of arrays, not a pipelined row per attempt: a third of the CPU per batch.
        conn.execute(_unnest_attempts(), {column: [row[column] for row in rows] for column in ATTEMPT_TYPES})


_NUMBERED = postgresql.psycopg.dialect(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]


def _prepare_threshold(url: sa.URL, options: dict[str, Any]) -> sa.URL:
    """`?prepare_threshold=none` (or a number) in a PostgreSQL URL becomes psycopg's connection option.

    psycopg prepares a statement on the server after its 5th execution on a connection. Behind
    PgBouncer in transaction mode (before 1.21, or without max_prepared_statements) the next
    transaction may land on another server connection, where that statement does not exist or is a
    different one: `none` turns server-side prepares off. The URL can only carry text, hence this.
    """
    given = url.query.get("prepare_threshold")
    if given is None:
        return url
    text = given if isinstance(given, str) else given[-1]
    if text.strip().lower() in ("none", "off", ""):
        threshold: int | None = None
    else:
        try:
            threshold = int(text)
        except ValueError:
            raise ConfigError(f"database_url: prepare_threshold={text!r} is neither a number nor none") from None
    options["connect_args"] = {**options.get("connect_args", {}), "prepare_threshold": threshold}
    return url.difference_update_query(["prepare_threshold"])


def _libpq_error(error: BaseException) -> bool:
    return isinstance(error, exc.OperationalError) and db.sqlstate(error) is None


@functools.cache
def _unnest_attempts() -> sa.TextClause:
    arrays = ", ".join(f"CAST(:{column} AS {kind}[])" for column, kind in ATTEMPT_TYPES.items())
    return sa.text(f"INSERT INTO {callback_attempts.name} ({', '.join(ATTEMPT_TYPES)}, attempted_at) "
                   f"SELECT *, now() FROM unnest({arrays})")


TEXT = 0  # psycopg's pq.Format.TEXT: the format SQLAlchemy's psycopg dialect reads results in


@functools.cache
def _lenient_loaders() -> dict[str, type[Any]]:
    """The timestamp types' text loaders, handing a value Python cannot hold over as its text."""
    import psycopg
    from psycopg.types.datetime import TimestampLoader, TimestamptzLoader

    def lenient(base: type[Any]) -> type[Any]:
        class Lenient(base):  # type: ignore[misc]
            def load(self, data: Any) -> Any:
                try:
                    return super().load(data)
                except psycopg.DataError:
                    return bytes(data).decode("utf-8", "replace")

        return Lenient

    return {"timestamptz": lenient(TimestamptzLoader), "timestamp": lenient(TimestampLoader)}


@functools.cache
def _pipelines() -> bool:
    """Whether psycopg's libpq has pipeline mode."""
    import psycopg

    return bool(psycopg.Pipeline.is_supported())
