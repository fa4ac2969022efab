"""The console's actions, shared by the forms and the JSON API: each is a store verb, then an audit row
naming who did it (the actor of the request) and what came of it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .. import validation
from ..store import CallbackStore, OpsStore, Store
from ..store.console import BULK_LIMIT, ConsoleStore
from .views import FILTER_FIELDS, BadRequest, age, filter_from, filter_params, text

FIELDS: dict[str, tuple[str, ...]] = {
    "retry": ("job_id",), "cancel": ("job_id",), "callback-retry": ("job_id",),
    "pause": ("queue", "reason"), "resume": ("queue",),
    "bulk-retry": FILTER_FIELDS, "bulk-cancel": FILTER_FIELDS, "purge": ("older_than", "statuses"),
}
NAMES = tuple(FIELDS)


def _job_id(value: Any) -> int:
    try:
        return validation.job_id(value)
    except ValueError as error:
        raise BadRequest(f"job id: {error}") from None


def _queue(value: Any) -> str:
    problem = validation.queue_problem(value)
    if problem:
        raise BadRequest(f"queue: {problem}")
    return str(value)


def _fields(action: str, params: Mapping[str, Any]) -> dict[str, str]:
    """The action's fields as text. A field it does not take, or a value that is not text or a number (a
    list, null, an object), is refused: dropping it would widen a bulk action to every job."""
    if action not in FIELDS:
        raise BadRequest(f"unknown action {action!r} (use {', '.join(NAMES)})")
    unknown = sorted(set(params) - set(FIELDS[action]))
    if unknown:
        raise BadRequest(f"{unknown[0]}: not a field of {action} (it takes {', '.join(FIELDS[action])})")
    fields: dict[str, str] = {}
    for name, value in params.items():
        if name == "statuses" and isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = ",".join(value)  # a JSON body's ["succeeded", "failed"], as a form's "succeeded,failed"
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise BadRequest(f"{name}: must be text or a number, not {json.dumps(value)[:40]}")
        fields[name] = str(value)
    return fields


def perform(store: Store, actor: str, action: str, given: Mapping[str, Any]) -> tuple[bool, str]:
    """Do one action; (whether it changed something, a sentence saying what happened). Audited either way."""
    params = _fields(action, given)
    console = ConsoleStore(store)
    ops = OpsStore(store)
    job_id: int | None = None
    queue: str | None = None
    detail: dict[str, Any] = {}
    if action in ("retry", "cancel", "callback-retry"):
        job_id = _job_id(params.get("job_id"))
        if action == "retry":
            done = ops.retry(job_id)
            if done:
                message = f"job {job_id} is pending again"
            else:  # as `pending-jobs retry` says it: a job that is not there is not "not finished"
                message = (f"job {job_id} is not finished: not retried" if store.get(job_id) is not None
                           else f"job {job_id} does not exist: not retried")
        elif action == "cancel":
            outcome = ops.cancel(job_id)
            done = outcome in ("done", "requested")
            message = {"done": f"job {job_id} cancelled",
                       "requested": f"job {job_id} is running: its handler is asked to stop",
                       "missing": f"job {job_id} does not exist: not cancelled"}.get(
                outcome, f"job {job_id} is {outcome}: not cancelled")
        else:
            done = CallbackStore(store).retry(job_id)
            message = (f"job {job_id}'s callback is due again" if done
                       else f"job {job_id} has no callback to retry (or has not finished)")
    elif action in ("pause", "resume"):
        queue = _queue(params.get("queue"))
        if action == "pause":
            reason = text("reason", params.get("reason", "")[:255])
            done = ops.pause(queue, actor, reason)
            detail = {"reason": reason} if reason else {}
            message = f"queue {queue} paused" if done else f"queue {queue} was paused already"
        else:
            done = ops.resume(queue)
            message = f"queue {queue} resumed" if done else f"queue {queue} was not paused"
    elif action in ("bulk-retry", "bulk-cancel"):
        f = filter_from(params)
        detail = filter_params(f)
        changed = console.bulk_retry(f) if action == "bulk-retry" else console.bulk_cancel(f)
        done = changed > 0
        verb = "retried" if action == "bulk-retry" else "cancelled (or asked to stop)"
        message = f"{changed} job(s) {verb}" + (f" (at most {BULK_LIMIT} at once)" if changed >= BULK_LIMIT else "")
        detail["changed"] = str(changed)
    else:  # purge
        older = age("older_than", params.get("older_than"))
        if older is None:
            raise BadRequest("older_than: required, a duration such as 30d")
        try:
            wanted = validation.finished_statuses(params.get("statuses") or "succeeded,cancelled")
        except ValueError as error:
            raise BadRequest(f"statuses: {error}") from None
        purged = ops.purge(older, wanted)
        done, message = purged > 0, f"{purged} finished job(s) purged"
        detail = {"older_than": f"{older:g}s", "statuses": ",".join(wanted), "purged": str(purged)}
    console.audit(actor, action, queue=queue, job_id=job_id,
                  detail=json.dumps({**detail, "outcome": message}, ensure_ascii=False))
    return done, message
