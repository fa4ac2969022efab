"""Engines from `db.create_engine`: a pooled connection never carries an open transaction to its next user."""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from pending_jobs.errors import ConfigError, DatabaseUnavailable, exit_code_of
from pending_jobs.store import Store, create_engine, dialect_for
from tests.conftest import SERVERS, scalar


def _single_connection_engine(url: str) -> sa.Engine:
    """One pooled connection, so the next checkout is the very connection just returned."""
    return create_engine(url, pool_size=1, max_overflow=0)


def _assert_next_user_does_not_see(engine: sa.Engine, task: str) -> None:
    """The pool's one connection, used and committed again: the earlier uncommitted `task` row is gone."""
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO pending_jobs (task, payload) VALUES ('t.next', '{}')"))
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE task = :task", task=task) == 0
    assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE task = 't.next'") == 1


# On SQLite the driver runs in autocommit (SQLAlchemy sends BEGIN itself): a raw INSERT commits at once.
@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_raw_connection_returned_mid_transaction_is_rolled_back(db_url: str) -> None:
    engine = _single_connection_engine(db_url)
    try:
        raw = engine.raw_connection()
        cursor = raw.cursor()
        cursor.execute("INSERT INTO pending_jobs (task, payload) VALUES ('t.raw', '{}')")
        cursor.close()
        raw.close()  # back to the pool with the INSERT neither committed nor rolled back
        _assert_next_user_does_not_see(engine, "t.raw")
    finally:
        engine.dispose()


def test_connection_closed_inside_a_transaction_is_rolled_back(db_url: str) -> None:
    engine = _single_connection_engine(db_url)
    try:
        conn = engine.connect()
        conn.execute(sa.text("INSERT INTO pending_jobs (task, payload) VALUES ('t.open', '{}')"))
        conn.close()
        _assert_next_user_does_not_see(engine, "t.open")
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", SERVERS, indirect=True)  # SQLite keeps the pool's reset: no round trip
def test_committed_connection_is_returned_without_a_rollback(db_url: str) -> None:
    engine = _single_connection_engine(db_url)
    rollbacks: list[object] = []
    try:
        with engine.begin() as conn:  # first use: connects (the dialect may roll back while it sets up)
            conn.execute(sa.text("SELECT 1"))
        dbapi = engine.raw_connection()
        driver = dbapi.driver_connection
        dbapi.close()
        original = driver.rollback

        def counting_rollback() -> None:
            rollbacks.append(None)
            original()

        driver.rollback = counting_rollback  # type: ignore[method-assign,union-attr]
        rollbacks.clear()
        for _ in range(3):
            with engine.begin() as conn:
                conn.execute(sa.text("INSERT INTO pending_jobs (task, payload) VALUES ('t.ok', '{}')"))
        assert rollbacks == []
        assert scalar(engine, "SELECT COUNT(*) FROM pending_jobs WHERE task = 't.ok'") == 3
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_driver_level_write_after_a_commit_is_rolled_back(db_url: str) -> None:
    """SQLAlchemy saw the COMMIT, but the driver knows a later raw INSERT opened a transaction."""
    engine = _single_connection_engine(db_url)
    try:
        conn = engine.connect()
        conn.execute(sa.text("SELECT 1"))
        conn.commit()
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute("INSERT INTO pending_jobs (task, payload) VALUES ('t.after', '{}')")
        cursor.close()
        conn.close()
        _assert_next_user_does_not_see(engine, "t.after")
    finally:
        engine.dispose()


def test_a_database_error_never_shows_its_parameters(db_url: str) -> None:
    """Tracebacks reach cron mail and logs; the parameters of a failed statement hold payloads, error
    texts and lease tokens, so the error's text names the statement only (issue 11, item 13)."""
    engine = create_engine(db_url)
    try:
        with pytest.raises(sa.exc.DBAPIError) as raised, engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO no_such_table (token) VALUES (:token)"), {"token": "LEASE-TOKEN-SECRET"})
        assert "LEASE-TOKEN-SECRET" not in str(raised.value)
        assert "parameters hidden" in str(raised.value)
    finally:
        engine.dispose()


# A pooler in transaction mode gives the next transaction another server session: a statement psycopg
# prepared on one is missing on the next, or already there under the same name. Waiting mends nothing and
# no job is to blame: the store says what to set (docs/scaling.md), exit 2, and a run stops there.
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
@pytest.mark.parametrize("statements", [
    ["PREPARE _pg3_0 AS SELECT 1", "PREPARE _pg3_0 AS SELECT 1"],  # duplicate_prepared_statement
    ["EXECUTE _pg3_7"],  # invalid_sql_statement_name
])
def test_a_prepared_statement_lost_to_a_pooler_is_a_configuration_error(store: Store, statements: list[str]) -> None:
    def work(conn: sa.Connection) -> None:
        for statement in statements:
            conn.exec_driver_sql(statement)

    with pytest.raises(ConfigError, match=r"prepare_threshold=none") as raised:
        store.transaction(work)
    assert "PgBouncer" in str(raised.value) and exit_code_of(raised.value) == 2


