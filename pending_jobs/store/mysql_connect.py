"""MariaDB/MySQL: what PyMySQL is given to connect: the engine's own settings, the URL's parameters over them,
and a ConfigError for a parameter PyMySQL would refuse only at the first connection.

The URL's `init_command` runs too. PyMySQL runs one statement, and the URL's replaces the engine's (the UTC time
zone every stored time relies on), so then `keep_utc` sets the zone again after it: as PostgreSQL's `?options=`
keeps `-c timezone=UTC` beside the user's (postgres.py). Without, the URL's was dropped without a word.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from ..errors import ConfigError

UTC = "SET time_zone = '+00:00'"


def connect_args(url: sa.URL, hosts: list[tuple[str, int]]) -> dict[str, Any]:
    """The engine's connect_args for `url` (`hosts`: its several hosts, mysql_hosts.split_hosts, or [])."""
    # read/write timeouts bound a read on a half-open socket (server frozen or network cut), which a
    # restart does not cause but a partition does; above innodb_lock_wait_timeout's default of 50 s.
    args: dict[str, Any] = {"init_command": UTC, "connect_timeout": 10,
                            "read_timeout": 120, "write_timeout": 120}
    if not hosts and _on_this_machine(url):
        # PyMySQL 1.1+ offers TLS to every server unless told not to, building an SSL context for each
        # connection: ≈ 35 ms of CPU loading the system's CA store, which that unverified offer never
        # reads. On the loopback or a socket TLS protects nothing; elsewhere PyMySQL's default stays.
        args["ssl_disabled"] = True
    # The URL's own values win: connect_args override them, and `?read_timeout=600` was dropped without a word.
    for key in [key for key in args if key in url.query]:  # init_command too: keep_utc
        del args[key]
    return args


def keep_utc(engine: sa.Engine) -> None:
    """Each new connection's session in UTC after the URL's own init_command, when it has one (which may set the
    time zone too): one more round trip per connection then, none otherwise."""
    if "init_command" not in engine.url.query:
        return

    @event.listens_for(engine, "connect")
    def _utc(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(UTC)
        finally:
            cursor.close()


def _on_this_machine(url: sa.URL) -> bool:
    """A server reached over the loopback or a Unix socket, with no TLS setting of the user's."""
    local = url.host in (None, "", "localhost", "127.0.0.1", "::1") or "unix_socket" in url.query
    return local and not any(key.startswith("ssl") for key in url.query)


def refuse_no_database(url: sa.URL) -> None:
    """ConfigError for a URL that names no database (`mysql://root@127.0.0.1`): the server takes the connection,
    then SQLAlchemy's lookup of the schema failed an assertion, "unexpected error", traceback and exit 1."""
    if not url.database:
        raise ConfigError(f"database_url {url.render_as_string(hide_password=True)} names no database: give it "
                          "after the host (mysql://user:password@host/DATABASE)")


def refuse_bad_parameters(engine: sa.Engine) -> None:
    """ConfigError for a URL parameter PyMySQL would refuse at the first connection with a TypeError (`?sslmode=`,
    copied from a PostgreSQL or PHP DSN), an AttributeError (`?ssl=true`) or a FileNotFoundError (an `ssl_ca`
    file that is not there): none a DBAPI error, so each was an "unexpected error", traceback and exit 1."""
    params = engine.dialect.create_connect_args(engine.url)[1]
    unknown = sorted(set(params) - set(inspect.signature(engine.dialect.loaded_dbapi.connect).parameters))
    if unknown:
        raise ConfigError(f"database_url: PyMySQL takes no parameter {', '.join(unknown)} (TLS: ssl_ca=/path/ca.pem)")
    if not isinstance(params.get("port", 0), int):  # `?port=3307`: PyMySQL's ValueError at the first connection
        raise ConfigError(f"database_url: port={params['port']!r} is not a PyMySQL setting; give it after the host "
                          "(mysql://user@host:PORT/db)")
    ssl = params.get("ssl", {})
    if not isinstance(ssl, dict):
        raise ConfigError(f"database_url: ssl={ssl!r} is not a PyMySQL setting; give ssl_ca=/path/ca.pem")
    for key in ("ca", "cert", "key"):
        if key in ssl and not os.path.isfile(ssl[key]):
            raise ConfigError(f"database_url: ssl_{key} {ssl[key]} is not a file")
