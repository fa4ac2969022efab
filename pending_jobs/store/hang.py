"""A run's bound on its own database calls where the driver has none (PostgreSQL: libpq has no read timeout).

TCP keepalives end a read from a dead or unreachable server, but a server that hangs while its host's kernel
still answers (its processes stopped, a frozen VM) held a run's read for as long as it hung: under cron the
run kept the host lock and no later tick served. MariaDB's reads end after PyMySQL's read_timeout (120 s).

Bounding every statement would cut what is legitimately long: a handler's report query on `ctx.connection`
(not a store transaction: never watched), a claim waiting for a lock a migration or an operator holds,
retention deleting a large backlog. So the bound asks the server instead: a store transaction of the run
(claims, completions, heartbeats, rescues, callbacks, runs rows, retention) that has waited HUNG_AFTER
seconds makes the watch open a new connection to each server the engine's connections talk to (that very
address: after a failover the URL reaches a new primary, which answers) and send `SELECT 1`
(postgres_probe.py). A server that answers (even with an error of its own: too many clients) is alive and
the call waits on; one that does not answer within PROBE_WAIT is hung: the engine's connections to it are
shut down (shutdown(2) on the socket: the thread inside libpq reads the end and psycopg raises; the fd stays
the driver's to close, so nothing is freed under it), and from then on every store transaction raises
DatabaseUnavailable: the run ends with exit 75 and releases the host lock.

The hot path pays a clock read and two dict operations per store transaction (a claim or a batch of
completions), nothing per statement or per job; the one thread of the watch looks once a second.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from ..errors import DatabaseUnavailable

log = logging.getLogger(__name__)

HUNG_AFTER = 120.0
"""Seconds a store transaction may wait before the watch asks whether the server still answers (MariaDB's
read timeout). A module setting, not a run setting: a test sets it low in the runner's process."""
PROBE_WAIT = 15.0  # seconds a new connection to the server gets to answer SELECT 1
LOOK_EVERY = 1.0  # seconds between the watch's looks (less with a smaller bound)

Probe = tuple[Callable[[Any], Hashable | None], Callable[[Any, float], bool]]
"""The dialect's questions: which server a driver connection is connected to (None: closed), and whether that
server answers a new connection within so many seconds (postgres_probe.py)."""

_connections: weakref.WeakKeyDictionary[sa.Engine, weakref.WeakSet[Any]] = weakref.WeakKeyDictionary()


def track(engine: sa.Engine) -> None:
    """Remember every driver connection the engine opens (weakly: a closed one is forgotten), so a watch can
    shut them down wherever their threads wait: in a statement, or in the idle ping of a pool checkout."""
    opened: weakref.WeakSet[Any] = weakref.WeakSet()
    _connections[engine] = opened

    def connected(dbapi_connection: Any, _record: Any) -> None:
        with contextlib.suppress(TypeError):  # a driver connection that takes no weak reference: not cut
            opened.add(dbapi_connection)

    event.listen(engine, "connect", connected)


class HangWatch:
    """Which threads are inside a store transaction since when; `keep` bounds them (see the module)."""

    def __init__(self, engine: sa.Engine, probe: Probe, bound: float | None = None) -> None:
        self.engine = engine
        self.server_of, self.answers = probe
        self.bound = HUNG_AFTER if bound is None else bound
        self.hung: str | None = None
        """Why the server was found hung; then every store transaction raises DatabaseUnavailable."""
        self._since: dict[int, float] = {}  # thread ident: when its innermost store transaction began

    def enter(self) -> float | None:
        """A store transaction begins on this thread; returns what `leave` needs."""
        if self.hung is not None:
            raise DatabaseUnavailable(self.hung)  # at once: the exit path must not wait for the hung server again
        ident = threading.get_ident()
        outer = self._since.get(ident)
        self._since[ident] = time.monotonic()
        return outer

    def leave(self, outer: float | None) -> None:
        """The store transaction `enter` began has ended."""
        if outer is None:
            self._since.pop(threading.get_ident(), None)
        else:
            self._since[threading.get_ident()] = outer

    def longest(self, now: float) -> float:
        """Seconds the longest store transaction under way has waited (0 when none)."""
        for _ in range(3):
            try:
                starts = list(self._since.values())
            except RuntimeError:  # changed while copied (another thread began or ended one): look again
                continue
            return now - min(starts) if starts else 0.0
        return 0.0

    def keep(self, stop: threading.Event) -> bool:
        """Watch until `stop` is set; True when the server was found hung (its connections are shut down then)."""
        step = min(LOOK_EVERY, self.bound / 4)
        next_probe = 0.0
        while not stop.wait(step):
            now = time.monotonic()
            waited = self.longest(now)
            if waited < self.bound or now < next_probe:
                continue
            silent = self.silent_servers(min(PROBE_WAIT, self.bound))
            if not silent:
                # Alive: the call waits on something else (a lock, a long retention delete). Ask again later.
                log.warning("a database call of this run has waited %.0fs; the database answers, so it goes on "
                            "waiting", waited)
                next_probe = time.monotonic() + self.bound
                continue
            if self.longest(time.monotonic()) < self.bound:
                continue  # the call ended while the probe waited: the server is back
            self.hung = (f"the database has not answered for {self.longest(time.monotonic()):.0f}s, nor a new "
                         "connection: the server hangs (stopped or frozen while its host answers)")
            log.error("%s; ending the run (its jobs' leases expire and a later run rescues them)", self.hung)
            log.debug("shut down %d connection(s)", self.cut(silent))
            return True
        return False

    def silent_servers(self, wait: float) -> set[Hashable]:
        """The servers of the engine's open connections that do not answer a new connection within `wait` seconds.

        Each asked on its own address: after a failover the URL reaches a new server that answers, while the
        old one, frozen, holds the stuck read. Asked one after another (almost always there is one)."""
        servers: dict[Hashable, Any] = {}
        for connection in list(_connections.get(self.engine, ())):
            server = self.server_of(connection)
            if server is not None:
                servers.setdefault(server, connection)
        return {server for server, connection in servers.items() if not self.answers(connection, wait)}

    def cut(self, servers: set[Hashable]) -> int:
        """Shut down the socket of every connection the engine opened to these servers; how many. The fd is not
        closed: the driver still owns it and closes it when its thread gives the connection up."""
        cut = 0
        for connection in list(_connections.get(self.engine, ())):
            if self.server_of(connection) not in servers:
                continue
            try:
                fd = int(connection.fileno())
                sock = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)  # a duplicate of the fd
            except Exception:  # closed meanwhile, or a driver without fileno()
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
                cut += 1
            except OSError:
                pass  # not connected any more
            finally:
                sock.close()
        return cut
