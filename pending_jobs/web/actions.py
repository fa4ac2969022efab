"""The console's actions, shared by the forms and the JSON API: each is a store verb, then an audit row
naming who did it (the actor of the request) and what came of it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .. import validation
from ..store import CallbackStore, OpsStore, Store
from ..store.console import BULK_LIMIT, ConsoleStore
from ..store.ops import PURGEABLE
from .views import BadRequest, age, filter_from, filter_params, text

NAMES = ("retry", "cancel", "callback-retry", "pause", "resume", "bulk-retry", "bulk-cancel", "purge")


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


def perform(store: Store, actor: str, action: str, params: Mapping[str, Any]) -> tuple[bool, str]:
    """Do one action; (whether it changed something, a sentence saying what happened). Audited either way."""
    console = ConsoleStore(store)
    ops = OpsStore(store)
    job_id: int | None = None
    queue: str | None = None
    detail: dict[str, Any] = {}
    if action in ("retry", "cancel", "callback-retry"):
        job_id = _job_id(params.get("job_id"))
        if action == "retry":
            done = ops.retry(job_id)
            message = f"job {job_id} is pending again" if done else f"job {job_id} is not finished: not retried"
        elif action == "cancel":
            outcome = ops.cancel(job_id)
            done = outcome in ("done", "requested")
            message = {"done": f"job {job_id} cancelled",
                       "requested": f"job {job_id} is running: its handler is asked to stop"}.get(
                outcome, f"job {job_id} is {outcome}: not cancelled")
        else:
            done = CallbackStore(store).retry(job_id)
            message = (f"job {job_id}'s callback is due again" if done
                       else f"job {job_id} has no callback to retry (or has not finished)")
    elif action in ("pause", "resume"):
        queue = _queue(params.get("queue"))
        if action == "pause":
            reason = text("reason", str(params.get("reason") or "")[:255])
            done = ops.pause(queue, actor, reason)
            detail = {"reason": reason} if reason else {}
            message = f"queue {queue} paused" if done else f"queue {queue} was paused already"
        else:
            done = ops.resume(queue)
            message = f"queue {queue} resumed" if done else f"queue {queue} was not paused"
    elif action in ("bulk-retry", "bulk-cancel"):
        f = filter_from({k: str(v) for k, v in params.items() if isinstance(v, str | int | float)})
        detail = filter_params(f)
        changed = console.bulk_retry(f) if action == "bulk-retry" else console.bulk_cancel(f)
        done = changed > 0
        verb = "retried" if action == "bulk-retry" else "cancelled (or asked to stop)"
        message = f"{changed} job(s) {verb}" + (f" (at most {BULK_LIMIT} at once)" if changed >= BULK_LIMIT else "")
        detail["changed"] = str(changed)
    elif action == "purge":
        older = age("older_than", params.get("older_than"))
        if older is None:
            raise BadRequest("older_than: required, a duration such as 30d")
        given = params.get("statuses") or "succeeded,cancelled"  # a form's "a,b", or a JSON body's ["a", "b"]
        items = given if isinstance(given, list) else str(given).split(",")
        wanted = [str(s).strip() for s in items if str(s).strip()]
        if not wanted or any(s not in PURGEABLE for s in wanted):
            raise BadRequest(f"statuses: finished statuses only ({', '.join(sorted(PURGEABLE))})")
        purged = ops.purge(older, wanted)
        done, message = purged > 0, f"{purged} finished job(s) purged"
        detail = {"older_than": f"{older:g}s", "statuses": ",".join(wanted), "purged": str(purged)}
    else:
        raise BadRequest(f"unknown action {action!r} (use {', '.join(NAMES)})")
    console.audit(actor, action, queue=queue, job_id=job_id,
                  detail=json.dumps({**detail, "outcome": message}, ensure_ascii=False))
    return done, message
