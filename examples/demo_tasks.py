"""Handlers for `make demo`."""

from __future__ import annotations

from typing import Any

from pending_jobs import Context, task


@task("send_welcome_email")
def send_welcome_email(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
    ctx.log.info("sending a welcome email to %s", payload["email"])
    return {"sent_to": payload["email"]}


@task("resize_image")
def resize_image(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
    if ctx.attempt == 1:
        raise ConnectionError("image store timed out")  # the first attempt fails; the retry works
    return {"width": payload["width"] // 2, "attempt": ctx.attempt}


@task("monthly_report")
def monthly_report(payload: dict[str, Any], ctx: Context) -> str:
    return "report ready"
