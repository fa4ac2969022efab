"""The hang watch (store/hang.py, postgres_probe.py) without a server to stop: a port that accepts connections and
never answers stands for a hung PostgreSQL (the kernel completes the handshake, nobody reads)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs.errors import DatabaseUnavailable
from pending_jobs.store import create_engine, postgres_probe
from pending_jobs.store.hang import HangWatch
from tests.conftest import BACKENDS, PG_ADMIN

NEVER: Any = (lambda connection: None, lambda connection, wait: True)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listening socket nobody accepts on: connections complete, their startup packets are never answered."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


def test_nested_calls_are_timed_from_the_innermost_and_forgotten_when_they_end() -> None:
    watch = HangWatch(sa.create_engine("sqlite://"), NEVER, bound=60)
    outer = watch.enter()
    time.sleep(0.05)
    inner = watch.enter()
    assert watch.longest(time.monotonic()) < 0.05
    watch.leave(inner)
    assert watch.longest(time.monotonic()) >= 0.05
    watch.leave(outer)
    assert watch.longest(time.monotonic()) == 0.0


def test_once_hung_every_call_fails_at_once_saying_why() -> None:
    watch = HangWatch(sa.create_engine("sqlite://"), NEVER)
    watch.hung = "the database has not answered"
    with pytest.raises(DatabaseUnavailable, match="has not answered"):
        watch.enter()


def test_a_call_stuck_past_the_bound_on_a_silent_server_ends_as_unavailable(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    with engine.connect():  # a connection the engine opened: its server is asked
        watch = HangWatch(engine, (lambda connection: "the server", lambda connection, wait: False), bound=0.5)
        watch.enter()  # a store call of this thread that never ends
        assert watch.keep(threading.Event())
    assert watch.hung is not None and "has not answered" in watch.hung
    with pytest.raises(DatabaseUnavailable):
        watch.enter()


def test_a_call_stuck_past_the_bound_on_a_server_that_answers_waits_on(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    asked: list[float] = []
    stop = threading.Event()

    def answers(connection: Any, wait: float) -> bool:
        asked.append(wait)
        stop.set()
        return True

    with engine.connect():
        watch = HangWatch(engine, (lambda connection: "the server", answers), bound=0.5)
        watch.enter()
        assert not watch.keep(stop)
    assert asked and watch.hung is None


@pytest.mark.skipif("postgresql" not in BACKENDS, reason="no PostgreSQL server to ask")
def test_the_probe_asks_the_connections_own_server(silent_port: int) -> None:
    import psycopg

    url = sa.make_url(PG_ADMIN)
    with psycopg.connect(host=url.host, port=url.port or 5432, user=url.username, dbname=url.database) as live:
        assert postgres_probe.server_of(live) == (live.info.hostaddr or live.info.host, str(live.info.port))
        assert postgres_probe.answers(live, 10)
        # The same parameters, but the server it talks to is the silent one (a frozen host).
        frozen = SimpleNamespace(pgconn=live.pgconn, info=SimpleNamespace(host="127.0.0.1", hostaddr="127.0.0.1",
                                                                          port=silent_port))
        started = time.monotonic()
        assert not postgres_probe.answers(frozen, 0.5)
        assert time.monotonic() - started < 2
    assert postgres_probe.server_of(live) is None or live.closed
