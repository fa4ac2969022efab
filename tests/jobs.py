"""Handlers the tests register (PENDING_JOBS_TASKS=tests.jobs in subprocesses)."""

from __future__ import annotations

import os
import time
from typing import Any

import sqlalchemy as sa

from pending_jobs import Fail, JobContext, Retry, task

LEDGER_DDL = "CREATE TABLE IF NOT EXISTS ledger (job_id BIGINT PRIMARY KEY, note VARCHAR(64))"


@task("noop")
def noop(payload: dict[str, Any], ctx: JobContext) -> None:
    return None


@task("echo")
def echo(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    return {"payload": payload, "attempt": ctx.attempt, "job_id": ctx.job_id}


@task("boom")
def boom(payload: dict[str, Any], ctx: JobContext) -> None:
    raise RuntimeError(payload.get("message", "boom"))


@task("flaky")
def flaky(payload: dict[str, Any], ctx: JobContext) -> str:
    """Fails until attempt `succeed_on`."""
    if ctx.attempt < int(payload.get("succeed_on", 2)):
        raise ValueError(f"attempt {ctx.attempt} fails")
    return "ok"


@task("retry_later")
def retry_later(payload: dict[str, Any], ctx: JobContext) -> None:
    raise Retry(delay=float(payload.get("delay", 3600)), reason="not yet")


@task("fail_now")
def fail_now(payload: dict[str, Any], ctx: JobContext) -> None:
    raise Fail("the input can never work")


@task("sleep")
def sleep(payload: dict[str, Any], ctx: JobContext) -> float:
    seconds = float(payload.get("seconds", 1))
    time.sleep(seconds)
    return seconds


@task("short_timeout", timeout=0.5)
def short_timeout(payload: dict[str, Any], ctx: JobContext) -> None:
    time.sleep(float(payload.get("seconds", 5)))


@task("ledger")
def ledger(payload: dict[str, Any], ctx: JobContext) -> int:
    """Records its job id through ctx's connection: a unique key turns a double run into an error."""
    ctx.connection.execute(sa.text("INSERT INTO ledger (job_id, note) VALUES (:id, :note)"),
                           {"id": ctx.job_id, "note": str(os.getpid())})
    if payload.get("sleep"):
        time.sleep(float(payload["sleep"]))
    return ctx.job_id


@task("ledger_then_raise")
def ledger_then_raise(payload: dict[str, Any], ctx: JobContext) -> None:
    ctx.connection.execute(sa.text("INSERT INTO ledger (job_id, note) VALUES (:id, 'raised')"), {"id": ctx.job_id})
    raise RuntimeError("after the write")


@task("record_attempt")
def record_attempt(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    return {"attempt": ctx.attempt, "deadline": ctx.deadline is not None}
