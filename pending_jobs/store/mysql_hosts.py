"""MariaDB/MySQL behind several hosts, and Galera nodes: what the MySQL engine adds to its connections.

A URL may name several hosts as repeated `host=name:port` parameters (the form SQLAlchemy gives libpq,
which PyMySQL lacks). Each new connection goes to the first host that answers, takes writes and, on
Galera, is Synced. On a Galera node every session waits for the cluster before it reads.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from ..errors import ConfigError

NOT_READY = (1047, 1180)
"""Galera: the node is outside the primary component or still joining (1047), or lost it during COMMIT
(1180): the transaction did not happen. Treated as a disconnect (see `galera_aware`)."""
WSREP_SYNC_WAIT = 3  # causality checks before reads (1) and UPDATE/DELETE (2)
WSREP_SYNCED = "4"  # wsrep_local_state of a node in step with its cluster


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


def galera_aware(engine: sa.Engine, hosts: list[tuple[str, int]]) -> None:
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
        if args and args[0] in (NOT_READY):
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
