"""The HTML pages (server-rendered, every value escaped by Jinja's autoescape) and the form actions.

Each page's changing part is a fragment template (`_NAME.html`) that the page includes and that the
/events stream renders again every few seconds, so console.js swaps it in without a reload.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import jinja2
import markupsafe
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from .. import logs
from ..states import JOB_PENDING, JOB_RUNNING, TERMINAL_VALUES
from ..store import RunStore, Store
from ..store.console import BULK_LIMIT, ConsoleStore
from . import views
from .actions import perform
from .paths import JOB
from .security import Csrf
from .views import BadRequest

MESSAGE = "message:"  # a message's signature is of this and the text, never of a CSRF cookie alone
# Every value shown has its control and format characters as escapes (logs.printable, as `list` and `show`
# print them): a right-to-left override in an error or a task name would reverse the text after it.
ENV = jinja2.Environment(loader=jinja2.PackageLoader("pending_jobs.web", "templates"),
                         autoescape=True, undefined=jinja2.StrictUndefined,
                         finalize=lambda value: logs.printable(value) if type(value) is str else value)
ENV.filters["pretty"] = views.pretty
ENV.filters["when"] = lambda value: value.replace("T", " ")[:19] if isinstance(value, str) else "-"
ENV.filters["secs"] = lambda value: "-" if value is None else f"{value:.1f} s" if value < 120 else (
    f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.1f} h")
ENV.filters["query"] = lambda params: urllib.parse.urlencode(params)
# A form field's value goes back to the server as it is: escaped for HTML only, never given the printable
# escapes above (a hidden `queue` of `ventes\xa0fr` posted the text `ventes\\xa0fr`: Pause paused another queue).
ENV.filters["field"] = lambda value: markupsafe.escape(str(value))


def base_context(request: Request, csrf: Csrf, read_only: bool) -> dict[str, Any]:
    cookie = request.state.csrf_cookie
    return {"csrf": csrf.token(cookie), "read_only": read_only, "actor": request.state.actor,
            "message": shown_message(request, csrf), "path": request.url.path, "statuses": views.STATUSES,
            "callback_statuses": views.CALLBACK_STATUSES}


def message_query(csrf: Csrf, message: str) -> str:
    """The query string that shows `message` on the page an action sends the browser back to."""
    return urllib.parse.urlencode({"msg": message, "sig": csrf.token(MESSAGE + message)})


def shown_message(request: Request, csrf: Csrf) -> str:
    # Signed by the action that wrote it: a link anyone sends must not make the console say what it likes.
    message = request.query_params.get("msg", "")
    return message[:300] if csrf.valid(MESSAGE + message, request.query_params.get("sig")) else ""


def render(name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    return HTMLResponse(ENV.get_template(name).render(context), status_code=status)


PATHS = {"overview": "/", "jobs": "/jobs", "job": "/jobs/{id}", "runs": "/runs", "audit": "/audit"}


def fragment(view: str, store: Store, params: dict[str, str], context: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The live part of a page: its template name and its data (what /events sends again). Its forms send
    the browser back to the page (not to /events, whose request renders them there)."""
    context = {**context, "path": PATHS.get(view, "/").format(id=params.get("id", ""))}
    if view == "overview":
        return "_overview.html", {**context, **views.overview(store)}
    if view == "jobs":
        f = views.filter_from(params)
        before, limit = views.page_args(params)
        # The list shows no payload or result: not read (a megabyte each, at every refresh of the page).
        shown = views.filter_params(f)
        # "older →" keeps the page's own size too (it fell back to 50 a page).
        older = {**shown, "limit": str(limit)} if limit != views.PAGE else shown
        return "_jobs.html", {**context, **views.jobs(store, f, before, limit, bodies=False),
                              "filter": shown, "older": older, "before": before}
    if view == "job":
        return "_job.html", {**context, "job": views.job(store, views.job_id(params.get("id")))}
    if view == "runs":
        return "_runs.html", {**context, "runs": [views.run_data(r) for r in RunStore(store).runs(100)]}
    if view == "audit":
        return "_audit.html", {**context, **views.audit(store, params)}
    raise BadRequest(f"unknown view {view!r}")


def page_routes(store: Store, csrf: Csrf, read_only: bool) -> list[BaseRoute]:
    """Pages, and (unless read-only) the form actions."""

    def page(view: str, template: str) -> Any:
        def endpoint(request: Request) -> Response:
            params = dict(request.query_params)
            if view == "job":
                params["id"] = request.path_params["job_id"]
            context = base_context(request, csrf, read_only)
            try:
                name, data = fragment(view, store, params, context)
            except BadRequest as error:
                return render("error.html", {**context, "error": str(error)}, 400)
            if view == "job" and data["job"] is None:
                return render("error.html", {**context, "error": f"job {params['id']} does not exist"}, 404)
            stream = urllib.parse.urlencode({**{k: v for k, v in params.items() if k not in ("msg", "sig")},
                                             "view": view})
            return render(template, {**data, "fragment": name, "stream": f"/events?{stream}"})

        return endpoint

    def confirm(request: Request) -> Response:
        context = base_context(request, csrf, read_only)
        action = request.query_params.get("action", "")
        try:
            f = views.filter_from(request.query_params)
            if action not in ("retry", "cancel"):
                raise BadRequest("action: retry or cancel")
        except BadRequest as error:
            return render("error.html", {**context, "error": str(error)}, 400)
        # The jobs the action would change, not every match: "225,504 match (at most 10,000 at once)" was shown
        # for a cancel that would change the 50,000 pending ones among them.
        count, acted = ConsoleStore(store).count_acted(f, TERMINAL_VALUES if action == "retry"
                                                      else (JOB_PENDING, JOB_RUNNING))
        return render("confirm.html", {**context, "action": action, "filter": views.filter_params(f),
                                       "count": count, "acted": acted, "limit": BULK_LIMIT})

    async def act(request: Request) -> Response:
        form = await request.form()
        if not csrf.valid(request.state.csrf_cookie, str(form.get("csrf") or "")):
            return PlainTextResponse("refused: the form's CSRF token is missing or stale; reload the page\n", 403)
        params = {k: str(v) for k, v in form.items() if k != "csrf"}
        back = params.pop("back", "/")
        if not back.startswith("/") or back.startswith("//"):
            back = "/"
        try:
            _, message = await run_in_threadpool(perform, store, request.state.actor,
                                                 request.path_params["action"], params)
        except BadRequest as error:
            return render("error.html", {**base_context(request, csrf, read_only), "error": str(error)}, 400)
        joiner = "&" if "?" in back else "?"
        return RedirectResponse(f"{back}{joiner}{message_query(csrf, message)}", status_code=303)

    routes: list[BaseRoute] = [
        Route("/", page("overview", "overview.html")),
        Route("/jobs", page("jobs", "jobs.html")),
        Route("/jobs/bulk", confirm),
        Route(f"/jobs/{JOB}", page("job", "job.html")),
        Route("/runs", page("runs", "runs.html")),
        Route("/audit", page("audit", "audit.html")),
    ]
    if not read_only:
        routes.append(Route("/actions/{action}", act, methods=["POST"]))
    return routes
