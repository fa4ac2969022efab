"""`pending-jobs web` as an operator starts it: the push endpoints are served beside the console when
the configuration holds a push secret, and not at all without one."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any

import pytest
import sqlalchemy as sa

from pending_jobs.models import Completion
from pending_jobs.store import Store
from pending_jobs.web import tokens
from tests.web.test_push import APP, SECRET, add_job, follow


def _succeeded_job(store: Store, engine: sa.Engine) -> int:
    job_id = add_job(engine)
    store.finish_many([Completion(store.claim_job(job_id, "t", 60).token, succeeded=[(job_id, {"n": 1})])])
    return job_id


def test_the_console_serves_push_when_a_secret_is_configured(web_command: Any, db_url: str, store: Store,
                                                             engine: sa.Engine) -> None:
    job_id = _succeeded_job(store, engine)
    base = web_command(db_url, PENDING_JOBS_WEB_PUSH_SECRET=SECRET, PENDING_JOBS_WEB_ALLOWED_ORIGINS=APP)
    url = base.replace("http://", "ws://") + f"/push/jobs/{job_id}/ws?token={tokens.mint(SECRET, job_id)}"
    messages, code = asyncio.run(follow(url, origin=APP))
    assert code == 1000
    assert messages[0]["id"] == job_id and messages[0]["status"] == "succeeded"
    assert messages[0]["result"] == {"n": 1}
    # The console's own pages stay where they were.
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as answer:
        assert answer.status == 200


def test_without_a_push_secret_there_is_no_push_endpoint(web_command: Any, db_url: str, store: Store,
                                                         engine: sa.Engine) -> None:
    job_id = _succeeded_job(store, engine)
    base = web_command(db_url)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{base}/push/jobs/{job_id}/events?token={tokens.mint(SECRET, job_id)}", timeout=5)
    assert refused.value.code == 404
