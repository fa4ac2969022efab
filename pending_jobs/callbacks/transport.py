"""HTTP for callbacks: a pooled keep-alive session whose connections go to the guard's checked address.

The URL keeps its host name, so the Host header, TLS SNI and certificate verification all use the
name, while the socket connects to the pinned IP: no second DNS lookup happens after the check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from .guard import Target
from .watchdog import WATCHDOG

READ_LIMIT = 20 * 1024  # bytes of a response body ever read
CHUNK = 8192
_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")\]]*")
_QUERY = re.compile(r"\?[^\s\"']*")


class _NoQueryStrings(logging.Filter):
    """urllib3 logs each request line at debug level; a callback URL's query string may hold a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "?" in message:
            record.msg, record.args = _QUERY.sub("?…", message), ()
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_NoQueryStrings())


@dataclasses.dataclass(frozen=True)
class Response:
    """What came back: a status code and at most READ_LIMIT bytes, or an error (never with the URL)."""

    status_code: int | None
    headers: Mapping[str, str]
    body: bytes
    error: str | None
    duration_ms: int


class PinnedAdapter(HTTPAdapter):
    """Connects to the address pinned for the current thread; refuses to send without one."""

    def __init__(self, pool_maxsize: int) -> None:
        self._pin = threading.local()
        super().__init__(pool_connections=32, pool_maxsize=pool_maxsize, max_retries=0)

    @contextlib.contextmanager
    def pinned(self, target: Target) -> Iterator[None]:
        """Requests sent by this thread inside the block connect to `target.ip`."""
        self._pin.target = target
        try:
            yield
        finally:
            self._pin.target = None

    def build_connection_pool_key_attributes(  # type: ignore[override]  # the stub's TypedDicts lack TLS keys
        self, request: requests.PreparedRequest, verify: bool | str, cert: str | tuple[str, str] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        params: dict[str, Any] = dict(host_params)
        kwargs: dict[str, Any] = dict(pool_kwargs)
        target: Target | None = getattr(self._pin, "target", None)
        if target is None or params.get("host") != target.host:
            raise requests.exceptions.InvalidURL("callback request without a checked address")
        params["host"] = target.ip
        if target.scheme == "https":
            # SNI and the certificate check use the name, not the address we connect to.
            kwargs["server_hostname"] = target.host
            kwargs["assert_hostname"] = target.host
        return params, kwargs


def new_session(pool_maxsize: int) -> tuple[requests.Session, PinnedAdapter]:
    """A session that never reads proxy settings or .netrc (a proxy would defeat the pinning)."""
    session = requests.Session()
    session.trust_env = False
    adapter = PinnedAdapter(pool_maxsize)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session, adapter


def host_header(url: str) -> str:
    """The Host header of a URL: its netloc without user info."""
    netloc = url.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    return netloc.rsplit("@", 1)[-1]


def describe(error: BaseException) -> str:
    """A short reason for a transport error, without the URL (requests' messages include it)."""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return "connect timeout"
    if isinstance(error, requests.exceptions.ReadTimeout):
        return "timed out waiting for the response"
    if isinstance(error, requests.exceptions.SSLError):
        return "TLS error: certificate or handshake failed"
    found = _ERRNO.search(str(error))
    detail = f": {found.group(0).strip()}" if found else ""
    return f"{type(error).__name__}{detail}"


def post(session: requests.Session, adapter: PinnedAdapter, target: Target, url: str, body: bytes,
         headers: Mapping[str, str], connect_timeout: float, timeout: float) -> Response:
    """POST once to the pinned address; redirects are not followed; at most READ_LIMIT bytes read; never raises."""
    started = time.monotonic()
    deadline = started + timeout

    def result(status: int | None, got: Mapping[str, str], data: bytes, error: str | None) -> Response:
        return Response(status, got, data, error, int((time.monotonic() - started) * 1000))

    all_headers = {**headers, "Host": host_header(url), "Accept-Encoding": "identity"}
    try:
        request = session.prepare_request(requests.Request("POST", url, data=body, headers=all_headers))
        # Straight to the adapter: Session.send would read a redirect's whole body to look for `Location`.
        with adapter.pinned(target):
            response = adapter.send(request, stream=True, timeout=(min(connect_timeout, timeout), timeout),
                                    verify=True, proxies={})
    except requests.RequestException as failure:
        return result(None, {}, b"", describe(failure))
    raw = response.raw
    connection = getattr(raw, "connection", None)
    watch = WATCHDOG.watch(getattr(connection, "sock", None), deadline - time.monotonic())
    data = b""
    complete = False
    problem: str | None = None
    try:
        while len(data) < READ_LIMIT:
            chunk = raw.read(min(CHUNK, READ_LIMIT - len(data)), decode_content=False)
            if not chunk:
                complete = True
                break
            data += chunk
    except Exception as exc:  # urllib3 raises several kinds; all mean the body could not be read
        problem = describe(exc)
    finally:
        WATCHDOG.stop(watch)
        if not complete or watch.fired:
            raw.close()  # unread or cut-off body: this connection cannot be reused
        raw.release_conn()
    if watch.fired:
        problem = f"timed out after {timeout:g}s (whole request)"
    return result(response.status_code, dict(response.headers), data, problem)
