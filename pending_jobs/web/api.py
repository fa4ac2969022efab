"""The JSON API under /api for scripts (described by /api/openapi.json): the pages' data, and the actions.

A job's shape is `pending-jobs list --json`'s; `GET /api/jobs/{id}` adds `errors` (every kept attempt's
error) and `callback_attempts_log` (as `show --json`). Actions are POSTs with a JSON body; a request
authenticated by the bearer token needs no CSRF token, any other sends `X-CSRF-Token`.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..store import RunStore, Store
from ..store.console import ConsoleStore
from ..version import __version__
from . import views
from .actions import NAMES, perform
from .paths import JOB
from .security import Csrf
from .views import BadRequest


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def api_routes(store: Store, csrf: Csrf, read_only: bool) -> list[BaseRoute]:
    """Read endpoints, the OpenAPI document, and (unless read-only) the actions."""

    def overview(request: Request) -> Response:
        return JSONResponse(views.overview(store))

    def jobs(request: Request) -> Response:
        unknown = sorted(set(request.query_params) - {*views.FILTER_FIELDS, "before", "limit", "count"})
        if unknown:  # a misspelt filter (stauts=failed) would list every job as if it were the answer
            return _error(400, f"{unknown[0]}: not a parameter of /api/jobs (it takes "
                               f"{', '.join([*views.FILTER_FIELDS, 'before', 'limit', 'count'])})")
        try:
            f = views.filter_from(request.query_params)
            before, limit = views.page_args(request.query_params)
        except BadRequest as error:
            return _error(400, str(error))
        data = views.jobs(store, f, before, limit)
        if request.query_params.get("count") == "1":
            data["count"] = ConsoleStore(store).count(f)
        return JSONResponse(data)

    def job(request: Request) -> Response:
        found = views.job(store, request.path_params["job_id"])
        return JSONResponse(found) if found is not None else _error(404, "no such job")

    def runs(request: Request) -> Response:
        return JSONResponse({"runs": [views.run_data(r) for r in RunStore(store).runs(100)]})

    def audit(request: Request) -> Response:
        try:
            before, limit = views.page_args(request.query_params)
        except BadRequest as error:
            return _error(400, str(error))
        return JSONResponse({"entries": views.plain(ConsoleStore(store).audit_log(before, limit))})

    def openapi(request: Request) -> Response:
        return JSONResponse(document(read_only))

    async def act(request: Request) -> Response:
        if not request.state.bearer and not csrf.valid(request.state.csrf_cookie,
                                                       request.headers.get("x-csrf-token")):
            return _error(403, "refused: send the X-CSRF-Token header (or authenticate with the bearer token)")
        try:
            body = json.loads(await request.body())
            json.dumps(body, ensure_ascii=False).encode()  # a lone surrogate ("\ud800") is no text to store
        except (ValueError, RecursionError):  # RecursionError: nested past Python's limit
            return _error(400, "the body must be a JSON object in valid UTF-8 (no lone surrogate such as "
                               "\\ud800, not nested past Python's limit)")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        try:
            done, message = await run_in_threadpool(perform, store, request.state.actor,
                                                     request.path_params["action"], body)
        except BadRequest as error:
            return _error(400, str(error))
        return JSONResponse({"changed": done, "message": message})

    routes: list[BaseRoute] = [
        Route("/api/overview", overview), Route("/api/jobs", jobs), Route(f"/api/jobs/{JOB}", job),
        Route("/api/runs", runs), Route("/api/audit", audit), Route("/api/openapi.json", openapi),
    ]
    if not read_only:
        routes.append(Route("/api/actions/{action}", act, methods=["POST"]))
    return routes


def _query(name: str, description: str, kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": {"type": kind}}


FILTERS = [
    _query("status", "comma-separated statuses: " + ", ".join(views.STATUSES)),
    _query("queue", "queue name"), _query("task", "task name"),
    _query("since", "created at most this long ago: 90, 15m, 2h, 7d"),
    _query("until", "created at least this long ago"),
    _query("q", "text in the payload or the last error (at most 200 characters)"),
    _query("callback", "the state of the job's callback: " + ", ".join(views.CALLBACK_STATUSES)),
]
OK = {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}}


def document(read_only: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 description of this API (written by hand: a dozen endpoints)."""
    paths: dict[str, Any] = {
        "/api/overview": {"get": {"summary": "Per queue counts, oldest due job, expired leases, paused; throughput "
                                             "per minute and hour; p50/p95 wait and run time; callbacks; runs. A count "
                                             "above `count_bound` is named in `inexact` (per queue) or "
                                             "`callbacks_inexact`: `estimate` or `more_than`",
                                  "responses": OK}},
        "/api/jobs": {"get": {"summary": "Jobs, newest first; `next` is the `before` of the next page. "
                                         "`searched_from`, when set: a slow filter was searched only among ids "
                                         "from it up to the cursor (the next page searches further)",
                              "parameters": [*FILTERS, _query("before", "ids below this (keyset cursor)", "integer"),
                                             _query("limit", "1 to 500 (default 50)", "integer"),
                                             _query("count", "1: also count every matching job", "integer")],
                              "responses": OK}},
        "/api/jobs/{job_id}": {"get": {"summary": "One job with every kept attempt's error and its callback attempts",
                                       "parameters": [{"name": "job_id", "in": "path", "required": True,
                                                       "schema": {"type": "integer"}}],
                                       "responses": {**OK, "404": {"description": "no such job"}}}},
        "/api/runs": {"get": {"summary": "The newest 100 runs", "responses": OK}},
        "/api/audit": {"get": {"summary": "Console actions, newest first",
                               "parameters": [_query("before", "ids below this one", "integer"),
                                              _query("limit", "1 to 500", "integer")], "responses": OK}},
        "/metrics": {"get": {"summary": "Prometheus text: counters and gauges read from the database",
                             "responses": {"200": {"description": "text/plain; version=0.0.4"}}}},
        "/healthz": {"get": {"summary": "200 when the database answers", "responses": {"200": {"description": "ok"}}}},
    }
    if not read_only:
        paths["/api/actions/{action}"] = {"post": {
            "summary": "retry, cancel, callback-retry (job_id); pause (queue, reason), resume (queue); bulk-retry, "
                       "bulk-cancel (filter fields as in /api/jobs); purge (older_than, statuses)",
            "parameters": [{"name": "action", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": list(NAMES)}},
                           {"name": "X-CSRF-Token", "in": "header", "required": False,
                            "schema": {"type": "string"}, "description": "unless authenticated by bearer token"}],
            "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
            "responses": {**OK, "400": {"description": "bad field"}, "403": {"description": "CSRF or read-only"}}}}
    return {"openapi": "3.1.0", "info": {"title": "pending-jobs console", "version": __version__},
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                               "basic": {"type": "http", "scheme": "basic"}}},
            "security": [{"bearer": []}, {"basic": []}, {}], "paths": paths}
