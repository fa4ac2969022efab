"""The console's job list: a page of jobs matching a filter, newest first, in bounded time at any size.

Most filters are served by an index and a page costs a few dozen index entries: status and queue (the
claim index), task (the task index). Some cannot be: a search in the payload or the error text, a
frequent task with a status it rarely has, a rare queue without a status. Such a page reads rows until
enough match, and at 1,000,000 jobs `task=task7&status=pending` took 2 s on MariaDB
(`python -m benchmarks.console`). So the exact query runs under a time limit the database enforces
(`BUDGET`); when it is cancelled, the page is searched again within a window of the `WINDOW` newest
ids below the cursor only: what matches there, and a cursor at the window's end, so that "older"
searches the next window. The page says so (`JobPage.searched_from`), and nothing is ever left out:
following the cursors visits every id. SQLite cancels nothing and always answers exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc

from ..models import Job
from ..schema import pending_jobs as J
from .base import Store
from .columns import JOB_COLUMNS, LIST_COLUMNS

BUDGET = 0.1
"""Seconds the exact query may take before the page is searched in a window instead."""
WINDOW = 20_000
"""Ids a windowed page searches (a scan of this many rows at most: tens of milliseconds)."""


@dataclasses.dataclass(frozen=True)
class JobPage:
    """A page of the job list and the cursor of the next one (None: no older job matches)."""

    jobs: list[Job]
    next: int | None
    searched_from: int | None = None
    """Set when the exact query ran over its budget: the page holds the matches among ids from this one
    up to the cursor only; older ones may match too (the next page searches them)."""


def page(store: Store, where: Sequence[sa.ColumnElement[bool]], before: int | None, limit: int,
         bodies: bool = True) -> JobPage:
    """Up to `limit` jobs matching `where` with ids below `before`, newest first; without their payload and
    result (None) unless `bodies`."""
    budget, window = BUDGET, WINDOW  # read at each call (tests lower them)
    below = [J.c.id < before] if before is not None else []
    columns = JOB_COLUMNS if bodies else LIST_COLUMNS
    stmt = sa.select(*columns).where(*where, *below).order_by(J.c.id.desc()).limit(limit + 1)

    def exact(conn: sa.Connection) -> list[Job]:
        with store.sql.time_limit(conn, budget):
            return [Job.from_row(row) for row in conn.execute(stmt).mappings()]

    try:
        found = store.read(exact)
    except exc.DBAPIError as error:
        if not store.sql.timed_out(error):
            raise
        return _windowed(store, columns, where, below, limit, window)
    return JobPage(found[:limit], found[limit - 1].id if len(found) > limit else None)


def _windowed(store: Store, columns: Sequence[sa.ColumnElement[Any]], where: Sequence[sa.ColumnElement[bool]],
              below: list[sa.ColumnElement[bool]], limit: int, window: int) -> JobPage:
    """The matches among the `window` newest ids below the cursor (by the primary key, whatever the filter)."""
    edge = sa.select(J.c.id).where(*below).order_by(J.c.id.desc()).offset(window - 1).limit(1)

    def work(conn: sa.Connection) -> tuple[int | None, list[Job]]:
        lowest = conn.execute(edge).scalar_one_or_none()  # None: the window reaches the oldest job
        inside = [J.c.id >= lowest] if lowest is not None else []
        stmt = sa.select(*columns).where(*where, *below, *inside).order_by(J.c.id.desc()).limit(limit + 1)
        return lowest, [Job.from_row(row) for row in conn.execute(stmt).mappings()]

    lowest, found = store.read(work)
    if len(found) > limit or lowest is None:  # the newest matches, as the exact query would have found
        return JobPage(found[:limit], found[limit - 1].id if len(found) > limit else None)
    return JobPage(found, lowest, searched_from=lowest)  # fewer than a page in this window: look further