def test_only_an_error_of_a_changed_session_costs_a_fresh_connection(store: Store) -> None:
    """A store transaction's error that is not a changed session's (a missing table here; a statement
    timeout, a refused row) is raised at once: no second run of the work, no connection discarded."""
    connects: list[int] = []
    sa.event.listen(store.engine, "connect", lambda *_: connects.append(1))
    calls: list[int] = []

    def missing_table(conn: sa.Connection) -> None:
        calls.append(1)
        conn.execute(sa.text("SELECT 1 FROM no_such_table"))

    store.transaction(lambda conn: conn.execute(sa.text("SELECT 1")))  # a pooled connection to reuse
    before = len(connects)
    with pytest.raises(sa.exc.DBAPIError, match="no_such_table"):
        store.transaction(missing_table)
    assert (len(calls), len(connects) - before) == (1, 0)


def test_a_session_a_handler_made_read_only_is_not_a_read_only_database(backend: str, store: Store) -> None:
    """A handler that ran SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY left its pooled connection so:
    the run's writability check read that session's `transaction_read_only` and stopped the run as if the
    database were read-only (a fault test failed on it now and then). The check asks the server."""
    if backend != "postgresql":
        pytest.skip("MariaDB's check reads @@global.read_only and SQLite's nothing: no session in either")
    store.engine.dispose()  # one pooled connection from here: the spoiled one is the one checked
    with store.engine.connect() as conn:
        conn.exec_driver_sql("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        conn.commit()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "on"
    store.check_writable()
    with store.engine.connect() as conn:  # the same connection still: checking it changed nothing
        assert conn.exec_driver_sql("SHOW default_transaction_read_only").scalar() == "on"


def test_a_read_only_database_is_named_by_the_setting_that_made_it_so(backend: str, store: Store) -> None:
    """The message names what the check read: the database's default_transaction_read_only here (a standby
    says "in recovery"), not the session's transaction_read_only, which the check no longer reads."""
    if backend != "postgresql":
        pytest.skip("PostgreSQL's check reads two settings; MariaDB's message names @@global.read_only")
    with store.engine.connect() as conn:
        name = conn.exec_driver_sql("SELECT current_database()").scalar()
        conn.exec_driver_sql(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
        conn.commit()
    store.engine.dispose()  # new sessions take the database's setting
    with pytest.raises(DatabaseUnavailable, match=r"read-only \(default_transaction_read_only=on\)"):
        store.check_writable()



@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_an_invalidated_sqlite_connection_goes_cleanly_and_no_deadline_outlives_its_use(db_url: str) -> None:
    """SQLite clears a statement deadline whenever a connection goes back to the pool; an invalidated one
    comes back as None there, and the AttributeError kept a timed-out handler's connection open."""
    engine = create_engine(db_url, pool_size=1)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
            conn.invalidate()
        with engine.connect() as conn:
            dialect_for(conn).with_timeout(conn, [], 0.001)  # and the transaction never ended by commit/rollback
        time.sleep(0.01)
        with engine.connect() as conn:  # the same pooled connection: its deadline is long past
            assert conn.exec_driver_sql("WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE "
                                        "n < 200000) SELECT count(*) FROM c").scalar() == 200000
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
def test_the_urls_own_connection_timeouts_win_over_the_defaults(db_url: str) -> None:
    """`?read_timeout=600` (a declared statement that runs ten minutes) was dropped without a word: the engine's
    connect_args (120 s) overrode the URL's."""
    engine = create_engine(f"{db_url}?read_timeout=7&connect_timeout=3", create=False)
    try:
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert (raw._read_timeout, raw.connect_timeout, raw._write_timeout) == (7, 3, 120)  # type: ignore[union-attr]
            assert conn.exec_driver_sql("SELECT @@session.time_zone").scalar() == "+00:00"
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
def test_the_urls_init_command_runs_and_the_session_stays_in_utc(db_url: str) -> None:
    """`?init_command=SET SESSION innodb_lock_wait_timeout = 7` was dropped without a word: the engine's own
    init_command (the UTC time zone) overrode the URL's. Both run now, the URL's first, so UTC stays."""
    settings = "SET SESSION innodb_lock_wait_timeout = 7, time_zone = '+05:00'"
    engine = create_engine(f"{db_url}?init_command={quote(settings)}", create=False)
    try:
        for _ in range(2):  # a new connection each time: the first and the later ones both set up
            with engine.connect() as conn:
                assert conn.exec_driver_sql("SELECT @@session.innodb_lock_wait_timeout").scalar() == 7
                assert conn.exec_driver_sql("SELECT @@session.time_zone").scalar() == "+00:00"
                conn.invalidate()
    finally:
        engine.dispose()
    misspelt = create_engine(f"{db_url}?init_command={quote('SET SESION x = 1')}", create=False)
    try:  # a configuration error (exit 2, one line), as any parameter the driver refuses: it ran before without it
        with pytest.raises(ConfigError, match=r"the driver refuses its parameters: .*1064"):
            misspelt.connect()
    finally:
        misspelt.dispose()
