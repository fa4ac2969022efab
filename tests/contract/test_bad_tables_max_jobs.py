"""`max_jobs` counts the jobs a run runs: held ones (their config table has an error, held.py) are put back
unrun, and leave the room they took, as released ones do."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from pending_jobs import enqueue
from pending_jobs.store import Store

from .conftest import outcome

BROKEN = {"sql": "INSERT INTO audit (note) VALUES (:note)", "timeout": "soon"}


def test_held_jobs_do_not_use_up_max_jobs(users: sa.Engine, store: Store, run_declared: Any) -> None:
    # Held jobs first in claim order: a run with --max-jobs 3 claimed them, put them back and stopped, and a
    # backlog of them larger than max_jobs kept every cron run from serving anything for as long as it lasted.
    for n in range(5):
        enqueue(users, "note", {"note": str(n)}, priority=5)
    good = [enqueue(users, "noop", {}) for _ in range(2)]

    report = run_declared({"note": BROKEN}, max_jobs=3)

    assert [outcome(store, job_id).status for job_id in good] == ["succeeded", "succeeded"], report
    assert (report.held, report.succeeded, report.stopped_by) == (5, 2, "empty"), report
