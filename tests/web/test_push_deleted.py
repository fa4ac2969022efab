"""A job deleted while a page follows it (purged or removed by retention between two looks of the hub, or
deleted by the application): its streams are closed as for a job that does not exist (4404), instead of being
held open, with a look at the job every interval, for as long as the page stays."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import sqlalchemy as sa
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from pending_jobs.schema import pending_jobs as J
from pending_jobs.web import tokens
from tests.web.test_push import APP, SECRET, add_job, serve

__all__ = ["serve"]  # the fixture, used by name


def test_a_job_deleted_while_followed_closes_its_stream_with_4404(serve: Any, engine: sa.Engine) -> None:
    server = serve(poll_interval=0.05)
    server.hub.census_interval = 0.2
    job_id = add_job(engine, delay=3600)

    async def scenario() -> tuple[list[str], int | None]:
        async with connect(server.ws(job_id, tokens.mint(SECRET, job_id)), origin=APP) as ws:  # type: ignore[arg-type]
            seen = [json.loads(await asyncio.wait_for(ws.recv(), 10))["status"]]
            with engine.begin() as conn:
                conn.execute(sa.delete(J).where(J.c.id == job_id))
            try:
                seen.append(await asyncio.wait_for(ws.recv(), 10))
            except ConnectionClosed:
                pass
            return seen, ws.close_code

    assert asyncio.run(scenario()) == (["pending"], 4404)
    assert server.hub.subscribers == 0 and server.hub.waiting == 0
