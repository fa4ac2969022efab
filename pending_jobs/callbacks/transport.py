"""HTTP for callbacks: pooled keep-alive connections, each opened to the guard's checked address.

The socket connects to the pinned IP, so no second DNS lookup happens after the check, while the
Host header, TLS SNI and certificate verification all use the URL's host name. Nothing reads proxy
settings, environment variables or .netrc; redirects are never followed; at most READ_LIMIT bytes
of a response are read; a connection whose body was not read to its end is closed, never reused.

Why http.client and not a requests Session or urllib3: CPU time measured per signed attempt (check,
signature, POST) to a local keep-alive receiver, one thread: ≈480 µs through requests (its
per-request PreparedRequest, settings merges, hooks, cookies and pool-key machinery, then urllib3),
≈110 µs here. A bare POST costs ≈190 µs through a urllib3 pool and ≈105 µs through http.client.
Sending was the largest share of the GIL time of a run's callback phase. requests still prepares
each distinct URL once (its quoting and user-info Basic auth) and supplies the CA bundle, so what
goes on the wire is what it sent before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.client
import re
import select
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any

from .guard import Target, parse
from .watchdog import WATCHDOG

READ_LIMIT = 20 * 1024  # bytes of a response body ever read
CHUNK = 8192
POOLED_HOSTS = 32  # (scheme, address, port, host) keys whose idle connections are kept
_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")\]]*")
Key = tuple[str, str, int, str]


@dataclasses.dataclass(frozen=True)
class Response:
    """What came back: a status code and at most READ_LIMIT bytes, or an error (never with the URL)."""

    status_code: int | None
    headers: Mapping[str, str]
    body: bytes
    error: str | None
    duration_ms: int


def host_header(url: str) -> str:
    """The Host header of a URL: its netloc without user info."""
    netloc = url.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    return netloc.rsplit("@", 1)[-1]


@functools.lru_cache(maxsize=1024)
def request_parts(url: str) -> tuple[str, str, str | None]:
    """(request target, Host header, Authorization from user info) as requests prepares them; once per URL."""
    # requests (with urllib3) is imported when a first URL needs it, not at start: ≈ 90 ms of every cron
    # tick's start-up that a run without callbacks or http tasks never needs.
    import requests

    prepared = requests.PreparedRequest()
    prepared.prepare_url(url, None)
    prepared.prepare_headers(None)
    prepared.prepare_auth(None)
    return prepared.path_url, host_header(url), prepared.headers.get("Authorization")


def describe(error: BaseException, connecting: bool = False) -> str:
    """A short reason for a transport error, without the URL or anything sent."""
    if isinstance(error, TimeoutError):
        return "connect timeout" if connecting else "timed out waiting for the response"
    if isinstance(error, ssl.SSLEOFError | ssl.SSLZeroReturnError):  # not the certificate: the peer hung up
        return "TLS connection closed by the server" + (" during the handshake" if connecting else "")
    if isinstance(error, ssl.SSLError | ssl.CertificateError):
        return "TLS error: certificate or handshake failed"
    found = _ERRNO.search(str(error)) if isinstance(error, OSError) else None
    detail = f": {found.group(0).strip()}" if found else ""
    if isinstance(error, http.client.HTTPException) and not isinstance(error, http.client.IncompleteRead):
        # What the answer broke (a bad status line, too many headers): the server's words, never the request's.
        said = (str(error).strip().splitlines() or [""])[0][:200]
        detail = f": {said!r}" if type(error) is http.client.BadStatusLine else f": {said}" if said else ""
    return f"{type(error).__name__}{detail}"


class _Connection(http.client.HTTPConnection):
    """A connection to the pinned address; with TLS, SNI and the certificate check use the host name."""

    def __init__(self, target: Target, timeout: float, tls: ssl.SSLContext | None) -> None:
        super().__init__(target.ip, target.port, timeout=timeout)  # an address: connecting resolves nothing
        self.server_hostname = target.host
        self.tls = tls
        self.poller: select.poll | None = None
        self._body = b""

    def connect(self) -> None:
        super().connect()
        if self.tls is not None:
            self.sock = self.tls.wrap_socket(self.sock, server_hostname=self.server_hostname)
        if hasattr(select, "poll"):
            self.poller = select.poll()
            self.poller.register(self.sock, select.POLLIN)

    def dropped(self) -> bool:
        """Whether the peer closed this idle connection (readable before a request: EOF or junk)."""
        if self.sock is None:
            return True
        if self.poller is not None:
            return bool(self.poller.poll(0))
        return bool(select.select([self.sock], [], [], 0)[0])

    # A bytes body goes out in the same write as the head: one syscall and one TCP segment, not two
    # (http.client writes them separately); measured ≈10 µs of CPU less per request.
    def endheaders(self, message_body: Any = None, *, encode_chunked: bool = False) -> None:
        if isinstance(message_body, bytes) and not encode_chunked:
            self._body, message_body = message_body, None
        super().endheaders(message_body, encode_chunked=encode_chunked)

    def send(self, data: Any) -> None:
        body, self._body = self._body, b""
        super().send(data + body if body else data)


def _send(conn: _Connection, path: str, body: bytes, headers: Mapping[str, str]) -> http.client.HTTPResponse:
    """Send the request and read the answer's head; a refusal that came before the body was all sent counts."""
    try:
        conn.request("POST", path, body, headers)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError) as error:
        # An endpoint may refuse early (`413 Content Too Large` after the headers) and close without reading
        # the rest, as its server's body limit does: the write then fails, but its answer is in our receive
        # buffer. That refusal is the attempt's outcome, not a broken connection to retry. Only a framed 4xx or
        # 5xx: the failed write took the reset, so a head cut off by it reads as complete ("HTTP/1.1 200", then
        # nothing), and a 2xx to a request the endpoint did not read is no success.
        early = conn.response_class(conn.sock, method="POST")
        try:
            early.begin()
        except Exception:  # nothing readable came: the write's error is the reason
            early.close()
            raise error from None
        if early.status < 400 or (early.length is None and not early.chunked):
            early.close()
            raise error from None
        conn.close()  # never reused: the request was cut off
        return early
    return conn.getresponse()


