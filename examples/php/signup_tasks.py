"""The Python handler behind the PHP-only demo: `save_user`, enqueued by enqueue_signup.php.

Run with PENDING_JOBS_TASKS=signup_tasks and examples/php on PYTHONPATH.
"""

from __future__ import annotations

from typing import Any

from pending_jobs import Context, task


@task("save_user")
def save_user(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
    ctx.log.info("saving %s <%s>", payload["name"], payload["email"])
    return {"saved": payload["name"], "email": payload["email"]}
