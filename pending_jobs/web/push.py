"""Push a job's end to the application's front end: a browser follows one job over a WebSocket
(`/push/jobs/{id}/ws?token=…`) or server-sent events (`/push/jobs/{id}/events?token=…`).

On connect the client is sent where the job stands at once; when it has ended (or as soon as it ends) it
is sent `{"id", "status", "result", "error", "finished_at"}` and the server closes. Access is granted by a
job-scoped token the application mints itself (tokens.py); browsers of origins not listed are refused.

One PushHub per process holds every subscriber. It asks the database once per interval for all of them
(`PushStore.finished_among`, chunked by 1,000 ids), never once per subscriber, and not at all when nobody
listens; new subscribers' first states are read the same way, batched. On PostgreSQL with the
`pending_jobs_notify_finished` trigger, a NOTIFY runs that one query at once and the poll slows to a safety
net. Mount: `hub = PushHub(settings, store)`, `routes += push_routes(hub)`, and `await hub.start()` /
`await hub.stop()` in the application's lifespan (`create_push_app` does all three).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..errors import ConfigError
from ..store import Store
from ..store.push import JobEnd
from .paths import JOB
from .push_hub import Full, PushHub, Stopped, Subscription

Lifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[None]]

log = logging.getLogger(__name__)

MIN_SECRET = 16
"""Bytes: a shorter push secret could be guessed, and with it a token for every job."""
KEEPALIVE = 15.0
"""Seconds between SSE comments on a quiet stream, so proxies do not cut it."""
_ORIGIN = re.compile(r"https?://[a-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9a-f:.]+\](:[0-9]{1,5})?")

# WebSocket close codes (4000-4999 are the application's): the HTTP status they stand for, plus 1000 + 100.
CLOSE_UNAUTHORIZED, CLOSE_FORBIDDEN, CLOSE_NOT_FOUND = 4401, 4403, 4404
CLOSE_FULL, CLOSE_RESTART = 1013, 1012  # try again later; the server is restarting


@dataclasses.dataclass(frozen=True)
class PushSettings:
    """The push endpoints' settings (the console's configuration builds them; every value is checked here)."""

    secret: bytes | str = dataclasses.field(repr=False)  # never in a log line or a traceback's locals
    """The key of the tokens' HMAC, shared with the application that mints them (text is taken as UTF-8)."""
    allowed_origins: tuple[str, ...] | list[str] = ()
    """Exact origins (`https://app.example.com`, port included when not the default) whose pages may follow
    jobs; `*` is refused: any page holding a token could then read the job."""
    poll_interval: float = 0.25
    """Seconds between looks for ended jobs when the database cannot notify."""
    max_subscribers: int = 10_000
    """Open WebSocket and SSE streams at most, in this process; more are refused (1013 / 503)."""
    notify_poll_interval: float = 2.0
    """Seconds between looks on PostgreSQL with NOTIFY: a safety net for a notification lost in a reconnect."""

    def __post_init__(self) -> None:
        secret = self.secret.encode() if isinstance(self.secret, str) else self.secret
        if len(secret) < MIN_SECRET:
            raise ConfigError(f"push secret: must be at least {MIN_SECRET} bytes, got {len(secret)}")
        origins = tuple(self.allowed_origins)
        for origin in origins:
            if origin == "*":
                raise ConfigError("push allowed_origins: '*' is not allowed; list each origin exactly")
            if not _ORIGIN.fullmatch(origin):
                raise ConfigError(f"push allowed_origins: {origin!r} is not an origin like https://app.example.com "
                                  "(lowercase scheme and host, optional port, no path or trailing slash)")
        object.__setattr__(self, "allowed_origins", origins)
        for name, low, high in (("poll_interval", 0.01, 60.0), ("notify_poll_interval", 0.1, 600.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise ConfigError(f"push {name}: must be a number of seconds from {low} to {high}, got {value!r}")
        if isinstance(self.max_subscribers, bool) or not isinstance(self.max_subscribers, int) \
                or not 1 <= self.max_subscribers <= 1_000_000:
            raise ConfigError(f"push max_subscribers: must be an integer from 1 to 1000000, "
                              f"got {self.max_subscribers!r}")


def _query_param(scope: Scope, name: str) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
    return values[-1] if values else None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _either(*futures: asyncio.Future[Any]) -> set[asyncio.Future[Any]]:
    return set(futures)


def _json(end: JobEnd) -> str:
    return json.dumps(end.message(), ensure_ascii=False, separators=(",", ":"), default=str)


class _WebSocketEndpoint:
    """`/push/jobs/{job_id}/ws?token=…`: accepted, then closed with 4403/4401 when refused, so a page's
    script can tell (a refused handshake reaches it as a bare 1006)."""

    def __init__(self, hub: PushHub) -> None:
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        job_id = int(scope["path_params"]["job_id"])
        await websocket.accept()
        if not self.hub.allowed_origin(websocket.headers.get("origin")):
            await websocket.close(CLOSE_FORBIDDEN)
            return
        if not self.hub.grants(websocket.query_params.get("token"), job_id):
            await websocket.close(CLOSE_UNAUTHORIZED)
            return
        try:
            sub = self.hub.subscribe(job_id)
        except (Full, Stopped) as error:
            await websocket.close(CLOSE_FULL if isinstance(error, Full) else CLOSE_RESTART)
            return
        try:
            await self._follow(websocket, sub)
        except Stopped:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the server may have closed it already
                await websocket.close(CLOSE_RESTART)
        except (WebSocketDisconnect, OSError):
            pass  # the client left while we were sending: nothing to tell anyone
        finally:
            self.hub.unsubscribe(sub)

    async def _follow(self, websocket: WebSocket, sub: Subscription) -> None:
        state = await sub.state
        if state is None:
            await websocket.close(CLOSE_NOT_FOUND)
            return
        await websocket.send_text(_json(state))
        if state.ended:
            await websocket.close()
            return
        while True:  # the end, or the client leaving (whatever else it sends is ignored)
            heard = asyncio.ensure_future(websocket.receive())
            try:
                await asyncio.wait(_either(sub.end, heard), return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not heard.done():
                    heard.cancel()
            if sub.end.done():
                end = sub.end.result()
                if end is None:  # deleted while followed: as if it had never been there
                    await websocket.close(CLOSE_NOT_FOUND)
                    return
                await websocket.send_text(_json(end))
                await websocket.close()
                return
            if heard.result()["type"] == "websocket.disconnect":
                return


class _EventsEndpoint:
    """`/push/jobs/{job_id}/events?token=…`: server-sent events (`event: state`, then `event: end`), with
    CORS headers for listed origins only. Written as a plain ASGI app so the subscriber is released
    however the stream ends (a client leaving before the first byte included)."""

    def __init__(self, hub: PushHub) -> None:
        self.hub = hub

    def _cors(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        if origin is None or not self.hub.allowed_origin(origin):
            return [(b"vary", b"Origin")]
        return [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")]

    async def _plain(self, send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]]) -> None:
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"), *headers]})
        await send({"type": "http.response.body", "body": text.encode()})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = _header(scope, b"origin")
        cors = self._cors(origin)
        job_id = int(scope["path_params"]["job_id"])
        if not self.hub.allowed_origin(origin):
            await self._plain(send, 403, "origin not allowed\n", cors)
        elif scope["method"] == "OPTIONS":
            await self._plain(send, 204, "", [*cors, (b"access-control-allow-methods", b"GET"),
                                              (b"access-control-max-age", b"600")])
        elif scope["method"] != "GET":
            await self._plain(send, 405, "method not allowed\n", [*cors, (b"allow", b"GET, OPTIONS")])
        elif not self.hub.grants(_query_param(scope, "token"), job_id):
            await self._plain(send, 401, "invalid token\n", cors)
        else:
            try:
                sub = self.hub.subscribe(job_id)
            except (Full, Stopped):
                await self._plain(send, 503, "too many subscribers\n", [*cors, (b"retry-after", b"5")])
                return
            try:
                await self._stream(sub, receive, send, cors)
            finally:
                self.hub.unsubscribe(sub)

    async def _stream(self, sub: Subscription, receive: Receive, send: Send, cors: list[tuple[bytes, bytes]]) -> None:
        left = asyncio.ensure_future(self._disconnected(receive))
        try:
            try:
                state = await sub.state
            except Stopped:
                await self._plain(send, 503, "server restarting\n", [*cors, (b"retry-after", b"5")])
                return
            if state is None:
                await self._plain(send, 404, "no such job\n", cors)
                return
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
                (b"x-accel-buffering", b"no"), (b"x-content-type-options", b"nosniff"), *cors]})
            try:
                async for chunk in self._events(state, sub, left):
                    await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
            except asyncio.CancelledError:
                # uvicorn cancels the responses still open after timeout_graceful_shutdown: the stream ends here
                # as a complete response (EventSource reconnects after `retry`), instead of one "Exception in ASGI
                # application" traceback per open stream in the log at every restart.
                pass
            await send({"type": "http.response.body", "body": b""})
        finally:
            left.cancel()

    async def _events(self, state: JobEnd, sub: Subscription, left: asyncio.Future[None]) -> AsyncIterator[str]:
        # `retry` is long: EventSource reconnects after a stream ends, and the page should close it on the end.
        yield f"retry: 60000\nevent: state\ndata: {_json(state)}\n\n"
        if state.ended:
            return
        while True:
            done, _ = await asyncio.wait(_either(sub.end, left), timeout=KEEPALIVE, return_when=asyncio.FIRST_COMPLETED)
            if left in done:
                return
            if sub.end in done:
                try:
                    end = sub.end.result()
                except Stopped:
                    return
                if end is None:  # deleted while followed: the stream ends, and EventSource's reconnect gets 404
                    return
                yield f"event: end\ndata: {_json(end)}\n\n"
                return
            yield ": keepalive\n\n"

    @staticmethod
    async def _disconnected(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass


def push_routes(hub: PushHub) -> list[BaseRoute]:
    """The two push endpoints, to mount in the application (the hub is started in its lifespan)."""
    return [WebSocketRoute(f"/push/jobs/{JOB}/ws", _WebSocketEndpoint(hub), name="push_ws"),
            Route(f"/push/jobs/{JOB}/events", _EventsEndpoint(hub), name="push_events")]


def push_mount(settings: PushSettings, store: Store) -> tuple[list[BaseRoute], Lifespan, PushHub]:
    """The push endpoints, the lifespan that starts and stops their one hub, and the hub: what the
    console's `create_app` mounts beside its pages (`pending-jobs web`)."""
    hub = PushHub(settings, store)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await hub.start()
        try:
            yield
        finally:
            await hub.stop()

    return push_routes(hub), lifespan, hub


def create_push_app(settings: PushSettings, store: Store) -> Starlette:
    """A Starlette app serving the push endpoints alone (tests, the benchmark, or a push-only process)."""
    routes, lifespan, hub = push_mount(settings, store)
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.push_hub = hub
    return app


__all__ = ["Full", "PushHub", "PushSettings", "Stopped", "create_push_app", "push_mount", "push_routes"]
