"""Engines configured for job work on each dialect, and the classification of database errors."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc

from .errors import ConfigError

# MySQL/MariaDB error numbers that decide what the runner does next.
MYSQL_DEADLOCK = 1213  # whole transaction rolled back: retry it
MYSQL_LOCK_WAIT_TIMEOUT = 1205  # only the statement rolled back: roll back ourselves, then retry
MYSQL_READ_ONLY = (1290, 1792, 1836)  # --read-only / read-only transaction / read-only slave
MYSQL_GONE = (2002, 2003, 2006, 2013, 2055, 1927, 1053, 4031)  # cannot connect / lost / killed / shutdown
MYSQL_LOST = (2006, 2013, 2055, 1927, 4031)  # an open connection dropped; the server may still be up
SERVER_STATUS_IN_TRANS = 1  # MySQL protocol: a transaction is open (pymysql.constants.SERVER_STATUS)
PING_AFTER = 1.0  # seconds idle after which a pooled connection is pinged before use (a restart takes longer)
MYSQL_WSREP_NOT_READY = 1047  # Galera: this node is outside the primary component, or still joining it
MYSQL_COMMIT_FAILED = 1180  # Galera: the node lost the primary component during COMMIT (rolled back)
WSREP_SYNC_WAIT = 3  # Galera causality checks before reads (1) and UPDATE/DELETE (2): see _galera_sessions
WSREP_SYNCED = "4"  # wsrep_local_state of a node in step with its cluster
PG_READ_ONLY = "25006"
PG_SERIALIZATION = ("40001", "40P01")


def dialect_name(bind: sa.Engine | sa.Connection) -> str:
    """'mysql' (also for MariaDB), 'postgresql' or 'sqlite'."""
    name = bind.dialect.name
    return "mysql" if name in ("mysql", "mariadb") else name


def create_engine(url: str, pool_size: int = 5, **kwargs: Any) -> sa.Engine:
    """An engine with UTC sessions, utf8mb4, READ COMMITTED on MySQL, and checked connections.

    A pooled connection is pinged before use only after PING_AFTER idle seconds, and rolled back on
    its return only when a transaction may be open: each would otherwise cost a round trip per use.
    A connection killed while it sat idle less than that fails its statement as "connection lost"
    (and is replaced); Store.transaction retries such a statement once, a producer sees the error.
    """
    try:
        parsed = sa.make_url(url)
    except exc.ArgumentError as error:
        raise ConfigError(f"database_url is not a valid SQLAlchemy URL: {error}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed, pool_size, **kwargs)
    options: dict[str, Any] = {
        "pool_recycle": 1800,  # below MySQL's default wait_timeout of 8 h, and most proxies'
        "pool_size": pool_size,
        "max_overflow": pool_size,
        "pool_reset_on_return": None,  # _skip_needless_rollbacks does it, only when needed
        **kwargs,
    }
    if backend in ("mysql", "mariadb"):
        if not parsed.drivername.endswith("+pymysql") and "+" not in parsed.drivername:
            parsed = parsed.set(drivername=f"{backend}+pymysql")
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
        parsed, hosts = split_hosts(parsed)
        # Gap locks under REPEATABLE READ make claims block producers' INSERTs: READ COMMITTED avoids them.
        options.setdefault("isolation_level", "READ COMMITTED")
        # read/write timeouts bound a read on a half-open socket (server frozen or network cut), which a
        # restart does not cause but a partition does; above innodb_lock_wait_timeout's default of 50 s.
        options.setdefault("connect_args", {"init_command": "SET time_zone = '+00:00'", "connect_timeout": 10,
                                            "read_timeout": 120, "write_timeout": 120})
    elif backend == "postgresql":
        if "+" not in parsed.drivername:
            parsed = parsed.set(drivername="postgresql+psycopg")
        # TCP keepalives end a read on a dead peer (libpq has no read timeout) in about a minute.
        options.setdefault("connect_args", {"options": "-c timezone=UTC", "connect_timeout": 10, "keepalives": 1,
                                            "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3})
        parsed = _prepare_threshold(parsed, options)
    else:
        raise ConfigError(f"unsupported database {backend!r}: use mysql, mariadb, postgresql or sqlite")
    try:
        engine = sa.create_engine(parsed, **options)
    except ModuleNotFoundError as error:
        raise ConfigError(f"the driver for {backend} is not installed: {error}") from None
    if options["pool_reset_on_return"] is None:
        _skip_needless_rollbacks(engine)
    _ping_when_idle(engine)
    if backend in ("mysql", "mariadb"):
        _galera_aware(engine, hosts)
    return engine


def _skip_needless_rollbacks(engine: sa.Engine) -> None:
    """Roll a connection back on its return to the pool only when a transaction may still be open.

    The pool's own reset sends ROLLBACK after every use, one more round trip after every committed
    claim, completion and enqueue. Here a connection returns as it is only when its last transaction
    went through SQLAlchemy's COMMIT or ROLLBACK and the driver, where it can tell, agrees that none
    is open; one checked out raw, returned mid-transaction, or whose COMMIT failed is rolled back.
    """
    clean = "pending_jobs_clean"

    @event.listens_for(engine, "checkout")
    def _checkout(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        record.info[clean] = False

    def mark(conn: sa.Connection, ended: bool) -> None:
        if not conn.invalidated:  # an invalidated connection is discarded, never returned to the pool
            conn.connection.info[clean] = ended

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        mark(conn, False)

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _ended(conn: sa.Connection) -> None:
        # Fired before the COMMIT is sent: if it then fails, _driver_in_transaction says so.
        mark(conn, True)

    @event.listens_for(engine, "reset")
    def _reset(dbapi_connection: Any, record: Any, state: Any) -> None:
        if state.terminate_only:
            return
        if not record.info.get(clean, False) or _driver_in_transaction(dbapi_connection):
            dbapi_connection.rollback()


def _driver_in_transaction(dbapi_connection: Any) -> bool:
    """What the driver knows without a round trip: psycopg tracks the session's transaction status;
    PyMySQL the status of the last OK packet (it skips the one ending a result set, so a SELECT-only
    transaction reads as idle: the SQLAlchemy-level flag covers those)."""
    info = getattr(dbapi_connection, "info", None)
    status = getattr(info, "transaction_status", None)
    if status is not None:  # psycopg: IDLE is 0
        return int(status) != 0
    server_status = getattr(dbapi_connection, "server_status", None)
    if isinstance(server_status, int):  # PyMySQL
        return bool(server_status & SERVER_STATUS_IN_TRANS)
    return True


def _ping_when_idle(engine: sa.Engine) -> None:
    """Replace a pooled connection killed while idle, pinging only those idle for PING_AFTER seconds.

    `pool_pre_ping` pings on every checkout: on the runner's hot path one extra round trip per claim
    and per completion. A connection checked in a moment ago is all but surely alive; if it was
    killed in that moment its statement fails as "connection lost" and Store.transaction retries
    once on a fresh connection.
    """

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["pending_jobs_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("pending_jobs_idle_since")
        if since is None or time.monotonic() - since < PING_AFTER:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The pool discards this connection and checks out a fresh one.
            raise exc.DisconnectionError(f"idle connection failed its ping: {type(error).__name__}") from error


def _sqlite_engine(parsed: sa.URL, pool_size: int, **kwargs: Any) -> sa.Engine:
    options: dict[str, Any] = {"pool_size": pool_size, "max_overflow": pool_size, **kwargs}
    engine = sa.create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30}, **options)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, issue BEGIN, so every transaction can be IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        # IMMEDIATE takes the write lock up front: a deferred transaction that later writes can fail
        # with SQLITE_BUSY without waiting, which busy_timeout does not cover.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _mysql_code(error: BaseException) -> int | None:
    orig = getattr(error, "orig", None)
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _pg_code(error: BaseException) -> str | None:
    orig = getattr(error, "orig", None)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def is_retryable(error: BaseException) -> bool:
    """A deadlock or lock-wait timeout: the transaction may simply be run again."""
    code = _mysql_code(error)
    if code in (MYSQL_DEADLOCK, MYSQL_LOCK_WAIT_TIMEOUT):
        return True
    if _pg_code(error) in PG_SERIALIZATION:
        return True
    return "database is locked" in str(getattr(error, "orig", ""))


def is_connection_lost(error: BaseException) -> bool:
    """An established connection dropped (killed, timed out, server restarting): worth one fresh try."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    if _mysql_code(error) in MYSQL_LOST:
        return True
    code = _pg_code(error) or ""
    return code in ("57P01", "08006", "08003") or "server closed the connection" in str(getattr(error, "orig", ""))


