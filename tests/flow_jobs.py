"""Handlers of the time-and-flow tests (limits, schedules): each appends what it saw to a ledger file."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from pending_jobs import Context, task


def _append(path: str, record: dict[str, Any]) -> None:
    # One write of one line with O_APPEND: lines from several processes never interleave.
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@task("span")
def span(payload: dict[str, Any], ctx: Context) -> None:
    """Records when it started and ended (wall clock) under its key, sleeping `seconds` between."""
    started = time.time()
    time.sleep(float(payload.get("seconds", 0.0)))
    _append(payload["ledger"], {"id": ctx.job_id, "key": payload.get("key"), "seq": payload.get("seq"),
                                "start": started, "end": time.time(), "pid": os.getpid()})


@task("tick")
def tick(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """A scheduled job: returns the slot it was given."""
    return {"slot": payload["_schedule"]["slot"], "name": payload["_schedule"]["name"]}


@task("stall_once")
def stall_once(payload: dict[str, Any], ctx: Context) -> int:
    """Sleeps `seconds` on its first attempt when `stall` is set (a runner killed meanwhile holds its slot)."""
    if payload.get("stall") and ctx.attempt == 1:
        time.sleep(float(payload.get("seconds", 120)))
    return ctx.attempt