def _discard(conn: _Connection) -> None:
    with contextlib.suppress(Exception):
        conn.close()


class Transport:
    """Keep-alive connections pooled per (scheme, pinned address, port, host name); thread-safe."""

    def __init__(self, pool_maxsize: int, read_limit: int = READ_LIMIT) -> None:
        self.pool_maxsize = max(1, pool_maxsize)
        self.read_limit = read_limit
        """Bytes of a response body ever read: READ_LIMIT for callbacks, more for http tasks' results."""
        self._idle: dict[Key, list[_Connection]] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            from requests.utils import DEFAULT_CA_BUNDLE_PATH  # see request_parts

            context = ssl.create_default_context(cafile=DEFAULT_CA_BUNDLE_PATH)  # verifies chain and name
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            self._tls = context
        return self._tls

    def _checkout(self, key: Key) -> _Connection | None:
        while True:
            with self._lock:
                idle = self._idle.get(key)
                conn = idle.pop() if idle else None
            if conn is None or not conn.dropped():
                return conn
            _discard(conn)

    def _checkin(self, key: Key, conn: _Connection) -> None:
        spare: list[_Connection] = []
        with self._lock:
            idle = self._idle.pop(key, [])  # put back last: the least recently used host is dropped first
            self._idle[key] = idle
            if len(idle) < self.pool_maxsize:
                idle.append(conn)
            else:
                spare.append(conn)
            while len(self._idle) > POOLED_HOSTS:
                spare.extend(self._idle.pop(next(iter(self._idle))))
        for extra in spare:
            _discard(extra)

    def post(self, target: Target, url: str, body: bytes, headers: Mapping[str, str], connect_timeout: float,
             timeout: float) -> Response:
        """POST once to the pinned address; no redirects followed; at most `read_limit` bytes read; never raises."""
        started = time.monotonic()
        deadline = started + timeout
        status: int | None = None
        got: dict[str, str] = {}
        # Chunks are joined once, at the end: `data += chunk` copied the whole body again on each 8 KiB read,
        # quadratic time (a 32 MB url task result took 50 s to read, past its 30 s timeout).
        chunks: list[bytes] = []
        size = 0
        complete = connecting = False
        problem: str | None = None
        watch = conn = None
        key = (target.scheme, target.ip, target.port, target.host)
        try:
            if parse(url)[1:3] != (target.host, target.port):
                raise ValueError("callback request without a checked address")
            path, host, auth = request_parts(url)
            all_headers = {**headers, "Host": host, "Accept": "*/*", "Accept-Encoding": "identity"}
            if auth is not None:
                all_headers["Authorization"] = auth
            conn = self._checkout(key)
            if conn is None:
                connecting = True
                tls = self._context() if target.scheme == "https" else None
                conn = _Connection(target, min(connect_timeout, timeout), tls)
                conn.connect()
                connecting = False
            if conn.sock.gettimeout() != timeout:  # settimeout costs two fcntl calls
                conn.sock.settimeout(timeout)
            watch = WATCHDOG.watch(conn.sock, deadline - time.monotonic())
            response = _send(conn, path, body, all_headers)
            status = response.status
            for name, value in response.getheaders():
                got[name] = f"{got[name]}, {value}" if name in got else value
            while size < self.read_limit and not response.isclosed():
                chunk = response.read(min(CHUNK, self.read_limit - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            # http.client closes a response at its end, and also at a premature EOF (then `length` is left).
            complete = response.isclosed() and not response.length
            if response.isclosed() and response.length:
                problem = "IncompleteRead: the connection closed before the whole body arrived"
        except Exception as exc:  # http.client, ssl and socket raise many kinds; each is one failed attempt
            problem = describe(exc, connecting)
            # The socket's own timeout may beat the watchdog to the same deadline: the same reason either way.
            spent = isinstance(exc, TimeoutError) and not connecting and time.monotonic() >= deadline
            problem = f"timed out after {timeout:g}s (whole request)" if spent else problem
        finally:
            if watch is not None:
                WATCHDOG.stop(watch)
            if conn is not None:
                # A 1xx other than 100 (`103 Early Hints`) is taken by http.client for the answer: the final one
                # is still unread, and would be read as the next request's.
                final = status is not None and status >= 200
                if complete and final and conn.sock is not None and not (watch is not None and watch.fired):
                    self._checkin(key, conn)
                else:
                    _discard(conn)  # unread, cut off, an interim answer, or closed by the server: never reused
        if watch is not None and watch.fired:
            problem = f"timed out after {timeout:g}s (whole request)"
        return Response(status, got, b"".join(chunks), problem, int((time.monotonic() - started) * 1000))