def is_unavailable(error: BaseException) -> bool:
    """The database is unreachable, went away, or refuses writes: stop and exit 75."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    code = _mysql_code(error)
    if code is not None and (code in MYSQL_GONE or code in MYSQL_READ_ONLY):
        return True
    if is_node_not_ready(error):
        return True
    if _pg_code(error) == PG_READ_ONLY or (_pg_code(error) or "").startswith("08"):
        return True
    if isinstance(error, exc.OperationalError):
        text = str(error.orig).lower()
        markers = ("connection", "server closed", "could not connect", "terminating", "readonly", "read-only",
                   "unable to open database", "disk i/o")
        return any(marker in text for marker in markers)
    return isinstance(error, exc.InterfaceError)


# -- several MySQL/MariaDB hosts, and Galera nodes ---------------------------------------------------------


def is_node_not_ready(error: BaseException) -> bool:
    """A Galera node outside the primary component (or still joining) refused the statement (1047) or
    could not commit it (1180, "not connected to Primary Component"): its transaction did not happen."""
    return _mysql_code(error) in (MYSQL_WSREP_NOT_READY, MYSQL_COMMIT_FAILED)


def split_hosts(url: sa.URL) -> tuple[sa.URL, list[tuple[str, int]]]:
    """Take a MySQL URL's repeated `host=name:port` query parameters out of it.

    Returns the URL without them (its host part set to the first, for display) and the hosts in
    order, or the URL unchanged and [] when it names none: the form SQLAlchemy already gives
    PostgreSQL's libpq (`?host=db1:5432&host=db2:5432`), which PyMySQL lacks.
    """
    given = url.query.get("host")
    if given is None:
        return url, []
    if url.host:
        raise ConfigError("database_url: give the hosts either before the database name or as host= "
                          "parameters, not both")
    hosts = [_host_port(entry) for entry in ((given,) if isinstance(given, str) else given)]
    if not hosts:
        raise ConfigError("database_url: host= is empty")
    first, port = hosts[0]
    return url.difference_update_query(["host"]).set(host=first, port=port), hosts


def _host_port(entry: str) -> tuple[str, int]:
    """`name`, `name:port`, `[v6]` or `[v6]:port` (3306 when the port is left out)."""
    text = entry.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ConfigError(f"database_url: host={entry!r} is not [address]:port")
        port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:  # a name, or a bare IPv6 address
        host, port = text, ""
    if not host:
        raise ConfigError(f"database_url: host={entry!r} names no host")
    try:
        number = int(port) if port else 3306
    except ValueError:
        raise ConfigError(f"database_url: host={entry!r} has a port that is not a number") from None
    if not 0 < number < 65536:
        raise ConfigError(f"database_url: host={entry!r} has a port out of range")
    return host, number


def _galera_aware(engine: sa.Engine, hosts: list[tuple[str, int]]) -> None:
    """Galera nodes (MariaDB Galera Cluster, Percona XtraDB Cluster) and several hosts in the URL.

    - With several hosts, each new connection goes to the first one, in the URL's order, that
      answers, accepts writes (read_only OFF) and, when it is a Galera node, is Synced: one writer
      while it lives, which keeps certification conflicts away, and the next one when it dies.
    - A node that left the primary component answers 1047 to every statement, or 1180 to a COMMIT
      caught in the split: either is treated as a disconnect, so the pool drops every connection it
      holds, the store retries once on a fresh one (elsewhere, with several hosts), and otherwise
      the run stops with exit 75.
    - Every session on a Galera node reads what the cluster has committed (see _galera_sessions).
    """
    if hosts:
        _connect_to_first_usable(engine, hosts)
    _galera_sessions(engine)

    @event.listens_for(engine, "handle_error")
    def _not_ready_is_a_disconnect(context: sa.engine.ExceptionContext) -> None:
        args = getattr(context.original_exception, "args", ())
        if args and args[0] in (MYSQL_WSREP_NOT_READY, MYSQL_COMMIT_FAILED):
            context.is_disconnect = True


def _connect_to_first_usable(engine: sa.Engine, hosts: list[tuple[str, int]]) -> None:
    dbapi = engine.dialect.loaded_dbapi

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        refused: list[str] = []
        for host, port in hosts:
            try:
                conn = dbapi.connect(*cargs, **{**cparams, "host": host, "port": port})
            except dbapi.OperationalError as error:
                refused.append(f"{host}:{port} {_dbapi_message(error)}")
                continue
            try:
                problem = _unusable(conn)
            except dbapi.Error as error:
                problem = _dbapi_message(error)
            if problem is None:
                return conn
            conn.close()
            refused.append(f"{host}:{port} {problem}")
        # 2003 (cannot connect): the run stops with exit 75 and cron tries again next minute.
        raise dbapi.OperationalError(2003, "no usable database host: " + "; ".join(refused))


def _unusable(dbapi_connection: Any) -> str | None:
    """Why a freshly connected host must not take the runner's writes, or None."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SHOW GLOBAL VARIABLES WHERE Variable_name IN ('read_only', 'wsrep_on')")
        variables = {str(name): str(value) for name, value in cursor.fetchall()}
        if variables.get("read_only", "OFF") != "OFF":
            return "is read-only"
        if variables.get("wsrep_on") != "ON":
            return None
        cursor.execute("SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_local_state',"
                       " 'wsrep_local_state_comment')")
        status = {str(name): str(value) for name, value in cursor.fetchall()}
    finally:
        cursor.close()
    if status.get("wsrep_ready") != "ON" or status.get("wsrep_local_state") != WSREP_SYNCED:
        # A Donor under rsync SST blocks writes; a Joiner or a non-primary node refuses them.
        return f"is a Galera node not ready ({status.get('wsrep_local_state_comment', 'unknown state')})"
    return None


def _galera_sessions(engine: sa.Engine) -> None:
    """On a Galera node, make each session wait for the cluster before reads and UPDATE/DELETE.

    A Galera commit is certified everywhere before it returns, but applied on the other nodes a
    little later. Without the wait, a runner on another node can miss a job just inserted
    (`run --job`), rescue a lease another node just renewed, or — after failing over to another
    node — find its own claim not yet applied there, so its guarded completion changes no row and
    the outcome is dropped. Certification still keeps every guarded write from landing twice; the
    wait keeps the runner from acting on a stale view. The bits the server's global value sets are
    kept. Costs one causality round trip in the cluster per statement.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SHOW VARIABLES LIKE 'wsrep\\_on'")
            row = cursor.fetchone()
            if row is not None and str(row[1]) == "ON":
                cursor.execute(f"SET SESSION wsrep_sync_wait = @@global.wsrep_sync_wait | {WSREP_SYNC_WAIT}")
        finally:
            cursor.close()


def _dbapi_message(error: BaseException) -> str:
    args: tuple[Any, ...] = tuple(getattr(error, "args", ()))
    text = args[1] if len(args) > 1 else error
    return " ".join(str(text).split())[:200]


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
