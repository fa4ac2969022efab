"""What pages and the JSON API show: the same data for both, shaped once here.

Nothing shown holds a secret: the Job model carries neither the lease token nor the callback token,
callback URLs are redacted (no user info, query or fragment) and attempts show the webhook id only.
A job's JSON is exactly what `pending-jobs list --json` prints for it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from .. import config, validation
from ..callbacks import redact
from ..models import Job
from ..states import CallbackStatus, JobStatus
from ..store import CallbackStore, RunStore, Store
from ..store import overview as overview_counts
from ..store.console import ConsoleStore
from ..store.ops import JobFilter

STATUSES = [s.value for s in JobStatus]
CALLBACK_STATUSES = [*(s.value for s in CallbackStatus), "none"]  # none: jobs without a callback
PAGE = 50
AUDIT_PAGE = 100


class BadRequest(ValueError):
    """A query parameter or form field that cannot be used; the message names it."""


def plain(value: Any) -> Any:
    """Dataclasses, dicts and lists with times as ISO 8601 text (a space before the time): JSON-able."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dt.datetime):
        return str(value)  # as `--json` prints it: 2026-12-01 17:04:53.123456+00:00
    return value


def job_data(job: Job) -> dict[str, Any]:
    """A job as JSON-able data, its callback URL redacted."""
    data: dict[str, Any] = plain(job)
    data["callback_url"] = redact(job.callback_url) if job.callback_url else None
    return data


def age(name: str, value: Any) -> float | None:
    """An age field (since, until, older_than), bounded so that `now - age` is a time on every database."""
    if not value:
        return None
    try:
        return validation.age(value)
    except ValueError as error:
        raise BadRequest(f"{name}: {error}") from None


def text(name: str, value: str | None) -> str | None:
    """A text field, or None when empty; NUL is refused here because PostgreSQL refuses it in any text."""
    if value and "\x00" in value:
        raise BadRequest(f"{name}: cannot contain NUL")
    return value or None


def job_id(value: Any) -> int:
    """A job id from a URL: any whole number (one outside BIGINT is simply no job, see `job`)."""
    try:
        return config.integer(value)
    except ValueError as error:
        raise BadRequest(f"id: {error}") from None


def _integer(name: str, value: str | None, low: int, high: int) -> int | None:
    if not value:
        return None
    try:
        number = config.integer(value)
    except ValueError as error:
        raise BadRequest(f"{name}: {error}") from None
    if not low <= number <= high:
        raise BadRequest(f"{name}: {number} is outside {low} to {high}")
    return number


FILTER_FIELDS = ("status", "queue", "task", "since", "until", "q", "callback")
TEXT_LIMIT = 200  # characters of the q filter (a LIKE over payloads and errors)


def filter_from(params: Mapping[str, str]) -> JobFilter:
    """The job filter of a query string or form: status (comma-separated), queue, task, since and until
    (durations ago: 15m, 2h, 7d), q (text in the payload or the last error), callback (its callback's state)."""
    statuses = tuple(s for s in (params.get("status") or "").split(",") if s)
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        raise BadRequest(f"status: unknown {', '.join(unknown)} (use {', '.join(STATUSES)})")
    # callback: the state of the job's callback (the overview's callback counts link here), as `list --callback-status`.
    callback = params.get("callback") or None
    if callback is not None and callback not in CALLBACK_STATUSES:
        raise BadRequest(f"callback: unknown {callback} (use {', '.join(CALLBACK_STATUSES)})")
    return JobFilter(statuses=statuses, queue=text("queue", params.get("queue")), task=text("task", params.get("task")),
                     since=age("since", params.get("since")), until=age("until", params.get("until")),
                     text=text("q", _bounded("q", params.get("q"), TEXT_LIMIT)), callback_status=callback)


def _bounded(name: str, value: str | None, limit: int) -> str | None:
    # Refused, not cut: a bulk action on a shortened text would reach jobs the operator did not mean.
    if value and len(value) > limit:
        raise BadRequest(f"{name}: {len(value)} characters, at most {limit}")
    return value


def _seconds(value: float | None) -> str:
    """An age as text that reads back as the same number (`:g` kept 6 digits: 1234567 s became 1.23457e+06,
    and the confirmed bulk action or the next page used another time window than the one counted)."""
    if value is None:
        return ""
    return str(int(value)) if value.is_integer() else repr(value)


def filter_params(f: JobFilter) -> dict[str, str]:
    """The query string of a filter (links to the next page, the bulk confirmation, the live stream)."""
    values = {"status": ",".join(f.statuses), "queue": f.queue or "", "task": f.task or "",
              "since": _seconds(f.since), "until": _seconds(f.until), "q": f.text or "",
              "callback": f.callback_status or ""}
    return {k: v for k, v in values.items() if v}


def page_args(params: Mapping[str, str], default: int = PAGE) -> tuple[int | None, int]:
    return (_integer("before", params.get("before"), 1, validation.JOB_ID_MAX),
            _integer("limit", params.get("limit"), 1, 500) or default)


def audit(store: Store, params: Mapping[str, str]) -> dict[str, Any]:
    """A page of the audit, newest first, and the cursor of the older page (keyset on id, as the job list).
    "older →" keeps the page's size when it is not the default."""
    before, limit = page_args(params, AUDIT_PAGE)
    entries, after = ConsoleStore(store).audit_page(before, limit)
    return {"entries": plain(entries), "next": after, "before": before,
            "older": {"limit": str(limit)} if limit != AUDIT_PAGE else {}}


def overview(store: Store) -> dict[str, Any]:
    """Counts above `count_bound` are estimates: a queue's `inexact` and `callbacks_inexact` name them, as
    `estimate` (the planner's, shown ≈) or `more_than` (more than the bound, shown >); store/overview.py."""
    console, runs = ConsoleStore(store), RunStore(store)
    queues = console.overview(overview_counts.BOUND)
    callbacks = runs.callback_tallies(overview_counts.BOUND)
    return {"queues": plain(queues), "count_bound": overview_counts.BOUND, "throughput": console.throughput(),
            "callbacks": {key: found.n for key, found in callbacks.items()},
            "callbacks_inexact": {key: found.inexact for key, found in callbacks.items() if found.inexact},
            "runs": [run_data(r) for r in runs.runs(10)]}


def run_data(run: Any) -> dict[str, Any]:
    data: dict[str, Any] = plain(run)
    data["duration"] = run.duration
    return data


def jobs(store: Store, f: JobFilter, before: int | None, limit: int, bodies: bool = True) -> dict[str, Any]:
    page = ConsoleStore(store).jobs(f, before, limit, bodies)
    return {"jobs": [job_data(j) for j in page.jobs], "next": page.next, "searched_from": page.searched_from}


def job(store: Store, job_id: int) -> dict[str, Any] | None:
    if not 1 <= job_id <= validation.JOB_ID_MAX:  # no such row, and the database would refuse the number
        return None
    found = store.get(job_id)
    if found is None:
        return None
    attempts = [plain(a) for a in CallbackStore(store).attempts(job_id)]
    for attempt in attempts:
        attempt["url"] = redact(attempt["url"])
    return {**job_data(found), "errors": plain(ConsoleStore(store).errors(job_id)),
            "callback_attempts_log": attempts}


def pretty(value: Any) -> str:
    """A payload or result as indented JSON text (shown escaped)."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)
