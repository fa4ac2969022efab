"""Two `pending-jobs run` processes and 1,000 due callbacks: each is delivered exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest
import sqlalchemy as sa

from pending_jobs import enqueue_many
from tests.conftest import ROOT, rows, scalar
from tests.receivers import receiver

CALLBACKS = 1_000
RUNNERS = 2


@pytest.mark.slow
def test_two_runners_deliver_1000_callbacks_exactly_once(backend: str, db_url: str, engine: sa.Engine) -> None:
    with receiver() as server:
        enqueue_many(engine, [{"task": "noop", "callback_url": server.url()} for _ in range(CALLBACKS)])
        # The jobs are already finished, so the runners only deliver callbacks (and race for them).
        with engine.begin() as conn:
            conn.execute(sa.text(
                "UPDATE pending_jobs SET status = 'succeeded', finished_at = created_at, "
                "callback_status = 'pending', callback_next_at = created_at"
            ))
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PENDING_JOBS_TASKS": "tests.jobs",
           "PENDING_JOBS_POLL": "0",
               "PENDING_JOBS_DATABASE_URL": db_url, "PENDING_JOBS_CALLBACK_ALLOW": "127.0.0.1",
               "PENDING_JOBS_CALLBACK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
               "PENDING_JOBS_CALLBACK_CONCURRENCY": "8", "PENDING_JOBS_MAX_RUNTIME": "200"}
        command = [sys.executable, "-m", "pending_jobs", "run", "-v"]
        runners = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for _ in range(RUNNERS)]
        outputs = [runner.communicate(timeout=280) for runner in runners]
        ids = server.webhook_ids()
    assert [runner.returncode for runner in runners] == [0] * RUNNERS, outputs
    counts = Counter(ids)
    assert len(counts) == CALLBACKS and set(counts.values()) == {1}
    delivered = [int(out.split("callbacks delivered ")[1].split()[0]) for out, _ in outputs]
    assert sum(delivered) == CALLBACKS
    assert dict(rows(engine, "SELECT callback_status, COUNT(*) FROM pending_jobs GROUP BY callback_status")) == {
        "delivered": CALLBACKS}
    assert scalar(engine, "SELECT COUNT(*) FROM pending_job_callback_attempts") == CALLBACKS
    assert scalar(engine, "SELECT MAX(callback_attempts) FROM pending_jobs") == 1
