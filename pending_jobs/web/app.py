"""The console's ASGI application: `create_app(settings, store)`.

Layers, outside in: `Guard` (authentication, read-only, the CSRF cookie, security headers), then the
routes: pages, the JSON API, the live stream and metrics, static files. The routes other modules add
(`extra_routes`, e.g. the browser push endpoint) are matched first, outside the guard: they authenticate
their own callers (a job-scoped token) and may be opened from the application's own origin.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from ..config import WebSettings
from ..errors import DatabaseUnavailable
from ..store import Store
from .api import api_routes
from .live import METRICS_CACHE, live_routes
from .pages import page_routes
from .security import Csrf, Guard

Lifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[None]]
log = logging.getLogger(__name__)


def unavailable(request: Request, error: Exception) -> Response:
    """The database went away while the console serves (it does not start without it): 503 and the reason in
    one line, as the CLI says it (exit 75); it had been "Internal Server Error" and a traceback per request.
    The next request after the database is back is served as usual."""
    log.warning("database unavailable: %s", error)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": f"database unavailable: {error}"}, status_code=503)
    return PlainTextResponse(f"database unavailable: {error}\n(reload once it answers again)\n", status_code=503)


def create_app(settings: WebSettings, store: Store, extra_routes: Sequence[BaseRoute] = (),
               lifespan: Lifespan | None = None, csrf: Csrf | None = None,
               metrics_cache: float = METRICS_CACHE) -> Starlette:
    """The console for `store`. Read-only settings register no action route at all (and Guard answers
    any POST with 403).

    `pending-jobs web` mounts the push endpoints here when `web.push_secret` is set: the routes and the
    lifespan of `push.push_mount` (docs/push.md). `metrics_cache`: seconds one read of /metrics serves every
    scrape (live.py; 0: each scrape reads).
    """
    csrf = csrf or Csrf()
    console = Starlette(routes=[
        *page_routes(store, csrf, settings.read_only),
        *api_routes(store, csrf, settings.read_only),
        *live_routes(store, csrf, settings.read_only, metrics_cache),
        Mount("/static", app=StaticFiles(directory=Path(__file__).parent / "static"), name="static"),
    ], exception_handlers={DatabaseUnavailable: unavailable})
    guarded = Guard(console, settings)

    @contextlib.asynccontextmanager
    async def lifetime(app: Any) -> AsyncIterator[None]:
        if lifespan is None:
            yield
            return
        async with lifespan(app):
            yield

    return Starlette(routes=[*extra_routes, Mount("/", app=guarded)], lifespan=lifetime)
