"""Several MySQL/MariaDB hosts in one URL, and Galera's errors, classified without a database."""

from __future__ import annotations

from pathlib import Path

import pymysql
import pytest
import sqlalchemy as sa

from pending_jobs.errors import ConfigError
from pending_jobs.store import create_engine
from pending_jobs.store.mysql import MySQL
from pending_jobs.store.mysql_hosts import split_hosts
from pending_jobs.store.postgres import _prepare_threshold


def test_host_parameters_are_taken_out_of_the_url_in_order() -> None:
    url, hosts = split_hosts(sa.make_url("mysql+pymysql://app:pw@/jobs?host=db1&host=db2:3307&host=[::1]:3308"))
    assert hosts == [("db1", 3306), ("db2", 3307), ("::1", 3308)]
    assert "host" not in url.query
    assert (url.host, url.port, url.database, url.username, url.password) == ("db1", 3306, "jobs", "app", "pw")


def test_one_host_parameter_and_none() -> None:
    url, hosts = split_hosts(sa.make_url("mysql://app@/jobs?host=10.0.0.5:3310&charset=utf8mb4"))
    assert hosts == [("10.0.0.5", 3310)] and url.query == {"charset": "utf8mb4"}
    plain = sa.make_url("mysql://app@db1:3306/jobs")
    assert split_hosts(plain) == (plain, [])


@pytest.mark.parametrize(("url", "says"), [
    ("mysql://app@db0/jobs?host=db1", "not both"),
    ("mysql://app@/jobs?host=db1:x", "not a number"),
    ("mysql://app@/jobs?host=db1:0", "out of range"),
    ("mysql://app@/jobs?host=:3306", "names no host"),
    ("mysql://app@/jobs?host=[::1]x", "[address]:port"),
])
def test_bad_host_parameters_are_configuration_errors(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace("]", r"\]")):
        create_engine(url)


def test_engine_with_hosts_names_the_first_and_keeps_its_settings() -> None:
    engine = create_engine("mysql://app@/jobs?host=db1:3307&host=db2")
    try:
        assert (engine.url.host, engine.url.port, engine.url.query.get("charset")) == ("db1", 3307, "utf8mb4")
    finally:
        engine.dispose()


MYSQL = MySQL()


def _wrapped(code: int, message: str) -> sa.exc.OperationalError:
    return sa.exc.OperationalError("COMMIT", {}, pymysql.err.OperationalError(code, message))


def test_galera_node_outside_the_primary_component_is_unavailable() -> None:
    not_ready = _wrapped(1047, "WSREP has not yet prepared node for application use")
    split_commit = _wrapped(1180, "Error while appending streaming replication fragment(provider status: "
                                  "Not connected to Primary Component)")
    for error in (not_ready, split_commit):
        assert MYSQL.unavailable(error) and MYSQL.connection_lost(error) and not MYSQL.retryable(error)


def test_certification_failure_is_a_retryable_deadlock_not_an_outage() -> None:
    lost_race = _wrapped(1213, "Deadlock found when trying to get lock; try restarting transaction")
    assert MYSQL.retryable(lost_race) and not MYSQL.unavailable(lost_race)



@pytest.mark.parametrize(("given", "threshold"), [("none", None), ("0", 0), ("5", 5)])
def test_prepare_threshold_in_a_postgresql_url_becomes_a_psycopg_option(given: str, threshold: int | None) -> None:
    options: dict[str, object] = {"connect_args": {"connect_timeout": 10}}
    url = _prepare_threshold(sa.make_url(f"postgresql+psycopg://app@db1/jobs?prepare_threshold={given}"), options)
    assert options["connect_args"] == {"connect_timeout": 10, "prepare_threshold": threshold}
    assert "prepare_threshold" not in url.query


def test_prepare_threshold_that_is_not_a_number_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="neither a number nor none"):
        create_engine("postgresql://app@db1/jobs?prepare_threshold=sometimes")


class _Stop(Exception):
    pass


@pytest.mark.parametrize(("url", "offers_tls"), [
    ("mysql://app@127.0.0.1/jobs", False),
    ("mysql://app@localhost:3307/jobs", False),
    ("mysql://app@/jobs?unix_socket=/run/mysqld/mysqld.sock", False),
    ("mysql://app@db1.internal/jobs", True),  # PyMySQL's own default
    ("mysql://app@127.0.0.1/jobs?ssl_ca={ca}", True),  # the user's TLS setting wins
])
def test_tls_is_not_offered_to_a_server_on_this_machine(url: str, offers_tls: bool, tmp_path: Path) -> None:
    """PyMySQL builds an SSL context (≈ 35 ms of CPU) for each connection unless TLS is turned off; a
    server on the loopback or a socket is connected without, one elsewhere as PyMySQL would."""
    (tmp_path / "ca.pem").touch()  # an ssl_ca that is not a file is refused when the engine is made
    engine = create_engine(url.format(ca=tmp_path / "ca.pem"))
    seen: dict[str, object] = {}

    def capture(_dialect: object, _record: object, _cargs: object, cparams: dict[str, object]) -> None:
        seen.update(cparams)
        raise _Stop

    sa.event.listen(engine, "do_connect", capture, insert=True)
    with pytest.raises(_Stop):
        engine.connect()
    assert ("ssl_disabled" not in seen) is offers_tls, seen
