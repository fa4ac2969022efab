"""The SQL that differs between databases, behind one small API (Oban's engines, in Python).

`Dialect` holds what PostgreSQL and SQLite share; `mysql.py`, `postgres.py` and `sqlite.py` override what differs,
and nothing else asks which database it is. The store's verbs (base.py, ops.py, …) are written once on this API:

- `cached(key, build)`: a hot-path statement built once per dialect, every varying value a bindparam;
- `after(seconds)`: the database clock plus seconds (an SQL expression); `id_in()`: `id` is among the `ids`;
- `lock_mark_return(...)`: lock due rows skipping locked ones, mark them, return their columns — the job claim
  and the callback claim both use it; `lock_cap` locks a queue cap's row first (MySQL: and counts its room),
  `room_limit` and `capped_ids` bound the claim by that room;
- `due_queues`, `read_only`, `version_problem`, `sequence_problem`, `estimate` (the planner's row count): what the
  runner and `check` ask; `time_limit(conn, seconds)`: the database cancels longer reads within it (joblist.py);
- `insert_jobs`, `insert_attempts`: inserts that return ids or take many rows at once; `insert_ignore(table)` skips
  rows whose key exists (limit scopes, schedules); `upsert_add(table, column)` adds to it (totals);
- `engine(url)`: an engine for job work (driver, session settings, pool hooks); `migrating`: DDL lock waits
  bounded; `abandon(conn)`: close a timed-out handler's connection from the runner's thread; `retryable`,
  `connection_lost`, `unavailable`, `session_changed`: what a driver error means, by its code;
- `prepare_problem`, `with_timeout`, `inserted_id`, `integrity`, `timed_out`, `permanent`, `constraint_of`: what
  a declared `sql` task (pending_jobs.declared) needs of its database.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Row

from .. import db
from ..models import utc
from ..schema import callback_attempts, db_now
from ..schema import limits as L
from ..schema import pending_jobs as J

S = TypeVar("S")
BULK_CHUNK = 1000  # rows per multi-row INSERT


@dataclasses.dataclass(frozen=True)
class Locked:
    """What `lock_mark_return` found: the rows, how many were marked, and whether read after the mark (RETURNING)."""

    rows: Sequence[Row[Any]]
    marked: int
    after_mark: bool


class Dialect:
    """PostgreSQL's and SQLite's shared SQL; subclasses override what their database does differently."""

    name: ClassVar[str] = "base"
    json_accepts_nul: ClassVar[bool] = True  # whether the JSON column stores `\u0000` (PostgreSQL's jsonb does not)
    concurrent_writers: ClassVar[bool] = True  # a second transaction may write while another does (not SQLite)
    implicit_commits: ClassVar[frozenset[str]] = frozenset()  # first words of statements that commit on their own
    backslash_escapes: ClassVar[bool] = False  # whether \' inside a string literal is a quote, not its end
    lock_wait: ClassVar[tuple[str, str] | None] = None  # SQL bounding a session's lock waits, and resetting them
    reuses_ids: ClassVar[bool] = False  # whether a deleted newest row's id is given to the next row (SQLite)

    def __init__(self) -> None:
        self._statements: dict[tuple[Any, ...], Any] = {}

    # -- engines and errors ------------------------------------------------------------------------

    def engine(self, url: sa.URL, pool_size: int, create: bool = True, **options: Any) -> sa.Engine:
        """An engine for job work: this database's driver and session settings, and checked connections.

        A pooled connection is pinged before use only after `db.PING_AFTER` idle seconds, and rolled
        back on its return only when a transaction may be open: each would otherwise cost a round trip
        per use. Error texts never carry the SQL parameters (they hold payloads and lease tokens).
        """
        options = {"pool_recycle": 1800,  # below MySQL's default wait_timeout of 8 h, and most proxies'
                   "pool_size": pool_size, "max_overflow": pool_size, "pool_reset_on_return": None,
                   "hide_parameters": True, **options}
        try:
            engine = sa.create_engine(self.driver_url(url), **options)
        except ModuleNotFoundError as error:
            from ..errors import ConfigError

            raise ConfigError(f"the driver for {self.name} is not installed: {error}") from None
        if options["pool_reset_on_return"] is None:
            db.skip_needless_rollbacks(engine, self.in_transaction)
        db.ping_when_idle(engine)
        return engine

    def driver_url(self, url: sa.URL) -> sa.URL:
        """The URL with this database's driver and connection settings."""
        return url

    def in_transaction(self, dbapi_connection: Any) -> bool:
        """Whether the driver knows a transaction is open on this connection (True when it cannot tell)."""
        return True

    def abandon(self, conn: sa.Connection) -> None:
        """Close a timed-out handler's connection from the runner's thread (the network drivers allow it). May raise."""
        conn.invalidate()

    def retryable(self, error: BaseException) -> bool:
        """A deadlock or lock-wait timeout: the transaction may simply be run again."""
        return False

    def connection_lost(self, error: BaseException) -> bool:
        """An established connection dropped (killed, timed out, server restarting): worth one fresh try."""
        return isinstance(error, exc.DBAPIError) and error.connection_invalidated

    def unavailable(self, error: BaseException) -> bool:
        """The database is unreachable, went away, or refuses writes: stop and exit 75."""
        return isinstance(error, exc.DBAPIError) and error.connection_invalidated

    def session_changed(self, error: BaseException) -> bool:
        """The connection's session was changed under it (a handler's LOCK TABLES, a read-only session)."""
        return False

    def config_problem(self, error: BaseException) -> str | None:
        """Why `error` is a configuration error, not one to wait out (bad credentials, no such database), or None."""
        return None

    @contextlib.contextmanager
    def migrating(self, conn: sa.Connection) -> Iterator[None]:
        """A migration's lock waits bounded by db.MIGRATE_LOCK_WAIT (`lock_wait`; SQLite's writer: busy_timeout)."""
        if self.lock_wait is None:
            yield
            return
        conn.execute(sa.text(self.lock_wait[0]))
        conn.commit()
        try:
            yield
        finally:
            with contextlib.suppress(exc.DBAPIError):  # a lost connection took the setting with it
                conn.rollback()
                conn.execute(sa.text(self.lock_wait[1]))
                conn.commit()

    # -- declared SQL tasks ----------------------------------------------------------------------

    def prepare_problem(self, conn: sa.Connection, statement: str) -> str | None:
        """Why the database refuses to prepare `statement`; None when it prepares. Nothing runs."""
        raise NotImplementedError

    def with_timeout(self, conn: sa.Connection, statements: Sequence[str], timeout: float) -> list[str] | None:
        """Bound the statements by `timeout`: the statements to run instead, or None to run them as they are."""
        return None

    def pipeline(self, driver_connection: Any) -> contextlib.AbstractContextManager[Any] | None:
        """A block in which the driver sends statements without awaiting each answer, or None: one at a time."""
        return None

    def insert_rows_suffix(self, conn: sa.Connection, table: str) -> str | None:
        """The end of a multi-row INSERT into `table` giving each row's id ('' if none), or None: one by one."""
        return None

    def inserted_id(self, result: sa.CursorResult[Any]) -> int | None:
        """The id an INSERT without RETURNING added (the driver's last insert id), or None."""
        return self.last_id(result.rowcount, result.lastrowid)

    def last_id(self, rowcount: int, lastrowid: Any) -> int | None:
        """`inserted_id` from a driver cursor's rowcount and lastrowid."""
        return int(lastrowid) if rowcount > 0 and lastrowid else None

    def integrity(self, error: BaseException) -> bool:
        """A constraint refused the data (duplicate key, foreign key, NOT NULL, CHECK)."""
        return isinstance(error, exc.IntegrityError)

    def timed_out(self, error: BaseException) -> bool:
        """The statement hit the task's statement timeout or a lock timeout: worth another attempt."""
        return False

    def permanent(self, error: BaseException) -> bool:
        """The statement or its data is wrong (syntax, unknown table, bad value): another attempt fails too."""
        return isinstance(error, exc.DataError | exc.ProgrammingError) and not error.connection_invalidated

    def constraint_of(self, error: BaseException) -> str | None:
        """The constraint an integrity error names, as this database reports it."""
        return None

    # -- statements, the clock and ids -----------------------------------------------------------

    def cached(self, key: tuple[Any, ...], build: Callable[[], S]) -> S:
        """A hot-path statement built once, every varying value a named bindparam: SQLAlchemy memoises its
        cache key on the object, and its compiled form comes straight from the cache."""
        stmt = self._statements.get(key)
        if stmt is None:
            stmt = self._statements[key] = build()
        return stmt

    def after(self, seconds: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """The database clock plus an SQL expression of seconds (float)."""
        raise NotImplementedError

    def seconds(self, value: float | sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """A number of seconds as an SQL expression (a literal when given a float)."""
        return value if isinstance(value, sa.ColumnElement) else sa.literal(float(value), sa.Float)

    def clock_value(self, value: Any) -> dt.datetime | None:
        """A time read from an SQL expression of the clock (not a typed column) or a LenientTime column, as
        aware UTC; None for what is not a time (SQLite's text is parsed)."""
        return utc(value)

    def id_in(self, column: sa.ColumnElement[Any] = J.c.id) -> sa.ColumnElement[bool]:
        """`column` is one of the `ids` parameter's values (an expanding IN list)."""
        return column.in_(sa.bindparam("ids", expanding=True))

    # -- claims ----------------------------------------------------------------------------------

    def lock_mark_return(
        self,
        conn: sa.Connection,
        key: tuple[Any, ...],
        select: Callable[[Sequence[sa.ColumnElement[Any]]], sa.Select[Any]],
        mark: Callable[[], dict[str, Any]],
        columns: Sequence[sa.ColumnElement[Any]],
        params: dict[str, Any],
        still: Callable[[], Sequence[sa.ColumnElement[bool]]] = tuple,
        room: Callable[[], sa.ColumnElement[int]] | None = None,
    ) -> Locked:
        """Lock the rows `select(columns)` finds (ordered, limited, skipping locked ones), set `mark()` on them and
        return `columns` (the first is the id). `still()`: what rows must still satisfy when marked by id (MySQL);
        here one UPDATE … RETURNING does it all. `room()`, a queue cap's room, bounds them: in `select`'s LIMIT."""

        def build() -> sa.Update:
            locked = select([J.c.id]).with_for_update(skip_locked=True).scalar_subquery()
            among = J.c.id.in_(locked) if room is None else self.capped_ids(locked)
            return sa.update(J).where(among).values(mark()).returning(*columns)

        rows = conn.execute(self.cached(key, build), params).all()
        return Locked(rows, len(rows), after_mark=True)

    def lock_cap(self, conn: sa.Connection, params: dict[str, Any],
                 room: Callable[[bool], sa.ColumnElement[int]]) -> dict[str, Any] | None:
        """Lock a queue cap's row (`cap_name`), None if another claim has it; returns the claim's other binds."""
        stmt = self.cached(("cap_lock",), lambda: sa.select(L.c.name).where(
            L.c.name == sa.bindparam("cap_name", type_=sa.String)).with_for_update(skip_locked=True))
        return {} if conn.execute(stmt, params).first() else None

    def room_limit(self, size: int, room: sa.ColumnElement[int]) -> int | sa.ColumnElement[int]:
        """A claim's LIMIT: `size`, and no more than `room` (an SQL expression read by the claim itself)."""
        return sa.func.least(size, sa.func.greatest(room, 0))

    def capped_ids(self, locked: sa.ScalarSelect[Any]) -> sa.ColumnElement[bool]:
        """`id` is one of a capped claim's locked ids (`locked`'s LIMIT an expression, unknown when planned)."""
        return J.c.id.in_(locked)

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
        """Lock what `select` finds, mark at once the rows `free()` holds for, return (marked, locked but unmarked)
        rows with `columns`, in one statement: the limited claim's shortcut on PostgreSQL; None elsewhere."""
        return None

    def unreadable_time(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool] | None:
        """A condition true where a time column holds what Python cannot hold as a time (read as None, models.utc),
        or None where its type rules that out. Such a run_at may still be due by the database's own comparison."""
        return None

    def never_due(self, run_at: sa.ColumnElement[Any]) -> sa.ColumnElement[bool] | None:
        """A condition true where a pending job's run_at never passes the claim's `run_at <= now` as the database
        compares it (SQLite: text such as 'tomorrow' sorts after every time), or None where every value comes due."""
        unreadable = self.unreadable_time(run_at)
        return None if unreadable is None else sa.and_(unreadable, sa.not_(run_at <= db_now()))

    def tolerant_reads(self, conn: sa.Connection) -> contextlib.AbstractContextManager[None]:
        """While open, what a producer wrote that the driver cannot read is read anyway (people's reads): text
        that cannot be decoded with replacement characters, a time the driver cannot hold as its text."""
        return contextlib.nullcontext()

    def undecodable(self, error: BaseException) -> bool:
        """A read failed on text the driver cannot decode (SQLite alone: the others refuse invalid UTF-8 at INSERT)."""
        return False

    def quarantine(self, conn: sa.Connection, select: Callable[[Sequence[sa.ColumnElement[Any]]], sa.Select[Any]],
                   params: dict[str, Any]) -> int:
        """End the rows `select` finds that hold undecodable text as failed, with the reason; how many."""
        return 0

    def due_queues(self, conn: sa.Connection) -> list[str]:
        """Queues that have pending jobs, found by a skip scan over the claim index."""
        sql = self.cached(("due_queues",), lambda: sa.text(
            "WITH RECURSIVE q(queue) AS ("
            " SELECT MIN(queue) FROM pending_jobs WHERE status = 'pending'"
            " UNION ALL"
            " SELECT (SELECT MIN(p.queue) FROM pending_jobs p WHERE p.status = 'pending' AND p.queue > q.queue)"
            " FROM q WHERE q.queue IS NOT NULL)"
            " SELECT queue FROM q WHERE queue IS NOT NULL"))
        return [row[0] for row in conn.execute(sql)]

    # -- introspection ---------------------------------------------------------------------------

    def estimate(self, conn: sa.Connection, stmt: sa.Select[Any], params: dict[str, Any]) -> int | None:
        """How many rows the planner expects `stmt` to return (nothing is run), or None where the database
        does not say (SQLite's EXPLAIN QUERY PLAN has no row counts)."""
        return None


    @staticmethod
    def explain(conn: sa.Connection, how: str, stmt: sa.Select[Any], params: dict[str, Any]) -> sa.CursorResult[Any]:
        """`how` (EXPLAIN and its options) of `stmt` with `params`, as the driver runs it (for `estimate`)."""
        compiled = stmt.compile(dialect=conn.dialect)
        return conn.exec_driver_sql(f"{how} {compiled}", compiled.construct_params(params))
    def time_limit(self, conn: sa.Connection, seconds: float) -> contextlib.AbstractContextManager[None]:
        """Within it, a statement of this transaction that runs longer than `seconds` is cancelled, raising
        an error `timed_out` recognises; where the database cannot, statements run to their end."""
        return contextlib.nullcontext()

    def listener(self, engine: sa.Engine) -> Callable[[float], bool] | None:
        """`wait(seconds) -> bool`, True once a job is inserted (the database pushes); None: runners poll."""
        return None

    def notify(self, conn: sa.Connection) -> None:
        """Tell the listening runners that jobs may be due now (an operator reopened some)."""

    def read_only(self, conn: sa.Connection) -> str | None:
        """Why the database refuses writes (nothing may be claimed then), or None."""
        return None

    def version_problem(self, conn: sa.Connection) -> str | None:
        """Why this server is too old for pending-jobs, or None."""
        return None

    def sequence_problem(self, conn: sa.Connection, columns: Sequence[sa.Column[int]]) -> str | None:
        """Why the user may not draw the ids of `columns` (where ids need a grant of their own), or None."""
        return None

    # -- inserts ---------------------------------------------------------------------------------

    def insert_jobs(self, conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Insert rows (column -> value; `run_at_delay` seconds become database-clock times); ids in order."""
        ids: list[int] = []
        # A multi-row INSERT takes one column list: rows that name different columns (one with a callback
        # URL, the next without) go in runs of the same columns, in order, so the ids stay in row order.
        for _, same in itertools.groupby(rows, key=lambda row: sorted(row)):
            run = list(same)
            for start in range(0, len(run), BULK_CHUNK):
                chunk = run[start: start + BULK_CHUNK]
                if len(chunk) == 1 or any(row.get("idempotency_key") or "run_at_delay" in row for row in chunk):
                    ids.extend(self._insert_one(conn, self._delayed(row)) for row in chunk)
                else:
                    ids.extend(self._insert_many(conn, chunk))
        return ids

    def _delayed(self, row: dict[str, Any]) -> dict[str, Any]:
        values = dict(row)
        delay = values.pop("run_at_delay", None)
        if delay is not None:
            values["run_at"] = self.after(sa.literal(float(delay), sa.Float))
        return values

    def _insert_one(self, conn: sa.Connection, values: dict[str, Any]) -> int:
        if values.get("idempotency_key"):
            return self._insert_keyed(conn, values)
        # Plain values go as parameters of one prebuilt statement, which SQLAlchemy compiles once;
        # a fresh insert().values(...) per job costs more than the INSERT's round trip.
        plain = not any(isinstance(value, sa.ColumnElement) for value in values.values())
        stmt = self.cached(("insert_job",), lambda: sa.insert(J))
        result = conn.execute(stmt, values) if plain else conn.execute(sa.insert(J).values(values))
        key_row = result.inserted_primary_key
        assert key_row is not None
        return int(key_row[0])

    def upsert(self) -> Any:
        """The dialect's own INSERT into the jobs table, which has `on_conflict_do_nothing`."""
        raise NotImplementedError

    def insert_ignore(self, table: sa.Table) -> sa.Insert:
        """An INSERT into `table` skipping rows whose primary key exists (limit scopes, schedules: first host wins)."""
        raise NotImplementedError

    def upsert_add(self, table: sa.Table, column: str) -> sa.Insert:
        """An INSERT into `table` adding its `column` to an existing row's of the same key (pending_job_totals)."""
        raise NotImplementedError

    def _insert_keyed(self, conn: sa.Connection, values: dict[str, Any]) -> int:
        """Insert unless the idempotency key exists; either way the id of the key's job."""
        insert = self.upsert().values(values).on_conflict_do_nothing(index_elements=["idempotency_key"])
        new_id = conn.execute(insert.returning(J.c.id)).scalar_one_or_none()
        if new_id is not None:
            return int(new_id)
        existing = sa.select(J.c.id).where(J.c.idempotency_key == values["idempotency_key"])
        return int(conn.execute(existing).scalar_one())

    def _insert_many(self, conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> list[int]:
        # insertmanyvalues: one multi-row INSERT … RETURNING, ids matched to rows by SQLAlchemy.
        result = conn.execute(sa.insert(J).returning(J.c.id, sort_by_parameter_order=True), list(rows))
        return [int(row[0]) for row in result]

    def insert_attempts(self, conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Record callback attempts, each stamped with the database clock."""
        conn.execute(self.cached(("insert_attempts",),
                                 lambda: sa.insert(callback_attempts).values(attempted_at=db_now())), list(rows))
