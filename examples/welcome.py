"""An application's signup code and its welcome-mail handler (examples/test_welcome.py tests both)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from pending_jobs import Context, Retry, enqueue, task

OUTBOX: list[str] = []
"""Stands in for the mail server."""


def signup(engine: sa.Engine, email: str) -> int:
    """Create the user and enqueue the welcome mail in one transaction; the job's id."""
    with engine.begin() as conn:
        # (the application's own INSERT INTO users … would go here, in the same transaction)
        return enqueue(conn, "welcome_mail", {"to": email}, callback_url="https://app.example.com/hooks/jobs",
                       concurrency_key=email)


@task("welcome_mail")
def welcome_mail(payload: dict[str, Any], ctx: Context) -> dict[str, str]:
    if payload["to"].endswith("@busy.example") and ctx.attempt == 1:
        raise Retry(delay=60, reason="the mail server said: try later")
    OUTBOX.append(payload["to"])
    return {"sent_to": payload["to"]}
