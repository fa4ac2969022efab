"""One serving run per host, handed from one cron tick to the next without a gap.

Under cron a run serves (claims as jobs come due) until the next tick's run is ready to take over.
Two lock files, by `flock`, so the kernel releases them when a process dies however it dies:

- `<name>.lock`, held by the run that serves;
- `<name>.next`, held by the one run waiting to take over.

A new run that finds the first taken takes the second and waits for the first; a third finds both
taken and leaves at once (exit 0). The serving run looks now and then whether `.next` is taken: then it
stops claiming (as soon as no job of its own has run long, or none of its workers is free), lets go of
`.lock`, finishes what it started, and exits; the waiting run, already started, connected and checked,
takes over within a few milliseconds. A run busy with a long job and a free worker keeps serving short
jobs beside it, so the host never waits for it: the hand-off happens when the long job ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import IO

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

WAIT_STEP = 0.02  # seconds between looks at the serving run's lock while waiting to take over
SLOT_TRIES, SLOT_RETRY = 5, 0.01  # looks at a taken `.next` before leaving, and seconds between them


def lock_path(database_url: str, queues: Sequence[str], callbacks: str) -> str:
    """A lock file per user, database and set of queues (two cron lines serving different queues don't
    exclude each other), in /tmp (not $TMPDIR: see lock_dir).

    The user id is in the name because /tmp is shared: a file another user created (mode 0644, or any
    mode under fs.protected_regular) cannot be opened for writing, so one root run would otherwise stop
    every later www-data run. Two users' runs on one database then may both serve: harmless, as claims
    are SKIP LOCKED; the lock only saves a host from starting a second run that would add nothing."""
    name = f"pending-jobs-{os.getuid()}-{lock_key(database_url, queues, callbacks)[:16]}.lock"
    return os.path.join(lock_dir(), name)


LOCK_DIR = "/tmp"


def lock_dir() -> str:
    """Where the default lock lives: /tmp, whatever TMPDIR says. Every run of the host must find the same
    file: cron starts runs without TMPDIR, a person's shell (pam_tmpdir, a login script) often sets one,
    and a run started there locked a file of its own and served beside cron's. The temporary directory
    Python picks only when /tmp is unusable."""
    if os.path.isdir(LOCK_DIR) and os.access(LOCK_DIR, os.W_OK | os.X_OK):
        return LOCK_DIR
    return tempfile.gettempdir()


def lock_key(database_url: str, queues: Sequence[str], callbacks: str) -> str:
    """What the default lock file is named by: the database, queues and callbacks a run serves (hashed)."""
    key = "\n".join([database_key(database_url), ",".join(sorted(queues)), callbacks])
    return hashlib.sha256(key.encode()).hexdigest()


def served_database(database_url: str) -> str:
    """What a serving run writes in its lock file: the database alone (database_key, hashed). A run of another
    database finding the file held is refused; one of the same database with other queues or callbacks (a
    crontab line changed, a --queue added) waits and takes over as before: refused, it left the old run serving
    its old settings until --max-runtime, and cron mailed exit 2 every minute."""
    return hashlib.sha256(database_key(database_url).encode()).hexdigest()


def database_key(database_url: str) -> str:
    """What identifies the database a URL reaches, however the URL is spelled.

    SQLite: the file's absolute, resolved path (a relative URL means a different file in each working
    directory; `:memory:` or an empty database stays as is). Others: backend (`mysql` for
    `mysql+pymysql`, MariaDB counting as MySQL), user, lower-cased host, port (its default filled in),
    the socket a query names instead of a host, and database; not the driver, password or other query
    options, which change how one connects, not where to. A URL that does not parse is its own key.
    """
    try:
        url = make_url(database_url)
    except ArgumentError:
        return database_url
    backend = _SAME_SERVER.get(url.get_backend_name(), url.get_backend_name())
    database = url.database or ""
    if backend in _FILE_BACKENDS:
        if database not in ("", ":memory:") and not database.startswith("file:"):
            database = os.path.realpath(database)  # absolute, symbolic links resolved
        return f"sqlite:{database}"
    port = url.port or _DEFAULT_PORTS.get(backend)
    # A unix socket stands for the host: two local servers on two sockets are two databases.
    socket = next((str(url.query[k]) for k in _SOCKET_QUERY_KEYS if k in url.query), "")
    key = "\n".join([backend, url.username or "", (url.host or "").lower(), str(port or ""), socket, database])
    # A query option that chooses the tables (PostgreSQL's libpq `options=-c search_path=shop`, which the engine
    # applies): two schemas of one database are two sets of tables, each served by its own runs. Only added when
    # given, so the key of every other URL (and so its default lock file) stays what it was.
    options = url.query.get(_SCHEMA_QUERY_KEYS.get(backend, ""))
    if options:
        key += "\n" + " ".join([options] if isinstance(options, str) else options)
    return key


# What database_key needs to know of each backend, as data rather than branches: how the backends
# differ in behaviour belongs to the store's dialect files, and these are only facts about their URLs.
_SAME_SERVER = {"mariadb": "mysql"}  # one server, two URL schemes
_FILE_BACKENDS = frozenset({"sqlite"})  # the database is a file path, relative to the working directory
_DEFAULT_PORTS = {"mysql": 3306, "postgresql": 5432}
_SOCKET_QUERY_KEYS = ("unix_socket", "host")
_SCHEMA_QUERY_KEYS = {"postgresql": "options"}  # the query option that can choose the schema (search_path)


class SharedLock(Exception):
    """The lock file is held by a run serving another database."""


class HostLock:
    """The serving lock of one host (see the module's notes). `key` (served_database) is written in the lock file
    by the run that serves: a run of another key finding it raises SharedLock instead of waiting to take over.
    Two databases given one `lock_file` otherwise took turns: each tick's second run made the first hand
    over, so one database was served for a moment a minute, silently."""

    def __init__(self, path: str, key: str = "") -> None:
        self.path = path
        self.key = key
        self._serving: IO[bytes] | None = None
        self._next: IO[bytes] | None = None
        self._probe: IO[bytes] | None = None

    def acquire(self, wait: Callable[[], bool]) -> bool:
        """Serve: take the lock now, or wait to take over from the run holding it while `wait()` says
        so. False when another run already waits to take over (or waiting was given up). An OSError
        when a lock file cannot be opened (a folder that is missing, a file of another user)."""
        self._serving = _take(self.path)
        if self._serving is None:
            self._refuse_another_key()
            if not self._wait_to_take_over(wait):
                return False
        if self.key and self._serving is not None:
            self._serving.truncate(0)  # opened to append: what is written lands at 0
            self._serving.write(self.key.encode())
            self._serving.flush()
        # Opened now, so a `.next` that cannot be opened stops the run before it serves (the CLI says
        # which file and why), not in the middle of serving when successor_waiting first looks.
        try:
            self._probe = open(_next_path(self.path), "ab")
        except OSError:
            self.release()
            raise
        return True

    def _refuse_another_key(self) -> None:
        try:
            with open(self.path, "rb") as held:
                serving = held.read(200).decode("ascii", "replace")
        except OSError:
            return
        if self.key and serving and serving != self.key:
            raise SharedLock(f"{self.path} is held by a run serving another database")

    def _wait_to_take_over(self, wait: Callable[[], bool]) -> bool:
        self._next = _take_waiting_slot(_next_path(self.path))
        if self._next is None:
            return False
        try:
            while wait():
                self._serving = _take(self.path)
                if self._serving is not None:
                    return True
                time.sleep(WAIT_STEP)
            return False
        finally:
            _release(self._next)  # the next tick may wait now
            self._next = None

    def successor_waiting(self) -> bool:
        """Whether another run waits to take over (it holds the `.next` lock). One non-blocking flock.

        Also True when the lock file this run holds is no longer the one at its path (a /tmp cleaner or a
        person removed it): the next tick's run then locks a new file and serves, and this one, which
        could never see it wait, must stop claiming rather than serve beside it until max_runtime."""
        if self._serving is not None and not _same_file(self._serving, self.path):
            return True
        if self._probe is not None and not _same_file(self._probe, _next_path(self.path)):
            _release(self._probe)  # watch the `.next` file the next tick will wait in
            self._probe = None
        if self._probe is None:
            self._probe = open(_next_path(self.path), "ab")
        try:
            fcntl.flock(self._probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self._probe, fcntl.LOCK_UN)
        return False

    def release(self) -> None:
        """Let the waiting run take over (also when this process simply exits: the kernel releases it)."""
        for handle in (self._serving, self._probe):
            _release(handle)
        self._serving = self._probe = None


def _next_path(path: str) -> str:
    return (path[: -len(".lock")] if path.endswith(".lock") else path) + ".next"


def _same_file(handle: IO[bytes], path: str) -> bool:
    """Whether `path` still names the file `handle` has open (not removed, not replaced)."""
    try:
        named, held = os.stat(path), os.fstat(handle.fileno())
    except OSError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _take(path: str) -> IO[bytes] | None:
    handle = open(path, "ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _take_waiting_slot(path: str) -> IO[bytes] | None:
    """`.next`, or None when another run waits in it. The serving run's probe (`successor_waiting`) holds
    it too, for the moment between two flock calls: a tick that met the probe gave up (1 in 13,000 tries
    in a loop), so a few more tries tell the probe from a run that waits."""
    for _ in range(SLOT_TRIES - 1):
        handle = _take(path)
        if handle is not None:
            return handle
        time.sleep(SLOT_RETRY)
    return _take(path)


def _release(handle: IO[bytes] | None) -> None:
    if handle is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
